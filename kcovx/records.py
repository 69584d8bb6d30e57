"""Reading KCOV_TRACE_CMP areas: the records, and the comparisons they encode.

``records(words)`` gives the raw ``{type, arg1, arg2, pc}`` records of an area (word 0 the
count, as the kernel and kcovx write it), clipped to what the area holds.  ``comparisons``
decodes them as comparisons: one per int record, and one per str/bytes comparison of
instrumented Python code, whose header and chunk records (README.md, "Comparison records")
are put back together into the compared prefixes.  A header is a size-8 record with both
operands at most STR_MAX and a Python PC (bit 63 clear): Python int records never look like
that (8 bytes are only used for an operand outside [-2**31, 2**32)), native records
(``kcovx.sancov``, bit 63 set) are never taken for one; records given to ``kcovx.trace_cmp``
with a PC of bit 63 clear should not look like one either.

The area is untrusted input: a count beyond the area is clipped, a header whose chunks are
missing (the area filled up) is dropped, and a record that is no valid kcov type is skipped.
Threading: pure functions; read an area only while nobody appends to it (after disable, or
from the thread that owns it).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from kcovx import _area

__all__ = ["STR_MAX", "Comparison", "Words", "comparisons", "records"]

STR_MAX: int = _area.CMP_STR_MAX  # bytes of a str/bytes operand recorded at most
_WORDS = _area.WORDS_PER_CMP
_CONST = _area.CMP_CONST
_SHIFT = _area.CMP_SIZE_SHIFT
_MASK = _area.CMP_MASK
_TYPE_MAX = _area.CMP_TYPE_MAX


class Words(Protocol):
    """An area's words: a numpy view, a memoryview of uint64, a list of ints."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: Any, /) -> Any: ...


class Comparison(NamedTuple):
    """One comparison: its PC, whether ``arg1`` is a literal of the source (KCOV_CMP_CONST),
    the operands, and ``size``: the width in bytes of an int comparison (operands are modulo
    2**(8*size), as kcov stores them), 0 for str/bytes (operands are the compared prefixes as
    bytes, UTF-8 for str, at most STR_MAX each)."""

    pc: int
    const: bool
    arg1: int | bytes
    arg2: int | bytes
    size: int


def records(words: Words) -> list[tuple[int, int, int, int]]:
    """The records ``(type, arg1, arg2, pc)`` of a KCOV_TRACE_CMP area (``words``: the whole
    area, word 0 the count; a numpy view, a memoryview of uint64 or a list of ints)."""
    if len(words) == 0:
        return []
    count = int(words[0])
    fit = (len(words) - 1) // _WORDS
    n = min(count, fit)
    flat = [int(w) for w in words[1 : 1 + n * _WORDS]]
    return [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), _WORDS)]


def _size(type_: int) -> int:
    return 1 << ((type_ & _MASK) >> _SHIFT)


def comparisons(words: Words) -> list[Comparison]:
    """The comparisons the records of a KCOV_TRACE_CMP area encode, in order (see the module
    docstring)."""
    recs = records(words)
    out: list[Comparison] = []
    i = 0
    while i < len(recs):
        t, a1, a2, pc = recs[i]
        i += 1
        if t > _TYPE_MAX:
            continue
        size, const = _size(t), bool(t & _CONST)
        if size == 8 and a1 <= STR_MAX and a2 <= STR_MAX and not pc >> 63:  # a str header
            longest = max(a1, a2)
            need = (longest + 7) // 8
            group = recs[i : i + need]
            i += need
            if len(group) < need or any(r[3] != pc or r[0] > _TYPE_MAX for r in group):
                continue  # clipped or not ours: no comparison to give
            left, right = bytearray(), bytearray()
            for gt, g1, g2, _ in group:
                w = _size(gt)
                left += g1.to_bytes(8, "little")[:w]
                right += g2.to_bytes(8, "little")[:w]
            out.append(Comparison(pc, const, bytes(left[:a1]), bytes(right[:a2]), 0))
            continue
        out.append(Comparison(pc, const, a1, a2, size))
    return out
