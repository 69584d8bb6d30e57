"""The pytest plugin (entry point ``pytest11``, name ``kcovx``): ``pytest --kcovx`` runs the
session with the code under test and the test modules instrumented and a kcov device enabled
on the thread that runs pytest; it writes the cover file, the PC table and (``--kcovx-data``
or ``--kcovx-per-test``) a coverage.py data file, and prints a one-line summary.

Owns: the ``--kcovx*`` options and their checks, the device of the session, the import hooks
for the session, the cooperation with pytest's assertion rewriting, the per-test segments and
the outputs of the session.

Invariants:

- Without ``--kcovx`` nothing happens: this module is imported by every pytest process where
  kcovx is installed, so at import it loads only what pytest has loaded already (the
  ``kcovx`` package itself is the entry point's parent: its core, no instrumentation, no
  registry, no numpy); the instrumentation is imported when ``--kcovx`` is given, and the
  hooks that run per test exist only on an object registered then.
- Recording starts in ``pytest_load_initial_conftests`` (before the initial conftest files
  and what they import run, so their module bodies record) and ends in ``pytest_sessionfinish``
  (trylast: after session-scoped fixtures are torn down).
- Modules that pytest's assertion rewriting loads (test modules, conftest files, modules
  marked for rewriting) are compiled here when they match: pytest rewrites the asserts in the
  tree, kcovx instruments that tree, the probe is bound in the module's globals, and the
  module runs.  Such code is never read from or written to pytest's ``__pycache__`` (a run
  without ``--kcovx`` would load code calling probes it does not have; a cached plain file
  would run uninstrumented); modules that do not match keep pytest's own path and cache.
- ``--kcovx-per-test``: the area is read and its word 0 reset at each test's
  ``pytest_runtest_logstart`` and ``pytest_runtest_logfinish``, so one test's segment holds
  what its setup, call and teardown recorded (a fixture shared by several tests is set up in
  the first one's segment, torn down in the last one's); what runs between tests (collection,
  module bodies) is a segment of its own, written under coverage.py's empty context.

Threading: pytest's hooks run on one thread, the device's owner.  Other threads record in
the gvisor profile only (its coverage is global), and their blocks land in the segment that
is current when the owner next reads the area.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    import array
    import types

    from kcovx.device import Device
    from kcovx.instrument import ImportHook

__all__ = ["pytest_addoption", "pytest_load_initial_conftests"]

# Defaults, written once (the outputs are those of ``kcovx run``).
OUTPUT: Final = "kcovx.cover"
PCS_TABLE: Final = "kcovx.pcs"
DATA: Final = "kcovx.coverage"
PROFILE: Final = "gvisor"
# Words of the area.  gvisor appends each block once per read, so 2**20 (8 MiB) outlasts any
# test; linux appends every block run, so it gets 2**24 (128 MiB of address space; pages are
# touched only as they fill).
SIZES: Final = {"gvisor": 1 << 20, "linux": 1 << 24}

_RECORDER = "kcovx-recorder"
_PER_TEST = "kcovx-per-test"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kcovx", "kcovx: kcov coverage of the code under test")
    group.addoption(
        "--kcovx",
        action="store_true",
        default=False,
        help="instrument the code under test and the test modules and record the session "
        "into a kcov area (the other --kcovx-* options do nothing without it)",
    )
    group.addoption(
        "--kcovx-include",
        action="append",
        default=[],
        metavar="PAT",
        help="module name pattern (fnmatch; PKG also matches PKG.sub) of the code to "
        "instrument, repeatable; default: modules under the rootdir, not in site-packages.  "
        "Test modules and conftest files under the rootdir are instrumented either way",
    )
    group.addoption(
        "--kcovx-exclude",
        action="append",
        default=[],
        metavar="PAT",
        help="module name pattern not to instrument (test modules included), repeatable",
    )
    group.addoption(
        "--kcovx-profile",
        choices=("gvisor", "linux"),
        default=PROFILE,
        help="gvisor: each block once per read; linux: every block run, in order "
        f"(default {PROFILE})",
    )
    group.addoption(
        "--kcovx-size",
        type=int,
        default=None,
        metavar="WORDS",
        help="area size in 8-byte words, whole pages "
        f"(default {SIZES['gvisor']} for gvisor, {SIZES['linux']} for linux)",
    )
    group.addoption(
        "--kcovx-output",
        default=OUTPUT,
        metavar="FILE",
        help=f"cover file (u64 LE words: count, then PCs; default {OUTPUT})",
    )
    group.addoption(
        "--kcovx-pcs-table",
        default=PCS_TABLE,
        metavar="FILE",
        help=f"PC table for kcovx symbolize/report (default {PCS_TABLE})",
    )
    group.addoption(
        "--kcovx-per-test",
        action="store_true",
        default=False,
        help="record each test apart and write coverage.py contexts named by test id "
        f"(to --kcovx-data, default {DATA}); needs coverage.py",
    )
    group.addoption(
        "--kcovx-data",
        default=None,
        metavar="FILE",
        help="write a coverage.py data file of the session (per test with --kcovx-per-test)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    ns = early_config.known_args_namespace
    if not getattr(ns, "kcovx", False) or getattr(ns, "help", False):
        return
    if early_config.pluginmanager.has_plugin(_RECORDER):  # a second call (pytester inline)
        return
    options = _Options.from_namespace(ns, early_config.invocation_params.dir)
    recorder = _Recorder(early_config, options)
    recorder.start()
    early_config.add_cleanup(recorder.stop)
    early_config.pluginmanager.register(recorder, _RECORDER)
    if options.per_test:
        early_config.pluginmanager.register(_PerTest(recorder), _PER_TEST)


class _Options:
    """The ``--kcovx*`` options, checked (``pytest.UsageError`` says what is wrong)."""

    def __init__(
        self,
        *,
        include: list[str],
        exclude: list[str],
        profile: str,
        size: int,
        output: str,
        table: str,
        per_test: bool,
        data: str | None,
    ) -> None:
        self.include, self.exclude = include, exclude
        self.profile, self.size = profile, size
        self.output, self.table, self.per_test, self.data = output, table, per_test, data

    @classmethod
    def from_namespace(cls, ns: Any, invocation_dir: os.PathLike[str] | str) -> _Options:
        from kcovx.cli import size_problem

        if os.environ.get("KCOVX_CHILD"):  # kcovx.children.ENV, without importing it
            raise pytest.UsageError(
                "--kcovx: this pytest already records under kcovx run (or as a child of a "
                "recorded program: KCOVX_CHILD is set); use one or the other"
            )
        if getattr(ns, "numprocesses", None) or getattr(ns, "dist", "no") != "no":
            raise pytest.UsageError(
                "--kcovx: pytest-xdist workers are not supported (each would overwrite the "
                "outputs); run without -n/--dist"
            )
        for option, patterns in (
            ("--kcovx-include", ns.kcovx_include),
            ("--kcovx-exclude", ns.kcovx_exclude),
        ):
            for p in patterns:
                if not p.strip():
                    raise pytest.UsageError(f"{option}: an empty pattern matches no module")
        profile = ns.kcovx_profile
        size = SIZES[profile] if ns.kcovx_size is None else ns.kcovx_size
        problem = size_problem(profile, size)
        if problem is not None:
            raise pytest.UsageError(problem.replace("--size", "--kcovx-size", 1))
        per_test = bool(ns.kcovx_per_test)
        data = ns.kcovx_data if ns.kcovx_data is not None else (DATA if per_test else None)
        here = os.fspath(invocation_dir)
        given = {"--kcovx-output": ns.kcovx_output, "--kcovx-pcs-table": ns.kcovx_pcs_table}
        if data is not None:
            given["--kcovx-data"] = data
            _check_report_available("--kcovx-per-test" if per_test else "--kcovx-data")
        # Absolute: tests may change the working directory before the outputs are written.
        paths = {option: os.path.join(here, path) for option, path in given.items()}
        _check_paths(given, paths)
        return cls(
            include=list(ns.kcovx_include),
            exclude=list(ns.kcovx_exclude),
            profile=profile,
            size=size,
            output=paths["--kcovx-output"],
            table=paths["--kcovx-pcs-table"],
            per_test=per_test,
            data=paths.get("--kcovx-data"),
        )


def _check_report_available(option: str) -> None:
    try:
        import coverage  # noqa: F401
    except ImportError:
        raise pytest.UsageError(
            f"{option} writes a coverage.py data file: install coverage.py "
            "(pip install 'kcovx[report]')"
        ) from None
    try:
        from kcovx.report import write_coverage_data  # noqa: F401
    except ImportError as e:
        raise pytest.UsageError(f"{option}: kcovx.report cannot be loaded: {e}") from None


def _check_paths(given: dict[str, str], paths: dict[str, str]) -> None:
    """UsageError unless each output (option -> path as given, and made absolute) is a file
    of its own that can be written."""
    from kcovx._files import check_writable

    seen: dict[str, str] = {}
    for option, path in given.items():
        real = os.path.realpath(paths[option])
        if real in seen:
            raise pytest.UsageError(f"{seen[real]} and {option} are the same file {path!r}")
        seen[real] = option
        try:
            check_writable(paths[option])
        except OSError as e:
            raise pytest.UsageError(f"cannot write {option} {path!r}: {e.strerror or e}") from None


def _test_file_patterns(config: pytest.Config) -> list[str]:
    try:
        patterns = config.getini("python_files")
    except ValueError:
        patterns = ["test_*.py", "*_test.py"]
    return ["conftest.py", *patterns]


def _is_test_file(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path`` is named like a test module (``python_files``) or a conftest file."""
    import fnmatch

    base = os.path.basename(path)
    for pat in patterns:
        if os.sep in pat or "/" in pat:
            if fnmatch.fnmatch(path, "*" + os.sep + pat.replace("/", os.sep)):
                return True
        elif fnmatch.fnmatch(base, pat):
            return True
    return False


