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

import sys
import time

import numpy as np
from _common import gc_paused, rotated
from _report import Judge, Table, Target, median, versions

import kcovx

QUICK = "--quick" in sys.argv
PENDING = (0, 256, 1024, 16384, 65536)
SIZES = (512, 8 * 1024 * 1024)
PASSES = 2 if QUICK else 6  # alternating blocks per area size
ROUNDS = 10 if QUICK else 201  # rounds per block (every n once per round)
SIZE_TARGET = Target("<=1.5")  # flush(8M words) / flush(512 words) for unclipped small n
NS_PER_PC_TARGET = Target("<=5")  # gross ns per PC written, n >= 16K on the 8M-word area

_PCS = (np.arange(max(PENDING), dtype=np.uint64) * np.uint64(0x9E37)) + np.uint64(0x400000)
_SRC = _PCS.copy()
_DST = np.zeros(max(PENDING) + 1, dtype=np.uint64)


def _copy_ns(n: int) -> int:
    clock = time.perf_counter_ns
    dst, src = _DST, _SRC
    t0 = clock()
    dst[1 : n + 1] = src[:n]
    return clock() - t0


def block(
    size: int,
    flush_ns: dict[tuple[int, int], list[int]],
    copy_ns: dict[int, list[int]],
    written: dict[tuple[int, int], int],
) -> None:
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
            words[0] = 0
            t0 = clock()
            flush()
            dt = clock() - t0
            # n distinct PCs were pending: the flush wrote them all, or filled the area.
            if int(words[0]) != min(n, size - 1):
                raise AssertionError(f"flushed {int(words[0])} PCs, expected {min(n, size - 1)}")
            return dt, int(words[0])

        for n in PENDING:  # warm up: touch the area pages the large n write, grow the set
            one(n)
            one(n)
        for k in range(ROUNDS):
            for n in rotated(PENDING, k):
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
    print(versions())
    print()
    flush_ns: dict[tuple[int, int], list[int]] = {(s, n): [] for s in SIZES for n in PENDING}
    copy_ns: dict[int, list[int]] = {n: [] for n in PENDING}
    written: dict[tuple[int, int], int] = {}
    with gc_paused():
        for _ in range(PASSES):
            for size in SIZES:
                block(size, flush_ns, copy_ns, written)

    table = Table(
        "area words>10 | n pending>9 | written>8 | flush us>9.2f | ns/PC>7.2f | net ns/PC>9.2f"
        " | copy us>8.2f | ratio>6.2f",
        judged=True,
    )
    print("flush = Device.flush() running the task work; copy = numpy dst[1:n+1] = src[:n]")
    print("ns/PC = flush / written; net ns/PC = (flush - flush at n=0) / written;")
    print("ratio = flush / copy (same n); medians over all rounds")
    table.print_head()
    judge = Judge()
    for size in SIZES:
        t0 = median(flush_ns[(size, 0)])
        for n in PENDING:
            t = median(flush_ns[(size, n)])
            c = median(copy_ns[n])
            w = written[(size, n)]
            judged = size == max(SIZES) and n >= 16384
            table.print_row(
                size,
                n,
                w,
                t / 1e3,
                t / w if w else None,
                (t - t0) / w if w else None,
                c / 1e3,
                t / c,
                NS_PER_PC_TARGET if judged else "",
                judge.verdict(t / w if w else 0.0, NS_PER_PC_TARGET, judged=judged),
            )
    print()
    sizes = Table("n pending>9 | 512 words us>13.2f | 8M words us>12.2f | 8M/512>7.2f", judged=True)
    print("area-size independence (n small enough that neither area clips)")
    sizes.print_head()
    small, big = SIZES
    for n in PENDING:
        a, b = median(flush_ns[(small, n)]), median(flush_ns[(big, n)])
        judged = written[(small, n)] == written[(big, n)]
        sizes.print_row(
            n,
            a / 1e3,
            b / 1e3,
            b / a,
            SIZE_TARGET if judged else "",
            judge.verdict(b / a, SIZE_TARGET, judged=judged),
        )
    return judge.status()


if __name__ == "__main__":
    sys.exit(main())
