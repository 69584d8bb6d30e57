"""Instrumented code we did not write, in a fuzz loop: kcovx against plain code and its peers.

Owns: the end-to-end targets of kcovx's instrumentation on pure-Python stdlib parsers
(``tomllib.loads`` over fixed TOML documents, the main workload; ``email`` parsing of fixed
messages with every header and part read; ``shlex.split`` over fixed command lines; the inputs
are files under benchmarks/data/), each
instrumented at import with ``kcovx.instrument_imports(include=[package])`` and run per input
with the protocol of ``examples/fuzz_loop.py`` (``Fuzzer.run_one``: reset word 0, run the
input, flush, read the PCs view).  Baseline, in the same run: the uninstrumented target on
the same inputs through the same harness (decode, call, catch).  Targets, judged on every
workload:

* per-input coverage, gvisor profile <= 1.5x plain (3.12, 3.13), <= 1.8x (3.11); linux
  profile <= 1.7x (3.12, 3.13), <= 2.0x (3.11);
* ns per recorded block, (t_linux - t_plain) / PCs the linux profile records per exec,
  <= 12 ns on 3.12/3.13 (info on 3.11); printed beside it, from the same run: a C builtin
  call ``abs(i)`` and the probe itself in a loop, net of the empty loop;
* kcovx execs/s >= 2x atheris's (``atheris.instrument_imports``, its defaults: control flow
  and comparisons; inputs run in a plain loop, no libFuzzer), both profiles, and with
  ``cmp=True`` (``cmp``: comparisons recorded into a linux area in KCOV_TRACE_CMP mode, the
  records read per input as a view); "n/a" where
  atheris itself costs < 2x plain (only a kcovx faster than plain code could meet it);
* an import under ``kcovx.instrument_imports`` (creating the hook included) from a warm kcovx
  cache < 3x the plain import of the same modules (normal ``.pyc``); kcovx's own
  instrumentation modules are loaded first, once per process, and their load time printed
  apart (as ``import kcovx`` is not counted either).

For information: instrumented code with no device enabled vs plain; coverage.py's C tracer
(``COVERAGE_CORE=ctrace``, line coverage, ``source_pkgs=[package]``, started before the
import) and python-afl's ``settrace`` hook (a private SysV shm map in ``__AFL_SHM_ID``,
``afl.init()`` without a fork server) on the same loop; the import with no kcovx cache (an
empty ``KCOVX_CACHE_DIR``) in ms per 1,000 source lines, and the plain import compiled from
source (no ``.pyc``).

Method.  A module is instrumented when it is imported, so every configuration runs in a fresh
interpreter (``_instrument_worker.py``); the configurations of a workload are launched one
after another in a rotating order, round after round (the machine's 2 cores are shared and
noisy).  Each worker imports the target, builds its harness, warms up (>= 0.15 s), freezes
the GC'd heap, then times REPS repetitions of whole passes over the inputs (~70 ms each) and
reports the median time per exec; the tables show medians over the rounds and the spread
(p25-p75) of the per-round ratios.  Each worker also records each input's outcome (result or
exception type), which must be the same in every configuration, and checks that its coverage
is live.  Import workers pre-import the target's dependencies outside the instrumented
package (found by a probe run), so only the package's own modules are timed.

Layout: this script is the driver (launches the workers, collects their results, checks that
every configuration saw the same outcomes); _instrument_workloads.py says what is run (targets,
inputs under benchmarks/data/), _instrument_worker.py what runs in each fresh interpreter,
_instrument_report.py the tables and the targets.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import cpu_model, rotated
from _instrument_report import (
    ExecResult,
    Row,
    calibration_rows,
    report_imports,
    report_workload,
    summary,
)
from _instrument_worker import REPS
from _instrument_workloads import WORKLOADS, Workload
from _report import EXIT_BROKEN, versions

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_instrument_worker.py")

QUICK = "--quick" in sys.argv
ROUNDS = 2 if QUICK else 7  # fresh processes per configuration and workload
IMPORT_ROUNDS = 3 if QUICK else 11
WORKER_TIMEOUT_S = 60

EXEC_CONFIGS = ("plain", "nodev", "gvisor", "linux", "unique", "cmp", "atheris", "ctrace", "afl")
IMPORT_MODES = ("plain", "source", "warm", "cold")
PEER_MODULE = {"atheris": "atheris", "ctrace": "coverage", "afl": "afl"}


class WorkerError(RuntimeError):
    pass


def spawn(args: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    for k in ("COVERAGE_PROCESS_START", "COVERAGE_CORE", "__AFL_SHM_ID", "PYTHON_AFL_SIGNAL"):
        env.pop(k, None)
    env.update(env_extra or {})
    quick = ["--quick"] if QUICK else []
    proc = subprocess.run(
        [sys.executable, WORKER, *quick, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise WorkerError(f"worker {' '.join(args)} failed (exit {proc.returncode}): {tail}")


def available(module: str) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, check=False
    )
    return probe.returncode == 0


def measure_workload(
    wl: Workload, configs: list[str], env: dict[str, str]
) -> dict[str, ExecResult]:
    res: dict[str, ExecResult] = {c: ExecResult([], {}) for c in configs}
    for k in range(ROUNDS):
        for c in rotated(configs, k):
            extra = dict(env)
            if c == "ctrace":
                extra["COVERAGE_CORE"] = "ctrace"
            out = spawn(["exec", wl.name, c], extra)
            res[c].us.append(statistics.median(out.pop("times")) * 1e6)
            res[c].info = out
    base = res["plain"].info["outcomes"]
    for c in configs:
        if res[c].info["outcomes"] != base:
            raise WorkerError(
                f"{wl.name}/{c}: outcomes differ from plain: {res[c].info['outcomes']} vs {base}"
            )
    return res


def measure_imports(wl: Workload, root: str) -> dict[str, Any]:
    deps = spawn(["deps", wl.name], {"KCOVX_CACHE_DIR": os.path.join(root, "deps-cache")})["deps"]
    dep_arg = ",".join(deps)
    warm = os.path.join(root, f"warm-{wl.name}")
    spawn(["import", wl.name, "cold", dep_arg], {"KCOVX_CACHE_DIR": warm})  # fill the cache
    secs: dict[str, list[float]] = {m: [] for m in IMPORT_MODES}
    hook: list[float] = []
    load: list[float] = []
    info: dict[str, Any] = {}
    for k in range(IMPORT_ROUNDS):
        for m in rotated(IMPORT_MODES, k):
            tmp = tempfile.mkdtemp(dir=root)
            env = {"KCOVX_CACHE_DIR": warm if m == "warm" else tmp, "BENCH_PYCACHE_PREFIX": tmp}
            out = spawn(["import", wl.name, m, dep_arg], env)
            secs[m].append(out["seconds"] * 1e3)
            if m == "warm":
                hook.append(out["hook"] * 1e3)
                load.append(out["load"] * 1e3)
            info = out
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "ms": secs,
        "hook_ms": hook,
        "load_ms": load,
        "lines": info["lines"],
        "modules": info["modules"],
    }


def main() -> int:
    from importlib.metadata import PackageNotFoundError, version

    versions_of: dict[str, str | None] = {}
    for mod, dist in (("atheris", "atheris"), ("coverage", "coverage"), ("afl", "python-afl")):
        try:
            versions_of[mod] = version(dist) if available(mod) else None
        except PackageNotFoundError:
            versions_of[mod] = None
    configs = [c for c in EXEC_CONFIGS if c not in PEER_MODULE or versions_of[PEER_MODULE[c]]]
    print(
        f"bench_instrument: instrumented stdlib parsers in a fuzz loop; {ROUNDS} rounds x "
        f"{REPS} reps per configuration, a fresh process each"
    )
    print(
        versions(numpy=False)
        + "; "
        + ", ".join(f"{k} {v or 'not installed (skipped)'}" for k, v in versions_of.items())
    )
    print(f"cpu {cpu_model()}, {os.cpu_count()} logical CPUs")
    print()
    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="kcovx-bench-instrument-")
    rows: list[Row] = []
    try:
        env = {"KCOVX_CACHE_DIR": os.path.join(root, "exec-cache")}  # never the user's cache
        calib = [spawn(["calib"], env) for _ in range(3 if QUICK else 5)]
        cal = {k: statistics.median(c[k] for c in calib) for k in ("empty", "abs", "probe_i")}
        cal["probe_pc"] = statistics.median(c["probe_pc"] for c in calib)
        print(
            f"in a loop, net of the empty loop ({cal['empty']:.2f} ns/iter): a C builtin call "
            f"abs(i) {cal['abs']:.2f} ns; the probe, {calib[0]['how']}, linux device: "
            f"{cal['probe_i']:.2f} ns with pc = i, {cal['probe_pc']:.2f} ns with a real PC"
        )
        print()
        rows.extend(calibration_rows(cal))
        for wl in WORKLOADS.values():
            res = measure_workload(wl, configs, env)
            rows.extend(report_workload(wl, res, configs))
            rows.extend(report_imports(wl, measure_imports(wl, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    status = summary(rows)
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WorkerError as e:  # a broken configuration is not a missed target (exit 1)
        print(f"bench_instrument: {e}", file=sys.stderr)
        sys.exit(EXIT_BROKEN)
