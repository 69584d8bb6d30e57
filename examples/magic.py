"""A fuzz target guarded by magic values: a 4-byte integer and an 8-byte string.

The target of ``fuzz_loop.py --cmp``'s demonstration and of tests/test_examples_cmp.py: random
mutation has to guess 2**32 values for the first guard and 2**64 for the second, each block
of the ``and`` adding coverage only once its guard passes, so coverage alone does not lead
there; the operands of the comparisons (``--cmp``) name the missing bytes.  Reaching the end
raises ``Found`` (the fuzz loop's "crash"), with the input.

    python examples/fuzz_loop.py --target magic:fuzz_one --profile linux --cmp --execs 20000
"""

from __future__ import annotations

MAGIC_INT = 0x4B434F56  # b"VOCK" little-endian
MAGIC_STR = b"KCOVFUZZ"


class Found(Exception):
    """The input passed both guards."""


def fuzz_one(data: bytes) -> None:
    if (
        len(data) >= 12
        and int.from_bytes(data[:4], "little") == MAGIC_INT
        and data[4:12] == MAGIC_STR
    ):
        raise Found(data)
