"""Run every benchmark script in this folder (``bench_*.py``), one fresh interpreter each.

Owns: the benchmark run as recorded in benchmarks/README.md: prints the Python version, the
machine (platform, CPU model from /proc/cpuinfo, CPU count) and where kcovx is imported from,
then each script's own table, then a summary of exit codes (0: every target met, 1: a target
missed, anything else: the script failed) and wall times.  Exits 0 if every script exited 0,
1 if the only failures are missed targets, 2 if a script failed.

Each script runs with the same interpreter (``sys.executable``) and environment as this one, so
``PYTHONPATH=. python benchmarks/run_all.py`` measures the in-place build (relative PYTHONPATH
entries are made absolute: the scripts run in this folder) and a venv's python measures that
venv's installed kcovx.  Scripts run one after another, never in parallel (the machine's cores
are shared), each within 180 s (bench_instrument.py, which starts a fresh interpreter per
configuration and round: 480 s).  Options: ``--quick`` is passed on to every script; any other
argument selects scripts whose file name contains it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model
from _report import EXIT_BROKEN, EXIT_MET, EXIT_MISSED

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 180
# Scripts that start many interpreters of their own (one per configuration and round).
TIMEOUT_OVERRIDES_S = {"bench_instrument.py": 480}


def describe() -> None:
    print(f"date      {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    impl = platform.python_implementation()
    print(f"python    {impl} {sys.version.split()[0]} ({sys.executable})")
    print(f"platform  {platform.platform()} {platform.machine()}")
    print(f"cpu       {cpu_model()}, {os.cpu_count()} logical CPUs")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kcovx, numpy; print(kcovx.__version__, kcovx.__file__,"
            " 'numpy', numpy.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    print(f"kcovx     {probe.stdout.strip() or probe.stderr.strip().splitlines()[-1]}")


def main() -> int:
    args = sys.argv[1:]
    passthrough = [a for a in args if a.startswith("--")]
    selectors = [a for a in args if not a.startswith("--")]
    scripts = sorted(p for p in HERE.glob("bench_*.py") if p.is_file())
    if selectors:
        scripts = [p for p in scripts if any(s in p.name for s in selectors)]
    # Scripts run in this folder: keep a relative PYTHONPATH (``PYTHONPATH=.``) pointing where
    # it pointed for this process.
    if os.environ.get("PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) if p else p for p in os.environ["PYTHONPATH"].split(os.pathsep)
        )
    describe()
    print(f"scripts   {', '.join(p.name for p in scripts) or '(none)'}")
    results: list[tuple[str, int, float]] = []
    for script in scripts:
        print()
        print("=" * 100)
        print(f"== {script.name}")
        print("=" * 100, flush=True)
        t0 = time.perf_counter()
        timeout = TIMEOUT_OVERRIDES_S.get(script.name, TIMEOUT_S)
        try:
            rc = subprocess.run(
                [sys.executable, str(script), *passthrough],
                cwd=HERE,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            print(f"!! {script.name}: timed out after {timeout} s")
            rc = -1
        results.append((script.name, rc, time.perf_counter() - t0))
    print()
    print("summary")
    for name, rc, secs in results:
        state = {EXIT_MET: "all targets met", EXIT_MISSED: "TARGET MISSED"}.get(
            rc, f"ERROR (exit {rc})"
        )
        print(f"  {name:<28} {state:<20} {secs:6.1f} s")
    codes = {rc for _, rc, _ in results}
    if codes <= {EXIT_MET}:
        return EXIT_MET
    return EXIT_MISSED if codes <= {EXIT_MET, EXIT_MISSED} else EXIT_BROKEN


if __name__ == "__main__":
    sys.exit(main())
