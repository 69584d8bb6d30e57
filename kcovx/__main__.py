"""``python -m kcovx``: the command line of ``kcovx.cli``."""

import sys

from kcovx.cli import main

if __name__ == "__main__":
    sys.exit(main())
