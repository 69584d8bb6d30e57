"""The pytest plugin (``pytest --kcovx``, kcovx.pytest_plugin) run on small projects with
pytester, each run in a subprocess (instrumentation binds probes in the process and the
registry is per process): the options and their errors, what is instrumented and recorded
(code under test, test modules, conftest files; with and without pytest's assertion rewriting),
the outputs, per-test contexts read back with coverage.py, pytest's pyc cache in both orders,
and that without ``--kcovx`` the plugin does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kcovx import cover, pcs

pytest_plugins = ["pytester"]

PACKAGE = """\
def classify(n):
    if n < 0:
        return "neg"
    elif n == 0:
        return "zero"
    return "pos"


def never_called():
    return "never"
"""

TESTS = """\
from mypkg import classify


def helper(x):
    return x * 2


def test_neg():
    assert classify(-1) == "neg"


def test_zero():
    assert classify(0) == "zero"
    assert helper(2) == 4
"""

CONFTEST = """\
import pytest


@pytest.fixture
def seven():
    return 7
"""


LONG_TEST = """\
def test_long():
    total = 0
    for i in range(3000):
        if i % 2:
            total += i
    assert total
"""


def _has_report() -> bool:
    if importlib.util.find_spec("coverage") is None:
        return False
    try:
        from kcovx.report import write_coverage_data  # noqa: F401
    except ImportError:
        return False
    return True


needs_report = pytest.mark.skipif(not _has_report(), reason="kcovx.report / coverage.py missing")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkpydir("mypkg").joinpath("__init__.py").write_text(PACKAGE)
    pytester.makepyfile(test_a=TESTS)
    pytester.makeconftest(CONFTEST)
    return pytester


def _lines_of(table: pcs.PCsTable, pcs_read: set[int], file: Path) -> tuple[set[int], set[int]]:
    """(start lines of file's blocks in the table, start lines of those that were covered)."""
    name = str(file.resolve())
    known = {pc: b for pc, b in table.blocks.items() if b.file == name and pc not in table.sites}
    return {b.start_line for b in known.values()}, {
        b.start_line for pc, b in known.items() if pc in pcs_read
    }


def _recorded(where: Path) -> tuple[pcs.PCsTable, set[int]]:
    return pcs.read_pcs_table(where / "kcovx.pcs"), set(cover.read_cover(where / "kcovx.cover"))


@pytest.mark.parametrize("mode", ["prepend", "importlib"])
def test_code_tests_and_conftest_record(project: pytest.Pytester, mode: str) -> None:
    result = project.runpytest_subprocess("--kcovx", f"--import-mode={mode}")
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines([r"kcovx: \d+/\d+ blocks covered \(.*%\) in 3 files, gvisor"])
    table, seen = _recorded(project.path)
    pkg_known, pkg_hit = _lines_of(table, seen, project.path / "mypkg" / "__init__.py")
    # classify's "neg" and "zero" returns ran, "pos" and never_called's body did not.
    assert {3, 5} <= pkg_hit and 6 not in pkg_hit and 10 not in pkg_hit
    assert {6, 10} <= pkg_known
    test_known, test_hit = _lines_of(table, seen, project.path / "test_a.py")
    assert {5, 9, 13, 14} <= test_hit  # helper's body and both tests' bodies
    assert test_known >= test_hit
    conf_known, conf_hit = _lines_of(table, seen, project.path / "conftest.py")
    assert 1 in conf_hit and 6 in conf_known and 6 not in conf_hit  # fixture never used
    assert all(pc in table.blocks for pc in seen)


def test_linux_profile_and_outputs_elsewhere(project: pytest.Pytester) -> None:
    out = project.path / "out"
    out.mkdir()
    result = project.runpytest_subprocess(
        "--kcovx",
        "--kcovx-profile=linux",
        "--kcovx-size=4096",
        f"--kcovx-output={out / 'c.cover'}",
        f"--kcovx-pcs-table={out / 't.pcs'}",
        "--kcovx-include=mypkg",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["kcovx: * linux profile; *"])
    trace = list(cover.read_cover(out / "c.cover"))
    table = pcs.read_pcs_table(out / "t.pcs")
    # An ordered trace with repeats: classify's entry block ran once per test.
    entry = [pc for pc, b in table.blocks.items() if b.function == "classify" and b.start_line == 2]
    assert len(entry) == 1 and trace.count(entry[0]) == 2
    # With --kcovx-include, the test module is still instrumented (it is a test module).
    _, test_hit = _lines_of(table, set(trace), project.path / "test_a.py")
    assert 9 in test_hit
    assert not (project.path / "kcovx.cover").exists()


def test_module_with_docstring(project: pytest.Pytester) -> None:
    """pytest inserts its imports after a docstring with a start position only."""
    project.makepyfile(test_doc='"""Doc."""\n\nimport os\n\n\ndef test_doc():\n    assert os.sep\n')
    result = project.runpytest_subprocess("--kcovx")
    result.assert_outcomes(passed=3)
    table, seen = _recorded(project.path)
    _, hit = _lines_of(table, seen, project.path / "test_doc.py")
    assert {3, 7} <= hit  # the module entry (after the docstring) and the test body


def test_outputs_that_cannot_be_written(project: pytest.Pytester) -> None:
    """The output folder vanishes during the session: the summary says so and a passing
    session's status becomes 3."""
    out = project.path / "out"
    out.mkdir()
    project.makepyfile(
        test_gone=f"import shutil\n\ndef test_gone():\n    shutil.rmtree({str(out)!r})\n"
    )
    result = project.runpytest_subprocess("--kcovx", f"--kcovx-output={out / 'c.cover'}")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["kcovx: writing the outputs failed: *c.cover*"])


