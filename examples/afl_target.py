"""An AFL++ target for ``kcovx afl``: reads its input from stdin and raises ``RuntimeError``
behind a few byte comparisons, one branch per byte, so coverage guides afl-fuzz to it.

    afl-fuzz -i seeds -o out -- kcovx afl examples/afl_target.py

Single-threaded; no state kept between inputs (it runs once per process, or once per input
under ``kcovx afl --persistent N``).
"""

import sys


def check(data: bytes) -> str:
    if len(data) < 4:
        return "short"
    if data[0] != ord("k"):
        return "k?"
    if data[1] != ord("c"):
        return "kc?"
    if data[2] != ord("o"):
        return "kco?"
    if data[3] != ord("v"):
        return "kcov?"
    raise RuntimeError(f"found the crash: {data[:8]!r}")


def main() -> None:
    check(sys.stdin.buffer.read())


if __name__ == "__main__":
    main()
