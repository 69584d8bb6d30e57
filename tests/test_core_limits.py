"""Size limits of the compiled core: every size it computes in C is checked before it is used.

Owns: requests too large for the core (a Probe table of 2**61 PCs, an Area beyond the largest
mapping, probe indices outside a Py_ssize_t) must raise MemoryError, OverflowError, ValueError,
IndexError or the mmap errno, never wrap a byte count and write past an allocation.  Also what
``Probe(pcs)`` takes from objects that misbehave while it reads them: a ``__len__`` that lies,
a list that changes while its items are converted.

Invariants: anything that could crash the interpreter runs in a child interpreter
(``python -c``, bounded by TIMEOUT), so a crash fails the test instead of killing pytest; the
child prints one line naming the exception it got, and the test asserts on that line and on a
clean exit.  Single-threaded.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from _kcovx_support import TIMEOUT

from kcovx._area import Area, Probe

# A sequence that claims `n` items and gives 0 for every index: what the old code trusted.
CLAIMS_LEN = r"""
import sys
from kcovx._area import Probe

class Claims:
    def __init__(self, n):
        self.n = n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        if i >= self.n:
            raise IndexError(i)
        return 0

try:
    p = Probe(Claims(int(sys.argv[1])))
except (MemoryError, OverflowError) as exc:
    print("refused", type(exc).__name__)
else:
    print("built", len(p))
"""


def run_child(code: str, *args: str, flags: tuple[str, ...] = ()) -> str:
    """Run code in a child interpreter (with interpreter flags); its stdout, after checking
    that it exited cleanly."""
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert proc.returncode == 0, (
        f"child died: returncode {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout.strip()


# 2**61 and 2**62 wrap `n * 8` to 0, 2**61 + 1 wraps it to 8: malloc then gets a few bytes
# and the copy loop writes past them.  sys.maxsize is the largest length Python allows.
@pytest.mark.parametrize("n", [2**61, 2**61 + 1, 2**62, 2**63 - 1], ids=hex)
def test_probe_with_a_huge_length_is_refused_not_a_crash(n: int) -> None:
    assert run_child(CLAIMS_LEN, str(n)) in ("refused MemoryError", "refused OverflowError")


def test_probe_of_a_real_large_table_still_works() -> None:
    p = Probe(range(100_000))
    assert len(p) == 100_000
    assert p.pcs[-1] == 99_999


@pytest.mark.parametrize("index", [-1, -(2**63), 2**63 - 1, 2**63, 2**64, -(2**64)])
def test_probe_index_outside_the_table(index: int) -> None:
    p = Probe([1, 2, 3])
    with pytest.raises((IndexError, OverflowError)):
        p[index]


AREA_TOO_LARGE = r"""
import sys
from kcovx._area import Area
try:
    a = Area(int(sys.argv[1]))
except MemoryError as exc:
    print("refused MemoryError")
except (ValueError, OverflowError) as exc:
    print("refused", type(exc).__name__)
except OSError as exc:
    import errno
    print("refused OSError", errno.errorcode[exc.errno])
else:
    print("mapped", a.size, a.nbytes)
"""


@pytest.mark.parametrize(
    ("size", "outcomes"),
    [
        # the largest size the core accepts: far beyond any address space, mmap says ENOMEM
        (2**56, {"refused OSError ENOMEM", "refused MemoryError"}),
        (2**56 + 1, {"refused ValueError"}),
        (2**61, {"refused ValueError"}),  # 2**61 words would wrap the byte count to 0
        (2**61 + 1, {"refused ValueError"}),
        (2**64 - 1, {"refused ValueError"}),
        (2**64, {"refused OverflowError"}),
    ],
    ids=lambda v: hex(v) if isinstance(v, int) else "",
)
def test_area_too_large_is_refused_not_a_crash(size: int, outcomes: set[str]) -> None:
    assert run_child(AREA_TOO_LARGE, str(size)) in outcomes


# --------------------------------------------------------------------------------------------
# Probe(pcs) takes what iterating pcs gives, once: len() is only a hint.


class LenSaysTen:
    """len() says 10; iterating gives `real` PCs."""

    def __init__(self, real: int) -> None:
        self.real = real

    def __len__(self) -> int:
        return 10

    def __iter__(self) -> Iterator[int]:
        return iter(range(100, 100 + self.real))


class OldStyleShort:
    """len() says 10; __getitem__ (the old sequence protocol) stops with IndexError at 3."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> int:
        if i >= 3:
            raise IndexError(i)
        return 7 + i


@pytest.mark.parametrize("real", [0, 3, 10, 1000])
def test_probe_takes_what_iteration_gives_when_len_lies(real: int) -> None:
    p = Probe(LenSaysTen(real))
    assert len(p) == real
    assert p.pcs == list(range(100, 100 + real))


def test_probe_of_an_old_style_sequence_stops_at_index_error() -> None:
    p = Probe(OldStyleShort())
    assert p.pcs == [7, 8, 9]


class ClearsOnIndex:
    """An int whose conversion empties (or grows) the list it is an item of."""

    def __init__(self, value: int, victim: list[Any], grow: bool) -> None:
        self.value = value
        self.victim = victim
        self.grow = grow

    def __index__(self) -> int:
        if self.grow:
            self.victim.extend(range(1000))
        else:
            self.victim.clear()
        return self.value


@pytest.mark.parametrize("grow", [False, True], ids=["clears", "grows"])
def test_probe_of_a_list_mutated_while_converting(grow: bool) -> None:
    pcs: list[Any] = [1, 2]
    pcs.append(ClearsOnIndex(3, pcs, grow))
    pcs.extend([4, 5])
    p = Probe(pcs)
    assert p.pcs == [1, 2, 3, 4, 5]  # the items the list held when Probe was called


def test_probe_of_a_sequence_whose_iterator_mutates_it() -> None:
    class Shrinking(list[int]):
        def __iter__(self) -> Iterator[int]:
            while self:
                yield self.pop(0)

    p = Probe(Shrinking([5, 6, 7]))
    assert p.pcs == [5, 6, 7]


def test_probe_refuses_bad_items_and_keeps_nothing() -> None:
    for bad in ([1, -1], [1, 2**64], [1, 1.5], [1, "2"], [None]):
        with pytest.raises((OverflowError, TypeError)):
            Probe(bad)


def test_area_size_limit_is_the_headers() -> None:
    from kcovx import _area

    assert _area.MAX_WORDS == 2**56
    Area(1)
    with pytest.raises(ValueError, match=str(2**56)):
        Area(_area.MAX_WORDS + 1)


# A buffer exporter written in Python (PEP 688, 3.12+) runs code while trace_pcs gets the
# buffer: here it disables the calling thread's linux device and drops it, which unmaps the
# area.  trace_pcs must then record for the state after the export (nowhere), not into the
# area the thread was recording to when the call began (that was a write into freed memory).
# -X dev: the debug allocator poisons the freed Area, so a stale target faults at once.
EXPORTER_DROPS_TARGET = r"""
import array, gc
import kcovx

held = {}
dev = kcovx.open("linux")
dev.init_trace(1 << 16)
dev.enable()
held["dev"] = dev
del dev

class Exporter:
    def __buffer__(self, flags):
        held.pop("dev").disable()
        gc.collect()
        return memoryview(array.array("Q", range(1, 20001)))

kcovx.trace_pcs(Exporter())
print("recorded nowhere")
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python-level __buffer__ is PEP 688, 3.12+")
def test_trace_pcs_reads_the_target_after_getting_the_buffer() -> None:
    assert run_child(EXPORTER_DROPS_TARGET, flags=("-X", "dev")) == "recorded nowhere"
