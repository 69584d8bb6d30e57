"""Cost of KCOV_RESET_TRACE plus reading the trace, in KCOV_UNIQUE_ENABLE's unique mode.

Owns: issue 10's report that the per-input overhead of unique mode outside the target is
O(covered blocks + bitmap words): ``reset_trace()`` zeroes the bitmap and the count (a memset
of the bitmap, so O(bitmap words)); reading the trace copies the PCs of the blocks covered
(O(covered)).  Printed in ns per covered block and ns per bitmap word; no figure is a target
(the issue asks for the report), but the fitted shape is checked: the time for a given number
of blocks grows with the bitmap by at most a memset's cost, and for a given bitmap by at most
a copy's cost per block.

Method.  (Each sample first makes one untimed ``reset_trace()``, so a previous large sample's
cache misses do not land on a small one.)  A linux-profile device is put in unique mode by
this thread with a bitmap of B words (B = the fewest words covering the probes' indices,
then 4096 and 65536 more); a Probe of K blocks (K = 0, 256, 4096, 65536) whose indices all
lie in the bitmap.  Per sample:
``reset_trace()`` (timed), every block hit once (untimed: the "input"), then
``area[B+1 : B+1+n].copy()`` after reading the count (timed).  The timed total
is the per-input overhead.  K values rotate within a round; B values are measured in blocks
of rounds on a fresh device each; medians over rounds.

Threading: single-threaded.  Usage: ``python benchmarks/bench_unique.py [--quick]``.
"""

from __future__ import annotations

import sys
import time

from _common import gc_paused, rotated
from _report import Table, median, versions

import kcovx
from kcovx import _area

QUICK = "--quick" in sys.argv
BLOCKS = (0, 256, 4096, 65536)
ROUNDS = 15 if QUICK else 101
# One probe per block count, made first: every bitmap below covers all their indices.
PROBES = {k: _area.Probe(range(1, k + 1)) for k in BLOCKS}
MIN_WORDS = max(p.base + len(p) for p in PROBES.values()) // 64 + 1
BITMAPS = (MIN_WORDS, MIN_WORDS + 4096, MIN_WORDS + 65536)


def measure(bw: int, samples: dict[tuple[int, int], list[int]]) -> None:
    clock = time.perf_counter_ns
    probes = PROBES
    size = 512 * ((bw + max(BLOCKS) + 2) // 512 + 1)
    with kcovx.open("linux") as dev:
        dev.init_trace(size)
        area = dev.mmap()
        dev.unique_enable(bw)

        def one(k: int) -> int:
            p = probes[k]
            dev.reset_trace()  # untimed: warms the call path after the last sample
            t0 = clock()
            dev.reset_trace()
            t1 = clock()
            for i in range(k):
                p[i]
            t2 = clock()
            n = int(area[bw])
            got = area[bw + 1 : bw + 1 + n].copy()
            t3 = clock()
            if len(got) != k:
                raise AssertionError(f"{len(got)} PCs for {k} blocks")
            return (t1 - t0) + (t3 - t2)

        for k in BLOCKS:  # warm up
            one(k)
        for r in range(ROUNDS):
            for k in rotated(BLOCKS, r):
                samples[(bw, k)].append(one(k))
        dev.disable()


def main() -> int:
    print(f"bench_unique: reset_trace() + reading the trace, {ROUNDS} rounds")
    print(versions())
    print()
    samples: dict[tuple[int, int], list[int]] = {(b, k): [] for b in BITMAPS for k in BLOCKS}
    with gc_paused():
        for bw in BITMAPS:
            measure(bw, samples)
    table = Table("bitmap words>12 | blocks>7 | us>9.2f | ns/block>9.2f | ns/bitmap word>15.3f")
    print("us = median reset_trace() + trace read time per input; ns/block = (us - us at 0")
    print("blocks) / blocks; ns/bitmap word = us at 0 blocks / bitmap words")
    table.print_head()
    for bw in BITMAPS:
        t0 = median(samples[(bw, 0)])
        for k in BLOCKS:
            t = median(samples[(bw, k)])
            table.print_row(bw, k, t / 1e3, (t - t0) / k if k else None, t0 / bw)
    print()
    small, big = BITMAPS[0], BITMAPS[-1]
    grow = median(samples[(big, 0)]) - median(samples[(small, 0)])
    print(
        f"bitmap {small} -> {big} words adds {grow / 1e3:.2f} us at 0 blocks "
        f"({grow / (big - small):.3f} ns per added word: a memset)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
