"""Throughput of the bulk appends, against a numpy slice assignment of the same PCs.

Owns: the bulk target of kcovx: appending 64K PCs (a numpy uint64 array of 65536) runs at
>= 0.8x the throughput of ``dst[1:65537] = src`` into a same-size preallocated area view.

Method.  Baseline: ``dst[1:m+1] = src`` where ``dst`` is a numpy view of a separate
``kcovx.Area(size)`` (same kind of memory: MAP_SHARED anonymous pages, touched before timing).
Candidates, each including the reset of word 0 that a per-input loop does:
``words[0] = 0; area.append_pcs(src)`` on an ``Area(size)``, and ``words[0] = 0;
kcovx.trace_pcs(src)`` with a linux-profile device of size words enabled by this thread in
TRACE_PC.  One sample runs an operation ``reps`` times (a few ms); each round takes one sample of
every method in a rotating order, so baseline and candidates are interleaved.  Tables show the
median time per operation over the rounds, GB/s of PCs (8 bytes each) and the throughput ratio
candidate/baseline (median baseline time / median candidate time).  Sizes other than 65536 are
shown for information (fixed per-call cost).

Threading: single-threaded.  Runs in well under 60 s.
size is m + 1 rounded up to whole pages (512 words) for all three.
Usage: ``python benchmarks/bench_bulk.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from _common import gc_paused, rotated
from _report import Judge, Table, Target, median, versions

import kcovx

QUICK = "--quick" in sys.argv
ROUNDS = 7 if QUICK else 41
TARGET_M = 65536
GOAL = Target(">=0.8")  # candidate throughput / baseline throughput
SIZES = (64, 4096, 65536, 1 << 20)
SAMPLE_NS = 1_000_000 if QUICK else 4_000_000  # aim for this much time per sample


def _reps_for(op: Callable[[], None]) -> int:
    """Repetitions per sample so that one sample takes about SAMPLE_NS."""
    clock = time.perf_counter_ns
    reps = 1
    while True:
        t0 = clock()
        for _ in range(reps):
            op()
        dt = clock() - t0
        if dt >= SAMPLE_NS // 4 or reps >= 1 << 20:
            return max(1, int(reps * SAMPLE_NS / max(dt, 1)))
        reps *= 4


def _sample(op: Callable[[], None], reps: int) -> float:
    """ns per operation over reps back-to-back calls."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(reps):
        op()
    return (clock() - t0) / reps


def bench_size(m: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(m)
    src = rng.integers(1 << 20, 1 << 47, size=m, dtype=np.uint64)  # PC-like values

    # Every area has the same size: m + 1 words rounded up to whole pages (512 words), which
    # the linux device's mmap needs.
    size = (m + 1 + 511) // 512 * 512
    base_area = kcovx.Area(size)
    dst = np.frombuffer(base_area, dtype=np.uint64)
    hi = m + 1

    area = kcovx.Area(size)
    words = np.frombuffer(area, dtype=np.uint64)
    append_pcs = area.append_pcs

    dev = kcovx.open("linux")
    dev.init_trace(size)
    dwords = dev.mmap()
    dev.enable(kcovx.KCOV_TRACE_PC)
    trace_pcs = kcovx.trace_pcs

    def baseline() -> None:
        dst[1:hi] = src

    def area_append() -> None:
        words[0] = 0
        append_pcs(src)

    def dev_trace() -> None:
        dwords[0] = 0
        trace_pcs(src)

    ops = {
        "numpy dst[1:m+1] = src": baseline,
        "Area.append_pcs": area_append,
        "trace_pcs (linux dev)": dev_trace,
    }
    try:
        for op in ops.values():  # touch every page, check the results once
            op()
        if not (
            np.array_equal(dst[1:hi], src)
            and int(words[0]) == m
            and np.array_equal(words[1:hi], src)
            and int(dwords[0]) == m
            and np.array_equal(dwords[1:hi], src)
        ):
            raise AssertionError(f"m={m}: the appends did not store the PCs")
        reps = {name: _reps_for(op) for name, op in ops.items()}
        names = list(ops)
        out: dict[str, list[float]] = {name: [] for name in names}
        for k in range(ROUNDS):
            for name in rotated(names, k):
                out[name].append(_sample(ops[name], reps[name]))
        return out
    finally:
        dev.disable()
        dev.close()


def main() -> int:
    print(f"bench_bulk: bulk append of m uint64 PCs vs numpy slice assignment, {ROUNDS} rounds")
    print(versions())
    print()
    table = Table("m>8 | method<24 | us/op>9.2f | ns/PC>7.3f | GB/s>7.2f | ratio>6.2f", judged=True)
    print("median over rounds; ratio = candidate throughput / baseline throughput (same m)")
    table.print_head()
    judge = Judge()
    with gc_paused():
        for m in SIZES:
            res = bench_size(m)
            names = list(res)
            t_base = median(res[names[0]])
            for name in names:
                t = median(res[name])
                ratio = t_base / t
                if name == names[0]:
                    verdict, target = "base", ""
                else:
                    verdict = judge.verdict(ratio, GOAL, judged=m == TARGET_M)
                    target = str(GOAL) if m == TARGET_M else ""
                table.print_row(m, name, t / 1e3, t / m, m * 8 / t, ratio, target, verdict)
    print()
    print("candidates include the reset words[0] = 0 (a numpy scalar store) in every operation")
    return judge.status()


if __name__ == "__main__":
    sys.exit(main())
