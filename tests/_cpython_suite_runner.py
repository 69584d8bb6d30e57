"""Run one of CPython's own test modules, plain or with a stdlib module instrumented by kcovx.

Run by tests/test_cpython_suites.py in a fresh interpreter (``python -P``, so this folder is
not on sys.path)::

    python -P _cpython_suite_runner.py MODULE TEST_MODULE {plain,instrumented,cmp}
        [--exclude TEST_ID]... [--only TEST_ID]...

It loads ``test.TEST_MODULE`` as ``python -m unittest test.TEST_MODULE`` does, leaves out the
excluded test cases (or keeps only the ``--only`` ones), runs the rest and prints one line
``RESULT <json>`` on stdout: the counts of the unittest result, the failures and errors with
their tracebacks, the skipped tests and, when instrumented, what the checks below found.

Instrumented: an ``ImportHook(include=[MODULE])`` is installed and a linux-profile device is
enabled on the main thread before unittest or test.support is imported, so MODULE and its
submodules are imported instrumented even when the test machinery is what imports them.
Importing kcovx already imports part of the stdlib (dataclasses, enum, json, ...): those
copies are dropped from sys.modules first, so the tests get a fresh, instrumented import
(kcovx keeps using the copies it imported).  The area is emptied after every test, so no PC
is lost to clipping.  Reported: the loader of each module, how many of the functions defined
in each file use the probe (subscript it), the PCs recorded and the files they symbolize to,
and how many of the modules' blocks were covered.

Cmp: the same with ``ImportHook(include=[MODULE], cmp=True)`` and the device enabled with
KCOV_TRACE_CMP on the main thread; the comparison records (``kcovx.comparisons``) are drained
after every test.  Reported: the comparisons recorded (and how many tests filled the area),
the files their PCs symbolize to, how many functions make comparison calls, and how many of
the modules' comparison sites (``kcovx.pcs.comparison_sites()``) were recorded.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import time
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import unittest  # imported at run time only after the import hook is installed

PROBE = "__kcovx_pc"  # every probe name starts with this
CMP = "__kcovx_cmp"  # every comparison call's name starts with this (cmp=True)


def _own_modules(name: str) -> list[types.ModuleType]:
    """``name`` and its submodules, as sys.modules has them now."""
    return [
        m
        for n, m in sorted(sys.modules.items())
        if (n == name or n.startswith(name + ".")) and isinstance(m, types.ModuleType)
    ]


def _probed_functions(mod: types.ModuleType, prefix: str = PROBE) -> tuple[int, int]:
    """(functions and methods defined in mod's file whose code names the probe (or another
    name starting with ``prefix``), all of them)."""
    funcs = []
    for value in list(vars(mod).values()):
        items = [value]
        if isinstance(value, type) and value.__module__ == mod.__name__:
            items = list(vars(value).values())
        for v in items:
            f = getattr(v, "__func__", v)
            if isinstance(f, types.FunctionType) and f.__code__.co_filename == mod.__file__:
                funcs.append(f)
    return sum(any(n.startswith(prefix) for n in f.__code__.co_names) for f in funcs), len(funcs)


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    import unittest

    out: list[unittest.TestCase] = []
    for t in suite:
        out.extend(_flatten(t) if isinstance(t, unittest.TestSuite) else [t])  # type: ignore[list-item]
    return out


class CmpRecorder:
    """A linux-profile device enabled with KCOV_TRACE_CMP on this thread; ``drain`` decodes
    its area's comparisons and empties it."""

    def __init__(self) -> None:
        import kcovx

        self.kc = kcovx.open(profile="linux")
        self.kc.init_trace(1 << 20)
        self.area = self.kc.mmap()
        self.kc.enable(kcovx.KCOV_TRACE_CMP)
        self.area[0] = 0
        self.capacity = (len(self.area) - 1) // 4  # records the area holds
        self.pcs: set[int] = set()
        self.recorded = 0
        self.records = 0
        self.full = 0  # tests whose records filled the area (the rest were dropped)

    def drain(self) -> None:
        import kcovx

        n = int(self.area[0])
        self.records += min(n, self.capacity)
        self.full += n >= self.capacity
        found = kcovx.comparisons(self.area)
        self.area[0] = 0
        self.recorded += len(found)
        self.pcs.update(c.pc for c in found)

    def report(self, target: types.ModuleType) -> dict[str, Any]:
        import kcovx
        from kcovx import instrument

        self.kc.disable()
        self.drain()
        self.kc.close()
        mods = [target, *(m for m in _own_modules(target.__name__) if m is not target)]
        own_files = {m.__file__ for m in mods}
        files = set()
        covered = 0
        for pc in self.pcs:
            try:
                file = kcovx.symbolize(pc).file
            except LookupError:
                file = "<unknown pc>"
            files.add(file)
            covered += file in own_files
        sites = [s for s in kcovx.pcs.comparison_sites() if s.file in own_files]
        return {
            "loaders": {m.__name__: type(m.__spec__.loader).__name__ for m in mods},
            "kcovx_loader": all(
                isinstance(m.__spec__.loader, instrument.InstrumentingLoader) for m in mods
            ),
            "probed_functions": {m.__name__: _probed_functions(m) for m in mods},
            "comparing_functions": {m.__name__: _probed_functions(m, CMP) for m in mods},
            "target_file": target.__file__,
            "own_files": sorted(own_files),
            "records": self.records,
            "recorded": self.recorded,
            "full": self.full,
            "recorded_files": sorted(files),
            "covered_sites": covered,
            "sites": len(sites),
            "sites_recorded": len(self.pcs & {s.pc for s in sites}),
        }


