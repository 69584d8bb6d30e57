"""CPython's own tests for pure-Python stdlib modules pass unchanged when kcovx instruments them.

For each module below, tests/_cpython_suite_runner.py runs its test module from the
interpreter's ``test`` package (lib/python3.X/test) twice in fresh interpreters: plain, and
with the module imported through ``kcovx.ImportHook`` while a linux-profile device records.
Both runs must pass and give the same unittest result (tests run, failures, errors, skipped,
expected failures, unexpected successes), and the instrumented run must really be
instrumented: kcovx's loader loaded the module, its functions call the probe, PCs were
recorded and they symbolize to the module's own files.  The modules are picked for variety
and fast suites: parsers (tomllib, json's pure-Python scanner and encoder, html.parser,
shlex, configparser), algorithms and data structures (difflib, graphlib), numbers and class
hierarchies (fractions, ipaddress) and class machinery (dataclasses' generated methods,
enum's metaclass and ``__prepare__`` namespace), plus a large package (email).

The same suites pass with the module instrumented with ``cmp=True`` while the main thread
records comparisons (KCOV_TRACE_CMP): the same unittest result as plain, comparison records
made, and their PCs symbolize to the module's own comparison sites.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).with_name("_cpython_suite_runner.py")
TIMEOUT = 300  # seconds per run; the slowest (email) takes about 6 s
STDLIB_TESTS = Path(sysconfig.get_paths()["stdlib"]) / "test"

# (stdlib module, its test module in CPython's ``test`` package)
SUITES = [
    ("tomllib", "test_tomllib"),
    ("json", "test_json"),
    ("html.parser", "test_htmlparser"),
    ("shlex", "test_shlex"),
    ("configparser", "test_configparser"),
    ("difflib", "test_difflib"),
    ("graphlib", "test_graphlib"),
    ("fractions", "test_fractions"),
    ("ipaddress", "test_ipaddress"),
    ("dataclasses", "test_dataclasses"),
    ("enum", "test_enum"),
    ("email", "test_email"),
]

# No test case is left out: every one passes instrumented as it does plain.  (On 3.11 a
# call of a builtin counts a level against the recursion limit; when probes were calls,
# tomllib's test_inline_table_recursion_limit, which nests exactly as deep as the limit
# allows, failed instrumented only.  Probes are subscripts now, which do not count.  The
# comparison calls of cmp=True are calls of builtins, but METH_FASTCALL | METH_KEYWORDS ones,
# which 3.11 does not count either (only its METH_O and METH_NOARGS calls do): that test
# passes with cmp=True on 3.11 too, and test_cmp_semantics.py checks the depth directly.)


def _test_module(name: str) -> str:
    return dict(SUITES)[name]


def _present(test_module: str) -> bool:
    return (STDLIB_TESTS / test_module).is_dir() or (STDLIB_TESTS / f"{test_module}.py").is_file()


def run_both(module: str, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the module's CPython tests plain and instrumented (at the same time: two cores)."""
    plain, inst = run_modes(module, ("plain", "instrumented"), *args)
    return plain, inst


def run_modes(module: str, modes: tuple[str, ...], *args: str) -> list[dict[str, Any]]:
    """Run the module's CPython tests in each of ``modes`` of the runner, at the same time."""
    test_module = _test_module(module)
    if not _present(test_module):
        pytest.skip(f"this Python has no test.{test_module} (a distribution left out `test`?)")
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", str(RUNNER), module, test_module, mode, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    reports = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.communicate()
            pytest.fail(f"test.{test_module} took more than {TIMEOUT} s")
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and lines, f"runner failed ({p.returncode}):\n{out}\n{err}"
        reports.append(json.loads(lines[-1].removeprefix("RESULT ")))
    return reports


def _problems(report: dict[str, Any]) -> str:
    return "\n".join(
        f"{p['kind']}: {p['test']}\n{p.get('traceback', '')}" for p in report["problems"]
    )


@pytest.mark.parametrize(("module", "test_module"), SUITES, ids=[m for m, _ in SUITES])
def test_cpython_suite_passes_instrumented(module: str, test_module: str) -> None:
    plain, inst = run_both(module)

    assert not plain["problems"], (
        f"test.{test_module} fails even uninstrumented; exclude the test case here and say "
        f"why:\n{_problems(plain)}"
    )
    assert plain["counts"][0] > 0
    assert not inst["problems"], (
        f"test.{test_module} fails only when {module} is instrumented:\n{_problems(inst)}"
    )
    assert inst["counts"] == plain["counts"]
    assert inst["skipped"] == plain["skipped"]

    # The tests ran against instrumented code, and the PCs it recorded are its blocks.
    assert inst["kcovx_loader"], inst["loaders"]
    probed = inst["probed_functions"]
    assert all(n == total for n, total in probed.values()), probed
    assert sum(n for n, _ in probed.values()) > 0, probed
    assert inst["recorded"] > 0
    assert inst["target_file"] in inst["recorded_files"]
    assert set(inst["recorded_files"]) <= set(inst["own_files"]), inst["recorded_files"]
    # CPython's tests cover most of the module: at least half its blocks were recorded.
    assert inst["covered_blocks"] * 2 >= inst["blocks"] > 0, (inst["covered_blocks"], inst)


@pytest.mark.parametrize(("module", "test_module"), SUITES, ids=[m for m, _ in SUITES])
def test_cpython_suite_passes_with_cmp(module: str, test_module: str) -> None:
    plain, cmp = run_modes(module, ("plain", "cmp"))

    assert not plain["problems"], _problems(plain)
    assert plain["counts"][0] > 0
    assert not cmp["problems"], (
        f"test.{test_module} fails only when {module} is instrumented with cmp=True:\n"
        f"{_problems(cmp)}"
    )
    assert cmp["counts"] == plain["counts"]
    assert cmp["skipped"] == plain["skipped"]

    # The tests ran against code instrumented with cmp=True, which recorded comparisons at
    # the module's own comparison sites.
    assert cmp["kcovx_loader"], cmp["loaders"]
    probed = cmp["probed_functions"]
    assert all(n == total for n, total in probed.values()), probed
    assert sum(n for n, _ in cmp["comparing_functions"].values()) > 0, cmp["comparing_functions"]
    assert cmp["records"] >= cmp["recorded"] > 0
    assert cmp["recorded_files"], cmp
    assert set(cmp["recorded_files"]) <= set(cmp["own_files"]), cmp["recorded_files"]
    assert cmp["covered_sites"] == cmp["sites_recorded"] > 0
    assert cmp["sites"] >= cmp["sites_recorded"]
