"""Cost of the gvisor profile's task work (``Device.flush()``), by pending PCs and area size.

Owns: the task-work target of kcovx: moving the pending set into the area costs in proportion
to the PCs covered since the last flush, not to the area size, and at most 5 ns per PC written.

Method.  A gvisor-profile device is enabled by this thread, so its task work runs when the
owner's device calls return; ``flush()`` is such a call.  Before every timed flush (untimed):
one flush with nothing pending (so a previous large sample's cache misses do not land on a
small one), then ``kcovx.trace_pcs(pcs[:n])`` puts n distinct PCs in the global pending set
and ``words[0] = 0`` resets the count, so nothing clips in the large area.  Only the
``flush()`` call is timed, one call per sample.  Pending sizes n = 0, 256, 1K, 16K, 64K are
taken in a rotating order within a round; area sizes 512 words and 8M words (64 MiB, within
gVisor's 10M-word limit) are measured in alternating blocks (a gvisor area lives only while
enabled, so sizes cannot be interleaved finer without measuring fresh mappings).  Baseline,
in the same rounds: a numpy copy of n uint64 (``dst[1:n+1] = src[:n]``), i.e. memory speed
plus numpy's per-call cost.

Results: median flush time, ns per PC written (gross, and net of the n=0 flush), ratio to the
numpy copy.  Verdicts: (a) for n = 0 and 256 (no clipping in either area) the 8M-word flush
costs at most 1.5x the 512-word flush (an O(area size) step would cost 1000x); (b) for
n >= 16K on the 8M-word area, gross ns per PC written <= 5.  Rows where the 512-word area
clips (only 511 PCs written) are shown for information.

Threading: single-threaded.  Runs in well under 60 s.
Usage: ``python benchmarks/bench_task_work.py [--quick]``.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import numpy as np

import kcovx
from kcovx import _area

QUICK = "--quick" in sys.argv
PENDING = (0, 256, 1024, 16384, 65536)
SIZES = (512, 8 * 1024 * 1024)
PASSES = 2 if QUICK else 6  # alternating blocks per area size
ROUNDS = 10 if QUICK else 201  # rounds per block (every n once per round)
SIZE_TARGET = 1.5  # flush(8M words) / flush(512 words) for unclipped small n
NS_PER_PC_TARGET = 5.0

_PCS = (np.arange(max(PENDING), dtype=np.uint64) * np.uint64(0x9E37)) + np.uint64(0x400000)
_SRC = _PCS.copy()
_DST = np.zeros(max(PENDING) + 1, dtype=np.uint64)


def _copy_ns(n: int) -> int:
    clock = time.perf_counter_ns
    dst, src = _DST, _SRC
    t0 = clock()
    dst[1 : n + 1] = src[:n]
    return clock() - t0


def block(size: int, flush_ns: dict, copy_ns: dict, written: dict) -> None:
    """One block of rounds on a fresh enabled gvisor device of size words."""
    clock = time.perf_counter_ns
    trace_pcs = kcovx.trace_pcs
    with kcovx.open("gvisor") as dev:
        dev.init_trace(size)
        words = dev.mmap()
        dev.enable(kcovx.KCOV_TRACE_PC)
        flush = dev.flush

        def one(n: int) -> tuple[int, int]:
            flush()  # untimed, nothing pending: warms the call path after the last sample
            trace_pcs(_PCS[:n])
            if _area._pending_len() != n:
                raise AssertionError(f"pending {_area._pending_len()} != {n}")
            words[0] = 0
            t0 = clock()
            flush()
            dt = clock() - t0
            return dt, int(words[0])

        for n in PENDING:  # warm up: touch the area pages the large n write, grow the set
            one(n)
            one(n)
        for k in range(ROUNDS):
            order = PENDING[k % len(PENDING) :] + PENDING[: k % len(PENDING)]
            for n in order:
                if k % 2:
                    copy_ns[n].append(_copy_ns(n))
                    dt, w = one(n)
                else:
                    dt, w = one(n)
                    copy_ns[n].append(_copy_ns(n))
                flush_ns[(size, n)].append(dt)
                written[(size, n)] = w
        dev.disable()


def main() -> int:
    print(
        f"bench_task_work: gvisor flush() time by pending PCs n and area size, "
        f"{PASSES} passes x {ROUNDS} rounds per size"
    )
    print(
        f"Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"kcovx {kcovx.__version__} from {kcovx.__file__}"
    )
    print()
    flush_ns: dict[tuple[int, int], list[int]] = {(s, n): [] for s in SIZES for n in PENDING}
    copy_ns: dict[int, list[int]] = {n: [] for n in PENDING}
    written: dict[tuple[int, int], int] = {}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(PASSES):
            for size in SIZES:
                block(size, flush_ns, copy_ns, written)
    finally:
        if was_enabled:
            gc.enable()

    med = statistics.median
    head = (
        f"{'area words':>10} {'n pending':>9} {'written':>8} {'flush us':>9} {'ns/PC':>7} "
        f"{'net ns/PC':>9} {'copy us':>8} {'ratio':>6} {'target':>7} {'result':>6}"
    )
    print("flush = Device.flush() running the task work; copy = numpy dst[1:n+1] = src[:n]")
    print("ns/PC = flush / written; net ns/PC = (flush - flush at n=0) / written;")
    print("ratio = flush / copy (same n); medians over all rounds")
    print(head)
    print("-" * len(head))
    failed = False
    for size in SIZES:
        t0 = med(flush_ns[(size, 0)])
        for n in PENDING:
            t = med(flush_ns[(size, n)])
            c = med(copy_ns[n])
            w = written[(size, n)]
            per = f"{t / w:7.2f}" if w else f"{'-':>7}"
            net = f"{(t - t0) / w:9.2f}" if w else f"{'-':>9}"
            if size == max(SIZES) and n >= 16384:
                verdict = "PASS" if t / w <= NS_PER_PC_TARGET else "FAIL"
                target = f"<={NS_PER_PC_TARGET:g}"
            else:
                verdict, target = "info", ""
            failed |= verdict == "FAIL"
            print(
                f"{size:>10} {n:>9} {w:>8} {t / 1e3:9.2f} {per} {net} {c / 1e3:8.2f} "
                f"{t / c:6.2f} {target:>7} {verdict:>6}"
            )
    print()
    head2 = (
        f"{'n pending':>9} {'512 words us':>13} {'8M words us':>12} {'8M/512':>7} "
        f"{'target':>7} {'result':>6}"
    )
    print("area-size independence (n small enough that neither area clips)")
    print(head2)
    print("-" * len(head2))
    small, big = SIZES
    for n in PENDING:
        a, b = med(flush_ns[(small, n)]), med(flush_ns[(big, n)])
        if written[(small, n)] == written[(big, n)]:
            verdict = "PASS" if b / a <= SIZE_TARGET else "FAIL"
            target = f"<={SIZE_TARGET:g}"
        else:
            verdict, target = "info", ""
        failed |= verdict == "FAIL"
        print(f"{n:>9} {a / 1e3:13.2f} {b / 1e3:12.2f} {b / a:7.2f} {target:>7} {verdict:>6}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