def _test_module_hook(
    exclude: Sequence[str], directory: str, patterns: Sequence[str]
) -> ImportHook:
    """An import hook for the test modules and conftest files under ``directory`` (when
    pytest's assertion rewriting does not load them: ``--assert=plain``), whatever the
    include patterns of the code under test say."""
    from kcovx.instrument import ImportHook

    class TestModuleHook(ImportHook):
        def matches(self, name: str, origin: str) -> bool:
            return _is_test_file(origin, patterns) and super().matches(name, origin)

    return TestModuleHook(None, list(exclude), directory)


class _Recorder:
    """The session's device, hooks and segments (registered as a pytest plugin)."""

    def __init__(self, config: pytest.Config, options: _Options) -> None:
        self.config = config
        self.options = options
        self.device: Device | None = None
        self._words: memoryview | None = None
        self._hooks: list[ImportHook] = []
        self._rewriter: Any = None  # pytest's AssertionRewritingHook whose exec_module we wrap
        self._children = False  # kcovx.children enabled by us
        # Segments in the order they were read: (test id, or None between tests; PCs).
        self.segments: list[tuple[str | None, array.array[int]]] = []
        # Test ids (or "between tests", "the session") whose segment filled the area.
        self.clipped: list[str] = []
        self.summary: str | None = None
        self.failed = False

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        import kcovx
        from kcovx.instrument import ImportHook

        rootdir = str(self.config.rootpath)
        opts = self.options
        code = ImportHook(opts.include or None, opts.exclude, rootdir)
        tests = _test_module_hook(opts.exclude, rootdir, _test_file_patterns(self.config))
        # What the assertion rewriting loads is instrumented under the default rule (files under
        # the rootdir, not site-packages: test modules, conftest files, project modules marked
        # for rewriting) or when the include patterns name it.
        rewritten = ImportHook(None, opts.exclude, rootdir)
        try:
            kc = kcovx.open(profile=opts.profile)
            try:
                kc.init_trace(opts.size)
                self._words = memoryview(kc.map_area())
                kc.enable(kcovx.KCOV_TRACE_PC)
            except BaseException:
                self._words = None
                kc.close()
                raise
        except OSError as e:
            raise pytest.UsageError(f"--kcovx: cannot start recording: {e}") from None
        self.device = kc
        self._children_on(rootdir)
        self._hooks = [tests.install(), code.install()]  # code first in sys.meta_path
        self._wrap_rewriter(
            lambda name, origin: code.matches(name, origin) or rewritten.matches(name, origin)
        )

    def _children_on(self, rootdir: str) -> None:
        """Children the tests start record too (kcovx.children): the same rules, files
        ``<output>.<pid>`` and ``<pcs-table>.<pid>``; those a former session left go first."""
        from kcovx import children

        opts = self.options
        config = children.Config(
            output=opts.output,
            table=opts.table,
            profile=opts.profile,
            size=opts.size,
            include=tuple(opts.include) or None,
            exclude=tuple(opts.exclude),
            directory=rootdir,
        )
        children.remove_child_files(config)
        children.enable(config)
        self._children = True

    def _wrap_rewriter(self, wants: Callable[[str, str], bool]) -> None:
        """Make pytest's assertion rewriting hook (if it is on) compile the modules ``wants``
        with both rewrites, bypassing its pyc cache for them."""
        try:
            from _pytest.assertion import rewrite
        except ImportError:  # pragma: no cover - pytest without assertion rewriting
            return
        hook = next(
            (f for f in sys.meta_path if isinstance(f, rewrite.AssertionRewritingHook)), None
        )
        if hook is None:  # --assert=plain, -p no:assertion: our ImportHooks load test modules
            return
        from kcovx.instrument import instrument_tree

        original = hook.exec_module
        config = self.config

        def exec_module(module: types.ModuleType) -> None:
            spec = module.__spec__
            origin = spec.origin if spec is not None else None
            if origin is None or not wants(module.__name__, origin):
                original(module)  # pytest's own path, cache included
                return
            __tracebackhide__ = True  # pytest shows the module's own frames only
            names = getattr(hook, "_rewritten_names", None)
            if isinstance(names, dict):  # what pytest's exec_module records (resource reader)
                from pathlib import Path

                names[module.__name__] = Path(origin)
            with open(origin, "rb") as f:
                source = f.read()

            def tree() -> Any:
                import ast

                mod = ast.parse(source, filename=origin)
                rewrite.rewrite_asserts(mod, source, origin, config)
                # pytest's inserted imports carry a start but no end: give them their start
                # (kcovx's fix_missing_locations would give them the module's line 1).
                for node in ast.walk(mod):
                    if getattr(node, "end_lineno", 0) is None:
                        node.end_lineno = node.lineno  # type: ignore[attr-defined]
                        node.end_col_offset = node.col_offset  # type: ignore[attr-defined]
                return mod

            unit = instrument_tree(tree, source, origin, module.__name__)
            unit.install(module.__dict__)
            exec(unit.code, module.__dict__)

        # An instance attribute (undone by stop): the class and other instances are untouched.
        setattr(hook, "exec_module", exec_module)  # noqa: B010
        self._rewriter = hook

    # -- reading ----------------------------------------------------------------------------

    def cut(self, name: str | None) -> None:
        """Move what the area holds into a segment named ``name`` and reset word 0."""
        import array

        kc, words = self.device, self._words
        if kc is None or words is None:
            return
        kc.flush()  # gvisor: the pending blocks go to the area now; linux: no-op
        count = int(words[0])
        top = self.options.size - 1
        n = min(count, top)
        pcs: array.array[int] = array.array("Q")
        pcs.frombytes(words[1 : 1 + n].cast("B"))
        words[0] = 0
        if n >= top:
            where = "the session" if not self.options.per_test else "between tests"
            self.clipped.append(name if name is not None else where)
        if name is not None or n:
            self.segments.append((name, pcs))

    # -- the end ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop recording and remove the hooks (idempotent); the outputs are not written."""
        if self._children:
            from kcovx import children

            children.disable()
            self._children = False
        if self._rewriter is not None:
            self._rewriter.__dict__.pop("exec_module", None)
            self._rewriter = None
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        kc, self.device = self.device, None
        if self._words is not None:
            self._words.release()  # before the close: the mapping has no other user
            self._words = None
        if kc is not None and not kc.closed:
            try:
                kc.disable()
            finally:
                kc.close()

    def finish(self) -> None:
        """Read the last segment, stop, write the outputs and make the summary."""
        if self.device is None:
            return
        self.cut(None)
        self.stop()
        try:
            self.summary = self.write_outputs()
        except (OSError, ValueError) as e:
            self.failed = True
            self.summary = f"kcovx: writing the outputs failed: {e}"

    def write_outputs(self) -> str:
        from itertools import chain

        from kcovx import cover, pcs

        opts = self.options
        written = cover.write_cover(opts.output, chain.from_iterable(s for _, s in self.segments))
        table_rows = pcs.write_pcs_table(opts.table)
        blocks = {b.pc: b for b in pcs.blocks()}
        covered = set().union(*(s for _, s in self.segments)) & blocks.keys()
        files = {blocks[pc].file for pc in covered}
        pct = 100.0 * len(covered) / len(blocks) if blocks else 0.0
        line = (
            f"kcovx: {len(covered)}/{len(blocks)} blocks covered ({pct:.1f}%) in {len(files)} "
            f"files, {opts.profile} profile; {written} PCs -> {_rel(opts.output)}, "
            f"PC table ({table_rows} entries) -> {_rel(opts.table)}"
        )
        if opts.data is not None:
            from kcovx.report import write_coverage_data

            ordered = opts.profile == "linux"
            runs = [(name or "", seg, ordered) for name, seg in self.segments]
            write_coverage_data(opts.data, runs, blocks)
            contexts = sum(1 for name, _ in self.segments if name is not None)
            what = f"{contexts} test contexts" if opts.per_test else "one context"
            line += f", coverage.py data ({what}) -> {_rel(opts.data)}"
        if self.clipped:
            shown = ", ".join(self.clipped[:3]) + (", ..." if len(self.clipped) > 3 else "")
            line += (
                f"\nkcovx: the area filled (PCs dropped) in {len(self.clipped)} "
                f"segment{'s' if len(self.clipped) > 1 else ''}: {shown}; use --kcovx-size "
                f"(now {opts.size} words)"
            )
        return line

    # -- pytest hooks (this object is registered as a plugin only with --kcovx) -------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.finish()
        if self.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary is not None:
            for text in self.summary.splitlines():
                terminalreporter.write_line(text, red=self.failed)


class _PerTest:
    """``--kcovx-per-test``: a segment per test (registered only with that option)."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.recorder.cut(None)  # what ran since the last test

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        self.recorder.cut(nodeid)


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
