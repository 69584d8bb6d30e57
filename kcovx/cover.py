"""Cover files: a kcov area on disk, as ``kcovx run`` leaves it and any kcov consumer reads it.

Format: little-endian uint64 words.  Word 0 is the count n, words 1..n are the PCs.  A file
written by ``write_cover`` (or left by a ``kcovx run`` that exited) holds exactly ``1 + n``
words; the area file of a run whose process died (SIGKILL, ``os._exit``, a crash) is the whole
area, ``size`` words, of which the words after ``1 + n`` are not PCs.  Readers therefore take
the first ``n`` PCs after the count and ignore the rest, as a kcov consumer reads its mapping.

A cover file is untrusted input: ``read_cover`` opens it without blocking, only as a regular
file, reads at most the largest area a device makes, and raises ``CoverFileError`` (a
ValueError) when its length or count word does not describe an area.  Writing replaces only a
regular file (see ``kcovx._files``).  Stateless; safe from any thread.
"""

from __future__ import annotations

import array
import os
import sys
from collections.abc import Iterable

from kcovx._files import read_regular, replace_file
from kcovx.errors import CoverFileError
from kcovx.profiles import LINUX_MAX_WORDS

# The largest area any profile makes (linux's; gvisor's maximum is smaller), in words.
MAX_WORDS = LINUX_MAX_WORDS

__all__ = ["MAX_WORDS", "read_cover", "trim_area_file", "write_cover"]


def _words(data: bytes) -> array.array[int]:
    words = array.array("Q")
    words.frombytes(data)
    if sys.byteorder != "little":
        words.byteswap()
    return words


def read_cover(path: str | os.PathLike[str]) -> array.array[int]:
    """The PCs of the cover file at ``path``, in the order recorded (a uint64 array).

    OSError when the path cannot be opened or is not a regular file; CoverFileError when the
    file is not a kcov area (empty, not whole words, larger than any area, or a count word
    that promises more PCs than the file holds)."""
    name = os.fsdecode(os.fspath(path))
    try:
        data = read_regular(name, MAX_WORDS * 8)
    except ValueError as e:
        raise CoverFileError(f"{name}: not a kcov area: {e}") from None
    if not data or len(data) % 8:
        raise CoverFileError(
            f"{name}: not a kcov area: {len(data)} bytes is not a whole number of 8-byte words"
        )
    words = _words(data)
    count = words[0]
    if count > len(words) - 1:
        raise CoverFileError(
            f"{name}: not a kcov area: its count word says {count} PCs, "
            f"the file holds {len(words) - 1}"
        )
    return words[1 : 1 + count]


def write_cover(path: str | os.PathLike[str], pcs: Iterable[int]) -> int:
    """Write ``pcs`` as a cover file at ``path`` (atomically; see the module docstring).
    Returns the number of PCs written.  OverflowError for a PC outside [0, 2**64)."""
    words = array.array("Q", [0])
    words.extend(pcs)
    words[0] = len(words) - 1
    if sys.byteorder != "little":
        words.byteswap()
    replace_file(os.fsdecode(os.fspath(path)), words.tobytes())
    return len(words) - 1


def trim_area_file(path: str | os.PathLike[str], count: int) -> None:
    """Cut an area file down to its count word and ``count`` PCs, as ``write_cover`` leaves a
    file.  Only for a file no live mapping will touch again: a shrunk mapped file faults on
    access."""
    os.truncate(path, (1 + count) * 8)
