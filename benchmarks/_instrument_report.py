"""bench_instrument.py's tables: per workload the configurations' times, then one summary of
ratios against the targets, judged PASS/FAIL through _report.py.

Owns: what is derived from the workers' results (ratios of medians over rounds, the spread of
the per-round ratios, ns per recorded block, import ms per 1,000 lines), the targets of the
end-to-end benchmark (which depend on the Python version: 3.11 has looser ones) and the rows
of the summary.  Takes measurements as the driver collected them; measures nothing.
Single-threaded; prints to stdout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from _instrument_workloads import Workload
from _report import Judge, Table, Target, median, spread, spread_cell

OLD = sys.version_info < (3, 12)  # 3.11: looser per-input targets, ns per block only shown
GVISOR_GOAL = Target("<=1.8" if OLD else "<=1.5")  # per-input time / plain
LINUX_GOAL = Target("<=2.0" if OLD else "<=1.7")
GVISOR_VS_LINUX_GOAL = Target("<=1.0")  # issue 10: the gvisor set no slower than appending
NS_PER_BLOCK_GOAL = Target("<=12")  # judged on 3.12+
ATHERIS_GOAL = Target(">=2")  # kcovx execs/s / atheris execs/s
IMPORT_GOAL = Target("<3")  # warm-cache import / plain import
INFO = "info"  # a row that is shown, not judged


@dataclass
class ExecResult:
    """One configuration of one workload over the rounds."""

    us: list[float]  # per round: median us per exec
    info: dict[str, Any]  # what the last round's worker reported beside its times


@dataclass
class Row:
    measure: str
    workload: str
    value: float
    spread: tuple[float, float] | None  # p25-p75 of the per-round values
    target: Target | str  # a Target, or INFO
    reachable: bool = True  # False: no kcovx could meet the target here (judged "n/a")


def _spread(values: list[float]) -> tuple[float, float]:
    return spread(values, method="inclusive")


def _ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    return _spread([a / b for a, b in zip(num, den, strict=True)])


def calibration_rows(cal: dict[str, float]) -> list[Row]:
    return [
        Row("C builtin call abs(i) in a loop, ns", "-", cal["abs"], None, INFO),
        Row("probe with a real PC in a loop, ns", "-", cal["probe_pc"], None, INFO),
    ]


def report_workload(wl: Workload, res: dict[str, ExecResult], configs: list[str]) -> list[Row]:
    plain = res["plain"].us
    p = median(plain)
    lin = res["linux"].info
    outcomes = res["plain"].info["outcomes"]  # one per input
    failing = sum(o != "ok" for o in outcomes)
    print(f"== {wl.name}: {len(outcomes)} inputs ({failing} raise); {len(lin['modules'])} modules")
    print(
        f"   PCs per exec: linux {lin['pcs_per_exec']:.0f} (distinct "
        f"{lin['distinct_per_exec']:.0f}), gvisor {res['gvisor'].info['pcs_per_exec']:.0f}"
    )
    table = Table(
        "config<10 | us/exec>9.2f | execs/s>9.0f | x plain>8.2f | p25-p75>11", indent="   "
    )
    table.print_head(rule=False)
    ratio: dict[str, float] = {}
    for c in configs:
        m = median(res[c].us)
        ratio[c] = m / p
        table.print_row(c, m, 1e6 / m, m / p, spread_cell(_ratios(res[c].us, plain), 5, 2))
    print()
    n = wl.name
    pcs = lin["pcs_per_exec"]
    per_round = [(a - b) * 1e3 / pcs for a, b in zip(res["linux"].us, plain, strict=True)]
    rows = [
        Row(
            "gvisor per-input / plain",
            n,
            ratio["gvisor"],
            _ratios(res["gvisor"].us, plain),
            GVISOR_GOAL,
        ),
        Row(
            "linux per-input / plain",
            n,
            ratio["linux"],
            _ratios(res["linux"].us, plain),
            LINUX_GOAL,
        ),
        Row(
            "linux-unique per-input / plain",
            n,
            ratio["unique"],
            _ratios(res["unique"].us, plain),
            GVISOR_GOAL,  # issue 10: the gvisor set's bar
        ),
        Row(
            "gvisor per-input / linux per-input",
            n,
            median(res["gvisor"].us) / median(res["linux"].us),
            _ratios(res["gvisor"].us, res["linux"].us),
            GVISOR_VS_LINUX_GOAL,
        ),
        Row(
            "ns per recorded block (linux)",
            n,
            (median(res["linux"].us) - p) * 1e3 / pcs,
            _spread(per_round),
            INFO if OLD else NS_PER_BLOCK_GOAL,
        ),
        Row("no device / plain", n, ratio["nodev"], _ratios(res["nodev"].us, plain), INFO),
    ]
    if "cmp" in res:
        print(f"   comparison records per exec (cmp): {res['cmp'].info['records_per_exec']:.0f}")
        rows.append(
            Row("cmp per-input / plain", n, ratio["cmp"], _ratios(res["cmp"].us, plain), INFO)
        )
    if "atheris" in res and "cmp" in res:
        rows.append(
            Row(
                "cmp execs/s / atheris execs/s",
                n,
                median(res["atheris"].us) / median(res["cmp"].us),
                _ratios(res["atheris"].us, res["cmp"].us),
                ATHERIS_GOAL,
                reachable=ratio["atheris"] >= 2,
            )
        )
    if "atheris" in res:
        for prof in ("gvisor", "linux"):
            rows.append(
                Row(
                    f"{prof} execs/s / atheris execs/s",
                    n,
                    median(res["atheris"].us) / median(res[prof].us),
                    _ratios(res["atheris"].us, res[prof].us),
                    ATHERIS_GOAL,
                    # >= 2x atheris needs kcovx faster than plain when atheris costs < 2x.
                    reachable=ratio["atheris"] >= 2,
                )
            )
    for c, label in (("atheris", "atheris"), ("ctrace", "coverage.py ctrace"), ("afl", "afl")):
        if c in res:
            rows.append(Row(f"{label} / plain", n, ratio[c], _ratios(res[c].us, plain), INFO))
    return rows


def report_imports(wl: Workload, imp: dict[str, Any]) -> list[Row]:
    ms = imp["ms"]
    kloc = imp["lines"] / 1000
    print(
        f"   import of {len(imp['modules'])} module(s), {imp['lines']} lines; ms, median of "
        f"{len(ms['plain'])}: plain (.pyc) {median(ms['plain']):.2f}, compiled from source "
        f"{median(ms['source']):.2f}, kcovx warm cache {median(ms['warm']):.2f} (of which "
        f"creating the hook {median(imp['hook_ms']):.2f}), kcovx no cache "
        f"{median(ms['cold']):.2f}; loading kcovx's instrumentation first, once per process "
        f"and not counted: {median(imp['load_ms']):.2f}"
    )
    print()
    n = wl.name
    return [
        Row(
            "import, warm kcovx cache / plain",
            n,
            median(ms["warm"]) / median(ms["plain"]),
            _ratios(ms["warm"], ms["plain"]),
            IMPORT_GOAL,
        ),
        Row(
            "  the same without creating the hook",
            n,
            median([w - h for w, h in zip(ms["warm"], imp["hook_ms"], strict=True)])
            / median(ms["plain"]),
            None,
            INFO,
        ),
        Row("import, no kcovx cache, ms/kLOC", n, median(ms["cold"]) / kloc, None, INFO),
        Row("import from source (no .pyc), ms/kLOC", n, median(ms["source"]) / kloc, None, INFO),
    ]


def summary(rows: list[Row]) -> int:
    """Print the summary table; the exit status its verdicts give."""
    table = Table("measure<38 | workload<8 | value>8.2f | p25-p75>13", judged=True)
    print("summary: ratios of medians over rounds; p25-p75: spread of the per-round ratios")
    table.print_head()
    judge = Judge()
    for r in rows:
        if isinstance(r.target, Target):
            verdict = judge.verdict(r.value, r.target, reachable=r.reachable)
        else:
            verdict = INFO
        qs = spread_cell(r.spread, 6, 2) if r.spread else ""
        table.print_row(r.measure, r.workload, r.value, qs, r.target, verdict)
    if any(not r.reachable for r in rows):
        print(
            "n/a: atheris itself costs < 2x plain on that workload, so 2x its execs/s would "
            "need kcovx to run faster than the uninstrumented target"
        )
    return judge.status()
