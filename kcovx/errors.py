"""Errors of kcovx, and the helpers that raise them.

Owns: the exception hierarchy and the argument checks shared by every layer.  Stateless.

- Device calls fail as the kernel's system calls do: ``OSError(errno, os.strerror(errno))``
  (``kernel_error``/``fail``), so ``except OSError as e: e.errno == errno.EBUSY`` works as it
  does against /dev/kcov.  They never raise a ``KcovxError``.
- Everything else kcovx itself decides to refuse is a ``KcovxError``.  Each specific error also
  subclasses the builtin a caller would have caught before it existed (as msgpack's and
  coverage.py's exceptions do): a missing source is still a ``ValueError``, an unknown PC still
  a ``LookupError``.
- Wrong argument types and ranges from Python stay plain ``TypeError``/``OverflowError``/
  ``ValueError`` with a message that says what was expected (``as_u64``).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from typing import NoReturn, TypeVar

_T = TypeVar("_T")

U64_MAX = (1 << 64) - 1


class KcovxError(Exception):
    """Base of every error kcovx raises on its own account (not device errno errors)."""


class NoSourceError(KcovxError, ValueError):
    """Code that kcovx cannot instrument because its Python source cannot be had."""


class InstrumentError(KcovxError, ValueError):
    """Code that kcovx refuses to instrument (kcovx itself, code it cannot match to source)."""


class UnknownPCError(KcovxError, LookupError):
    """A PC that no registered block has."""


class PCsTableError(KcovxError, ValueError):
    """A PC table file that is missing, unreadable or malformed."""


class CoverFileError(KcovxError, ValueError):
    """A cover file (an area on disk) that is unreadable or malformed."""


class CacheEntryError(KcovxError, ValueError):
    """A code-cache entry that failed verification; kcovx then instruments from source."""


class UnusableFileError(KcovxError):
    """A file a command reads back (a PC table, a cover file) that it cannot use: missing,
    unreadable or malformed.  The message is the one line to print (``read_input``)."""


def read_input(load: Callable[[str], _T], path: str, what: str, hint: str = "") -> _T:
    """``load(path)``, with any problem of the file (``OSError``; ``ValueError``, which
    ``PCsTableError`` and ``CoverFileError`` are, and whose message names the file) turned
    into an ``UnusableFileError`` saying which ``what`` at ``path``; ``hint`` follows the
    message of a missing file."""
    try:
        return load(path)
    except FileNotFoundError:
        raise UnusableFileError(f"no {what} {path!r}{hint}") from None
    except OSError as e:
        raise UnusableFileError(f"{what} {path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise UnusableFileError(str(e)) from None


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


__all__ = [
    "CacheEntryError",
    "CoverFileError",
    "InstrumentError",
    "KcovxError",
    "NoSourceError",
    "PCsTableError",
    "UnknownPCError",
    "as_u64",
    "fail",
    "kernel_error",
]
