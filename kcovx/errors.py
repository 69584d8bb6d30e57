"""Error helpers shared by every layer.

Owns: turning an errno into the OSError the kernel would give (``OSError(errno,
os.strerror(errno))``), and the checks that turn wrong Python types and values into TypeError,
OverflowError or ValueError with a message that says what was expected.  Stateless.
"""

from __future__ import annotations

import operator
import os
from typing import NoReturn

U64_MAX = (1 << 64) - 1


def kernel_error(err: int) -> OSError:
    """The OSError a failing system call with this errno raises."""
    return OSError(err, os.strerror(err))


def fail(err: int) -> NoReturn:
    raise kernel_error(err)


def as_u64(value: object, what: str) -> int:
    """value as an int in [0, 2**64): TypeError if not an integer, OverflowError if out of range."""
    if not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    n = operator.index(value)  # type: ignore[arg-type]
    if n < 0 or n > U64_MAX:
        raise OverflowError(f"{what} must be in [0, 2**64), got {n}")
    return n
