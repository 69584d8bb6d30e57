"""Cost of one ``kcovx.trace_pc(pc)`` call from a Python loop, against the builtin ``abs(i)``.

Owns: the per-event target of kcovx: a PC recorded from Python bytecode costs at most 1.5x a
call of ``abs`` in the same loop, both net of the empty loop ``for i in r: pass``.

Method.  Three loops with the same shape (``for i in r: f(i)`` with ``f`` a local variable,
``for i in r: g(i)`` with ``g = abs``, and ``for i in r: pass``) are compiled from the same
source text into separate code objects, so CPython's adaptive specialisation of one call site
never sees the other callable.  ``r`` is a prebuilt list of ints shared by all three loops, so
iteration costs are identical and cancel.  Each round runs the three loops once, in a rotating
order (baseline and candidate interleaved on a noisy machine); the net cost of a loop is its
time minus the empty loop's time in the same round.  Tables show medians over the rounds.

Scenarios: no device enabled; a linux-profile device enabled by this thread in TRACE_PC with
an area large enough (count reset before each run, so nothing clips) and with a full area
(every append clips); a gvisor-profile device enabled (each call inserts into the global
pending set; PCs ``i & 1023`` as a realistic bounded set of blocks), and, for information, the
same with 64K distinct blocks (``i & 65535``) and with every PC distinct (the set takes a new
entry per call, so the table outgrows the caches; flushed before each run).

Threading: single-threaded; the devices are enabled and disabled by the main thread.
Runs in well under 60 s.  Usage: ``python benchmarks/bench_trace_pc.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from _common import fresh_loop, gc_paused, rotated
from _report import Judge, Table, Target, median, spread, spread_cell, versions

import kcovx

QUICK = "--quick" in sys.argv
N = 50_000 if QUICK else 300_000  # calls per loop
ROUNDS = 7 if QUICK else 31  # rounds per scenario (each round: empty, abs, trace_pc)
GOAL = Target("<=1.5")  # net trace_pc / net abs


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def measure(r: list[int], before: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Per-round net ns/call of abs and trace_pc and the empty loop's ns/iteration.

    before() runs (untimed) before every trace_pc loop, e.g. to reset the area count.
    """
    loops = {
        "empty": (fresh_loop("pass"), None),
        "abs": (fresh_loop("f(i)"), abs),
        "trace_pc": (fresh_loop("f(i)"), kcovx.trace_pc),
    }
    clock = time.perf_counter_ns
    names = list(loops)
    for _ in range(2):  # warm up: specialise the call sites, grow the pending set, touch pages
        for name in names:
            if name == "trace_pc":
                before()
            run, f = loops[name]
            run(r, f, clock)
    out: dict[str, list[float]] = {"empty": [], "abs": [], "trace_pc": [], "ratio": []}
    n = len(r)
    for k in range(ROUNDS):
        t: dict[str, int] = {}
        for name in rotated(names, k):
            if name == "trace_pc":
                before()
            run, f = loops[name]
            t[name] = run(r, f, clock)
        out["empty"].append(t["empty"] / n)
        net_abs = (t["abs"] - t["empty"]) / n
        net_tp = (t["trace_pc"] - t["empty"]) / n
        out["abs"].append(net_abs)
        out["trace_pc"].append(net_tp)
        out["ratio"].append(net_tp / net_abs if net_abs > 0 else float("inf"))
    return out


Row = tuple[str, dict[str, list[float]], bool]  # (scenario, per-round results, judged)


def scenarios() -> list[Row]:
    """Measure every scenario; each device is enabled and disabled by this thread."""
    distinct = list(range(N))
    bounded = [i & 1023 for i in range(N)]
    wide = [i & 65535 for i in range(N)]
    size = _round_up(N + 1, 512)
    rows: list[Row] = []

    # 1. no device enabled: only the argument conversion and the two checks.
    rows.append(("no device enabled", measure(distinct), True))

    # 2. linux profile, area large enough: every call appends.
    with kcovx.open("linux") as dev:
        dev.init_trace(size)
        words = dev.mmap()
        dev.enable(kcovx.KCOV_TRACE_PC)

        def reset() -> None:
            words[0] = 0

        res = measure(distinct, reset)
        if int(words[0]) != N:
            raise AssertionError(f"linux: expected count {N}, got {int(words[0])}")
        rows.append((f"linux TRACE_PC, appends (area {size} words)", res, True))
        dev.disable()

    # 3. linux profile, area full: every call clips.
    with kcovx.open("linux") as dev:
        dev.init_trace(512)
        full = dev.mmap()
        dev.enable(kcovx.KCOV_TRACE_PC)

        def fill() -> None:
            full[0] = 511

        res = measure(distinct, fill)
        if int(full[0]) != 511:
            raise AssertionError("linux clipped: the count moved")
        rows.append(("linux TRACE_PC, area full (all clip)", res, True))
        dev.disable()

    # 4. gvisor profile: each call inserts into the pending set (1024 distinct PCs).
    with kcovx.open("gvisor") as dev:
        dev.init_trace(size)
        gwords = dev.mmap()
        dev.enable(kcovx.KCOV_TRACE_PC)
        rows.append(("gvisor TRACE_PC, PCs i & 1023", measure(bounded), True))

        # 5. gvisor, 64K distinct blocks (a 1.5 MiB table; informative).
        rows.append(("gvisor TRACE_PC, PCs i & 65535 (info)", measure(wide), False))

        # 6. gvisor, every PC new since the last flush (worst case; informative).
        def flush() -> None:
            gwords[0] = 0
            dev.flush()

        res = measure(distinct, flush)
        rows.append((f"gvisor TRACE_PC, all {N} PCs new (info)", res, False))
        dev.disable()
    return rows


def report(rows: list[Row]) -> int:
    """Print the table; the exit status (every judged row meets the target, or not)."""
    table = Table(
        "scenario<44 | empty>7.2f | abs>7.2f | trace_pc>9.2f | ratio>6.2f | p25-p75>11",
        judged=True,
    )
    print("ns per iteration (empty loop) and net ns per call; medians over rounds")
    table.print_head()
    judge = Judge()
    for name, res, judged in rows:
        m_abs, m_tp = median(res["abs"]), median(res["trace_pc"])
        ratio = m_tp / m_abs if m_abs > 0 else float("inf")
        table.print_row(
            name,
            median(res["empty"]),
            m_abs,
            m_tp,
            ratio,
            spread_cell(spread(res["ratio"]), 5, 2),
            GOAL,
            judge.verdict(ratio, GOAL, judged=judged),
        )
    print()
    print("ratio = median net trace_pc / median net abs; p25-p75: spread of per-round ratios")
    return judge.status()


def main() -> int:
    print(f"bench_trace_pc: kcovx.trace_pc(pc) vs abs(i), {N} calls/loop, {ROUNDS} rounds")
    print(versions())
    print()
    with gc_paused():
        rows = scenarios()
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