def test_collection_error_still_writes(project: pytest.Pytester) -> None:
    """A test module that does not compile is pytest's collection error, as without kcovx;
    the outputs are written all the same."""
    project.makepyfile(test_broken="def test_x(:\n    pass\n")
    result = project.runpytest_subprocess("--kcovx")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*SyntaxError*", "kcovx: * blocks covered *"])
    table, seen = _recorded(project.path)
    _, conf_hit = _lines_of(table, seen, project.path / "conftest.py")
    assert 1 in conf_hit


@pytest.mark.parametrize("how", ["--assert=plain", "-pno:assertion"])
def test_without_assertion_rewriting(project: pytest.Pytester, how: str) -> None:
    result = project.runpytest_subprocess("--kcovx", how, "--kcovx-include=mypkg")
    result.assert_outcomes(passed=2)
    table, seen = _recorded(project.path)
    _, test_hit = _lines_of(table, seen, project.path / "test_a.py")
    _, conf_hit = _lines_of(table, seen, project.path / "conftest.py")
    _, pkg_hit = _lines_of(table, seen, project.path / "mypkg" / "__init__.py")
    assert {5, 9, 13} <= test_hit and 1 in conf_hit and 3 in pkg_hit


def test_exclude_names_test_modules_too(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--kcovx", "--kcovx-exclude=test_a")
    result.assert_outcomes(passed=2)
    table, _ = _recorded(project.path)
    files = {Path(b.file).name for b in table.blocks.values()}
    assert "test_a.py" not in files and {"__init__.py", "conftest.py"} <= files


def _pycs(where: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (where / "__pycache__").glob("*pytest*.pyc")}


@pytest.mark.parametrize("first", ["plain", "kcovx"])
def test_pytest_pyc_cache_in_both_orders(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """pytest caches rewritten test modules in __pycache__: instrumented code never goes
    there, and a cached plain file is not run instead of instrumenting."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    project.makepyfile(test_b="def test_b():\n    x = 1\n    assert x == 1\n")
    order = (
        ["plain", "kcovx", "plain", "kcovx"] if first == "plain" else ["kcovx", "plain", "kcovx"]
    )
    for step, how in enumerate(order):
        for stale in ("kcovx.cover", "kcovx.pcs"):
            (project.path / stale).unlink(missing_ok=True)
        args = ["--kcovx"] if how == "kcovx" else []
        result = project.runpytest_subprocess(*args)
        result.assert_outcomes(passed=3)
        assert "NameError" not in result.stdout.str()
        pycs = _pycs(project.path)
        assert not any(b"__kcovx" in data for data in pycs.values()), (step, how)
        if how == "plain":
            assert {"test_a", "test_b", "conftest"} <= {n.split(".")[0] for n in pycs}
            assert not (project.path / "kcovx.cover").exists()
        else:
            table, seen = _recorded(project.path)
            _, hit = _lines_of(table, seen, project.path / "test_b.py")
            assert {2, 3} & hit, (step, how)


def test_nothing_without_the_option(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_modules="""
        import sys

        def test_plugin_loaded_but_idle(pytestconfig):
            assert "kcovx.pytest_plugin" in sys.modules
            assert pytestconfig.pluginmanager.has_plugin("kcovx")
            assert not pytestconfig.pluginmanager.has_plugin("kcovx-recorder")
            heavy = {"kcovx.instrument", "kcovx.pcs", "kcovx.cover", "kcovx.cli", "numpy"}
            assert not heavy & set(sys.modules), heavy & set(sys.modules)
            assert not [n for n in dir(__builtins__) if n.startswith("__kcovx")]
        """
    )
    # The other options do nothing without --kcovx (so that addopts can hold them).
    result = project.runpytest_subprocess("--kcovx-per-test", "--kcovx-profile=linux")
    result.assert_outcomes(passed=3)
    assert "kcovx:" not in result.stdout.str()
    assert not list(project.path.glob("kcovx.*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kcovx-profile=bsd"], "invalid choice: 'bsd'"),
        (["--kcovx-size=1000"], "--kcovx-size 1000: Invalid argument"),
        (["--kcovx-size=many"], "--kcovx-size: invalid int value"),
        (["--kcovx-include="], "--kcovx-include: an empty pattern"),
        (["--kcovx-output=same", "--kcovx-pcs-table=same"], "are the same file 'same'"),
        (["--kcovx-output=no/such/dir/c"], "cannot write --kcovx-output 'no/such/dir/c'"),
    ],
)
def test_bad_options(project: pytest.Pytester, args: list[str], message: str) -> None:
    result = project.runpytest_subprocess("--kcovx", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    assert not (project.path / "kcovx.cover").exists()


def test_clipping_reported(project: pytest.Pytester) -> None:
    project.makepyfile(test_long=LONG_TEST)
    result = project.runpytest_subprocess("--kcovx", "--kcovx-profile=linux", "--kcovx-size=512")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["kcovx: the area filled (PCs dropped) in 1 segment: the session; *"]
    )


@needs_report
def test_clipping_per_test(project: pytest.Pytester) -> None:
    project.makepyfile(test_long=LONG_TEST)
    result = project.runpytest_subprocess(
        "--kcovx", "--kcovx-profile=linux", "--kcovx-size=512", "--kcovx-per-test"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["kcovx: the area filled (PCs dropped) in 1 segment: test_long.py::test_long; *"]
    )


@needs_report
def test_per_test_contexts(project: pytest.Pytester) -> None:
    import coverage

    result = project.runpytest_subprocess("--kcovx", "--kcovx-per-test")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*coverage.py data (2 test contexts) -> kcovx.coverage*"])
    data = coverage.CoverageData(str(project.path / "kcovx.coverage"))
    data.read()
    assert {"test_a.py::test_neg", "test_a.py::test_zero"} <= data.measured_contexts()
    pkg = str((project.path / "mypkg" / "__init__.py").resolve())
    by_line = data.contexts_by_lineno(pkg)
    assert by_line[3] == ["test_a.py::test_neg"]
    assert by_line[5] == ["test_a.py::test_zero"]
    assert set(by_line[2]) == {"test_a.py::test_neg", "test_a.py::test_zero"}
    assert 6 not in by_line and 10 not in by_line
    test_file = str((project.path / "test_a.py").resolve())
    tests_by_line = data.contexts_by_lineno(test_file)
    assert tests_by_line[5] == ["test_a.py::test_zero"]  # helper's body
    # Module bodies ran at collection, outside every test: coverage.py's empty context.
    assert "" in by_line[1]


@needs_report
def test_data_without_per_test(project: pytest.Pytester) -> None:
    import coverage

    result = project.runpytest_subprocess("--kcovx", "--kcovx-data=run.coverage")
    result.assert_outcomes(passed=2)
    data = coverage.CoverageData(str(project.path / "run.coverage"))
    data.read()
    pkg = str((project.path / "mypkg" / "__init__.py").resolve())
    lines = data.lines(pkg) or []
    assert {1, 2, 3, 4, 5, 9} <= set(lines) and 6 not in lines and 10 not in lines
    assert not (project.path / "kcovx.coverage").exists()


def test_data_needs_coverage(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without coverage.py importable, the data options are refused in one line."""
    blocker = project.path / "blocker"
    blocker.mkdir()
    blocker.joinpath("sitecustomize.py").write_text(
        "import sys\n"
        "class _NoCoverage:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'coverage' or name.startswith('coverage.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _NoCoverage())\n"
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    )
    for option in ("--kcovx-per-test", "--kcovx-data=x.coverage"):
        result = project.runpytest_subprocess("--kcovx", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert f"{option.split('=')[0]} writes a coverage.py data file: install coverage.py" in (
            result.stderr.str()
        )


def test_children_of_tests_record(project: pytest.Pytester) -> None:
    """A Python child a test starts writes its own files, named by its pid (kcovx.children)."""
    project.makepyfile(
        test_child="""
import subprocess, sys

def test_spawns():
    code = "import mypkg; print(mypkg.classify(5))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "pos", out.stderr
"""
    )
    stale = project.path / "kcovx.cover.1"
    stale.write_bytes(b"\0" * 8)  # a former session's child: removed at the start
    result = project.runpytest_subprocess("--kcovx", "test_child.py")
    result.assert_outcomes(passed=1)
    covers = sorted(project.path.glob("kcovx.cover.*"))
    tables = sorted(project.path.glob("kcovx.pcs.*"))
    assert len(covers) == 1 and len(tables) == 1 and not stale.exists()
    pid = covers[0].name.rsplit(".", 1)[1]
    assert tables[0].name == f"kcovx.pcs.{pid}"
    child = set(cover.read_cover(covers[0]))
    table = pcs.read_pcs_table(tables[0])
    _, hit = _lines_of(table, child, project.path / "mypkg" / "__init__.py")
    assert 6 in hit  # classify's "pos" return ran in the child only
    parent_table, parent = _recorded(project.path)
    _, parent_hit = _lines_of(parent_table, parent, project.path / "mypkg" / "__init__.py")
    assert 6 not in parent_hit


def test_refused_under_kcovx_run(project: pytest.Pytester) -> None:
    """``kcovx run -m pytest --kcovx``: two recorders of one thread; the plugin says so."""
    result = subprocess.run(
        [sys.executable, "-m", "kcovx", "run", "-m", "pytest", "--kcovx", "-p", "no:cacheprovider"],
        cwd=project.path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert "already records under kcovx run" in result.stderr