class Recorder:
    """A linux-profile device enabled on this thread; ``drain`` empties its area into ``pcs``."""

    def __init__(self) -> None:
        import kcovx

        self.kc = kcovx.open(profile="linux")
        self.kc.init_trace(1 << 20)
        self.area = self.kc.mmap()
        self.kc.enable()
        self.pcs: set[int] = set()
        self.recorded = 0

    def drain(self) -> None:
        n = int(self.area[0])
        self.recorded += n
        self.pcs.update(self.area[1 : n + 1].tolist())
        self.area[0] = 0

    def report(self, target: types.ModuleType) -> dict[str, Any]:
        import kcovx
        from kcovx import instrument

        self.kc.disable()
        self.drain()
        self.kc.close()
        mods = [target, *(m for m in _own_modules(target.__name__) if m is not target)]
        own_files = {m.__file__ for m in mods}
        files = set()
        covered = 0
        for pc in self.pcs:
            try:
                file = kcovx.symbolize(pc).file
            except LookupError:
                file = "<unknown pc>"
            files.add(file)
            covered += file in own_files
        return {
            "loaders": {m.__name__: type(m.__spec__.loader).__name__ for m in mods},
            "kcovx_loader": all(
                isinstance(m.__spec__.loader, instrument.InstrumentingLoader) for m in mods
            ),
            "probed_functions": {m.__name__: _probed_functions(m) for m in mods},
            "target_file": target.__file__,
            "own_files": sorted(own_files),
            "recorded": self.recorded,
            "recorded_files": sorted(files),
            "covered_blocks": covered,
            "blocks": sum(1 for b in kcovx.blocks() if b.file in own_files),
        }


def run_tests(
    test_module: str,
    exclude: list[str],
    only: list[str],
    recorder: Recorder | CmpRecorder | None,
) -> dict[str, Any]:
    import unittest

    tests = _flatten(unittest.defaultTestLoader.loadTestsFromName(f"test.{test_module}"))
    ids = {t.id() for t in tests}
    missing = set(exclude + only) - ids
    if missing:
        raise SystemExit(f"no such test cases in test.{test_module}: {sorted(missing)}")
    kept = [t for t in tests if t.id() not in exclude and (not only or t.id() in only)]

    class Result(unittest.TextTestResult):
        def stopTest(self, test: unittest.TestCase) -> None:
            super().stopTest(test)
            if recorder is not None:
                recorder.drain()  # the area holds 2**20 - 1 PCs, with duplicates

    start = time.perf_counter()
    runner = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0, resultclass=Result)
    result = runner.run(unittest.TestSuite(kept))
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "left_out": sorted(ids - {t.id() for t in kept}),
        "counts": [
            result.testsRun,
            len(result.failures),
            len(result.errors),
            len(result.skipped),
            len(result.expectedFailures),
            len(result.unexpectedSuccesses),
        ],
        "problems": [
            {"kind": kind, "test": str(t), "traceback": tb}
            for kind, items in (("FAIL", result.failures), ("ERROR", result.errors))
            for t, tb in items
        ]
        + [{"kind": "UNEXPECTED SUCCESS", "test": str(t)} for t in result.unexpectedSuccesses],
        "skipped": sorted(str(t) for t, _ in result.skipped),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("test_module")
    parser.add_argument("mode", choices=["plain", "instrumented", "cmp"])
    parser.add_argument("--exclude", action="append", default=[], metavar="TEST_ID")
    parser.add_argument("--only", action="append", default=[], metavar="TEST_ID")
    args = parser.parse_args()
    report: dict[str, Any] = {"module": args.module, "mode": args.mode}
    recorder: Recorder | CmpRecorder | None = None
    if args.mode in ("instrumented", "cmp"):
        import kcovx

        hook = kcovx.ImportHook(include=[args.module], cmp=args.mode == "cmp").install()
        report["reimported"] = [m.__name__ for m in _own_modules(args.module)]
        for name in report["reimported"]:
            del sys.modules[name]
        recorder = Recorder() if args.mode == "instrumented" else CmpRecorder()

    import test.support  # noqa: F401  (after the hook on purpose: it imports much of the stdlib)

    target = importlib.import_module(args.module)
    report.update(run_tests(args.test_module, args.exclude, args.only, recorder))
    if recorder is not None:
        report.update(recorder.report(target))
        hook.remove()
    print("RESULT " + json.dumps(report), flush=True)
    # Threads or atexit handlers a test left behind must not change the outcome.
    os._exit(0)


if __name__ == "__main__":
    main()
