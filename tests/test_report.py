"""``kcovx report`` and ``kcovx.report``: the text table's numbers (per file, 0% files, totals),
--show-missing, --fail-under, merging cover files and tables (children's per-process files by
default), bad and missing inputs; coverage.py's data written from blocks checked against what
coverage.py itself measures on the same programs (executed lines, and from linux traces the
arcs and branches), coverage.py's own command line on that data file, contexts, the formats
without coverage.py, native blocks in lcov, and ``kcovx run --report`` / ``--html``.
Commands run in subprocesses, as a user runs them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kcovx
from kcovx import Block, read_cover, write_cover
from kcovx.pcs import read_pcs_table, write_pcs_table

coverage = pytest.importorskip("coverage", reason="coverage.py (the test extra) is not installed")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CALC = EXAMPLES / "calc.py"
BIN = Path(sys.executable).parent

# A program with the shapes the arc replay has to get right: if/elif chains, for and while
# loops (back edges to headers without a probe), a generator resumed by a generator
# expression, recursion, try/except/else/finally with raises in a callee, a class with a
# docstring, a decorated function, a lambda, a comprehension and a conditional expression.
PROG = textwrap.dedent(
    '''\
    """A test program."""
    import functools
    import sys


    def classify(n):
        if n < 0:
            return "neg"
        elif n == 0:
            return "zero"
        total = 0
        for i in range(n):
            if i % 2:
                total += i
            else:
                total -= 1
        while total > 10:
            total -= 5
        return "pos" if total else "none"


    def gen(k):
        for i in range(k):
            yield i * 2


    def fact(n):
        if n <= 1:
            return 1
        return n * fact(n - 1)


    def check(x):
        if x > 2:
            raise ValueError(x)
        return x


    class Box:
        """A box."""

        size = 3

        def __init__(self, v):
            self.v = v

        def grow(self):
            self.v += 1
            return self


    def traced(f):
        @functools.wraps(f)
        def wrapper(*a):
            return f(*a)

        return wrapper


    @traced
    def twice(x):
        return 2 * x


    def main():
        out = [classify(v) for v in (-1, 0, 3, 12)]
        s = sum(x for x in gen(3) if x > 0)
        try:
            fact(5)
            check(5)
        except ValueError:
            s += 1
        else:
            s -= 1
        finally:
            s *= 2
        try:
            check(1)
        except ValueError:
            s = 0
        key = lambda t: -t
        b = Box(s).grow()
        if b.v > 1000:
            print("never")
        print(out, sorted([1, 3, 2], key=key), twice(b.v), fact(1))


    main()
    '''
)


# Coroutines resumed by asyncio, async with, match with guards, for/while with else, return
# through finally, a closure, with.
PROG_ASYNC = textwrap.dedent(
    """\
    import asyncio
    import contextlib


    async def fetch(n):
        await asyncio.sleep(0)
        if n % 2:
            return n
        return -n


    async def gather():
        total = 0
        for r in await asyncio.gather(*(fetch(i) for i in range(4))):
            total += r
        async with contextlib.AsyncExitStack():
            total += 1
        return total


    def shape(p):
        match p:
            case (0, 0):
                return "origin"
            case (x, 0) if x > 0:
                return "pos-x"
            case (x, y):
                return f"{x},{y}"
            case _:
                return "other"


    def search(items, want):
        for i in items:
            if i == want:
                break
        else:
            return None
        n = 0
        while n < 3:
            n += 1
        else:
            n = -n
        return i, n


    def guarded(x):
        try:
            if x:
                return "early"
            y = 1
        finally:
            x = 0
        return y


    def outer():
        k = 2

        def inner(v):
            return v * k

        with open(__file__) as f:
            first = f.readline()
        return [inner(i) for i in range(3)], len(first)


    print(asyncio.run(gather()))
    print([shape(p) for p in [(0, 0), (3, 0), (1, 2), "x"]])
    print(search([1, 2, 3], 2), search([1], 5), guarded(1), guarded(0), outer())
    """
)


def cli(*args: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcovx", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


# -- hand-made tables: the arithmetic of the text report ----------------------------------------


def _blocks(tmp_path: Path) -> list[Block]:
    a, b, c = (str(tmp_path / f"{n}.py") for n in "abc")
    return [
        Block(0x1000_0000_0001, a, "<module>", 1, 1, 1, 10),
        Block(0x1000_0000_0002, a, "f", 3, 5, 3, 20),
        Block(0x1000_0000_0003, a, "f", 5, 9, 6, 12),
        Block(0x2000_0000_0001, b, "<module>", 1, 1, 2, 4),
        Block(0x2000_0000_0002, b, "g", 4, 5, 4, 9),
        Block(0x3000_0000_0001, c, "<module>", 1, 1, 1, 5),
    ]


@pytest.fixture
def made(tmp_path: Path) -> list[Block]:
    """kcovx.pcs + kcovx.cover in tmp_path: a covers 2 of 3 blocks, b 2 of 2 (with repeats),
    c none of 1."""
    blocks = _blocks(tmp_path)
    write_pcs_table(tmp_path / "kcovx.pcs", blocks, objects=[])
    pcs = [blocks[0].pc, blocks[3].pc, blocks[1].pc, blocks[4].pc, blocks[3].pc]
    write_cover(tmp_path / "kcovx.cover", pcs)
    return blocks


def table_rows(text: str) -> dict[str, tuple[int, int, str]]:
    """The text table's rows: name -> (blocks, covered, percent text)."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit() and parts[3].endswith("%"):
            rows[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])
    return rows


def test_text_report_numbers(tmp_path: Path, made: list[Block]) -> None:
    r = cli("report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert rows == {
        "a.py": (3, 2, "66.7%"),
        "b.py": (2, 2, "100.0%"),
        "c.py": (1, 0, "0.0%"),  # instrumented, never ran: listed
        "TOTAL": (6, 4, "66.7%"),
    }
    names = [line.split()[0] for line in r.stdout.splitlines() if line.split()]
    assert names.index("a.py") < names.index("b.py") < names.index("c.py") < names.index("TOTAL")


def test_percent_never_rounds_to_all_or_none() -> None:
    from kcovx.report import FileRow

    assert FileRow("f", 1999, 2000).shown == " 99.9%"
    assert FileRow("f", 1, 3000).shown == "  0.1%"
    assert FileRow("f", 2, 3).shown == " 66.7%"
    assert FileRow("f", 0, 3).shown == "  0.0%" and FileRow("f", 3, 3).shown == "100.0%"
    assert FileRow("f", 0, 0).shown == "100.0%"  # nothing to cover, as coverage.py counts it


def test_show_missing(tmp_path: Path, made: list[Block]) -> None:
    r = cli("report", "--show-missing", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    missing = r.stdout.split("Missing blocks (2):\n", 1)[1].split()
    assert missing == ["a.py:5.9,6.12", "c.py:1.1,1.5"]


def test_fail_under(tmp_path: Path, made: list[Block]) -> None:
    assert cli("report", "--fail-under", "66", cwd=tmp_path).returncode == 0
    r = cli("report", "--fail-under", "67", cwd=tmp_path)
    assert r.returncode == 2
    assert "below --fail-under 67" in r.stderr
    assert table_rows(r.stdout)["TOTAL"] == (6, 4, "66.7%")  # the table is still printed
    r = cli("report", "--fail-under", "101", cwd=tmp_path)
    assert r.returncode == 2 and "not a percentage" in r.stderr


def test_merges_cover_files_and_childrens_files(tmp_path: Path, made: list[Block]) -> None:
    # Two explicit files: the union of their PCs.
    write_cover(tmp_path / "one.cover", [made[2].pc])
    write_cover(tmp_path / "two.cover", [made[5].pc, made[2].pc])
    r = cli("report", "one.cover", "two.cover", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert rows["a.py"] == (3, 1, "33.3%") and rows["c.py"] == (1, 1, "100.0%")
    # By default: kcovx.cover plus a child's kcovx.cover.<pid>, kcovx.pcs plus kcovx.pcs.<pid>
    # (the child's table knows a block the parent's does not).
    extra = Block(0x4000_0000_0001, str(tmp_path / "d.py"), "<module>", 1, 1, 1, 3)
    write_pcs_table(tmp_path / "kcovx.pcs.4242", [made[2], extra], objects=[])
    write_cover(tmp_path / "kcovx.cover.4242", [made[2].pc, extra.pc])
    r = cli("report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert rows["a.py"] == (3, 3, "100.0%")
    assert rows["d.py"] == (1, 1, "100.0%")
    assert rows["TOTAL"] == (7, 6, "85.7%")
    # --pcs-table, repeated, replaces the default tables.
    r = cli("report", "--pcs-table", "kcovx.pcs", "kcovx.cover", cwd=tmp_path)
    assert "d.py" not in table_rows(r.stdout)


def test_bad_inputs(tmp_path: Path, made: list[Block]) -> None:
    def refused(*args: str) -> str:
        r = cli("report", *args, cwd=tmp_path)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
        return r.stderr

    assert "no cover file 'nothere.cover'" in refused("nothere.cover")
    assert "no PC table 'nothere.pcs'" in refused("--pcs-table", "nothere.pcs")
    (tmp_path / "bad.pcs").write_text("{not json", encoding="utf-8")
    assert "not a kcovx PC table" in refused("--pcs-table", "bad.pcs")
    (tmp_path / "bad.cover").write_bytes(b"\x01\x02\x03")
    assert "bad.cover" in refused("bad.cover")
    os.mkfifo(tmp_path / "fifo.cover")
    assert "fifo.cover" in refused("fifo.cover")
    write_cover(tmp_path / "other.cover", [0x5555_0000_0001, 0x5555_0000_0002, made[0].pc])
    assert "2 of its 3 words are not PCs" in refused("other.cover")
    # Two tables that give one PC different blocks.
    clash = made[0]._replace(start_line=99)
    write_pcs_table(tmp_path / "clash.pcs", [clash], objects=[])
    assert "disagree on PC" in refused("--pcs-table", "kcovx.pcs", "--pcs-table", "clash.pcs")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("report", cwd=empty)
    assert r.returncode == 2 and "no cover file 'kcovx.cover'" in r.stderr


def test_refuses_comparison_records(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(PROG, encoding="utf-8")
    r = cli("run", "--profile", "linux", "--cmp", "prog.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("report", cwd=tmp_path)
    assert r.returncode == 2
    assert "comparison records" in r.stderr and "Traceback" not in r.stderr


# -- coverage.py's data against coverage.py's own measurement -----------------------------------


def measured_by_coverage(program: Path, cwd: Path) -> dict[str, object]:
    """coverage.py's JSON report of running ``program`` under ``coverage run --branch``."""
    tool("coverage", "run", "--branch", "--data-file=cov.data", str(program), cwd=cwd)
    tool("coverage", "json", "--data-file=cov.data", "-o", "cov.json", cwd=cwd)
    files = json.loads((cwd / "cov.json").read_text(encoding="utf-8"))["files"]
    (entry,) = (v for k, v in files.items() if Path(k).name == program.name)
    return entry  # type: ignore[no-any-return]


def measured_by_kcovx(program: Path, cwd: Path, profile: str) -> dict[str, object]:
    """The same through ``kcovx run`` and ``kcovx report --coverage-data`` then coverage.py's
    own ``coverage json`` on that data file."""
    r = cli("run", "--profile", profile, str(program), cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = cli("report", "--coverage-data", "kcovx.data", cwd=cwd)
    assert r.returncode == 0, r.stderr
    tool("coverage", "json", "--data-file=kcovx.data", "-o", "kcovx.json", cwd=cwd)
    files = json.loads((cwd / "kcovx.json").read_text(encoding="utf-8"))["files"]
    (entry,) = (v for k, v in files.items() if Path(k).name == program.name)
    return entry  # type: ignore[no-any-return]


@pytest.fixture(params=["prog", "async", "calc"])
def program(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "calc":
        return CALC
    path = tmp_path / f"{request.param}.py"
    path.write_text(PROG if request.param == "prog" else PROG_ASYNC, encoding="utf-8")
    return path


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_lines_equal_coveragepy(tmp_path: Path, program: Path, profile: str) -> None:
    want = measured_by_coverage(program, tmp_path)
    got = measured_by_kcovx(program, tmp_path, profile)
    assert got["executed_lines"] == want["executed_lines"]
    assert got["missing_lines"] == want["missing_lines"]
    if program == CALC:
        assert want["executed_lines"] and want["missing_lines"]  # both kinds are compared


def test_arcs_equal_coveragepy(tmp_path: Path, program: Path) -> None:
    """From a linux trace: the branches coverage.py reports, taken and missed, are its own."""
    want = measured_by_coverage(program, tmp_path)
    got = measured_by_kcovx(program, tmp_path, "linux")
    assert got["executed_branches"] == want["executed_branches"]
    assert got["missing_branches"] == want["missing_branches"]
    assert want["executed_branches"]
    assert want["missing_branches"] or program.stem == "async"  # both kinds are compared
    assert got["summary"] == want["summary"]


def test_raw_arcs_equal_coveragepy(tmp_path: Path) -> None:
    """The arcs in the data file itself are coverage.py's on calc.py; on PROG kcovx lacks only
    arcs from a statement to itself, which coverage.py's reports drop: a decorated def's
    (def line, decorator line), and on 3.11 the entry, loop and exit arcs of a comprehension's
    own code object."""
    from coverage.python import PythonFileReporter

    prog = tmp_path / "prog.py"
    prog.write_text(PROG, encoding="utf-8")
    for program in (CALC, prog):
        measured_by_coverage(program, tmp_path)
        measured_by_kcovx(program, tmp_path, "linux")
        arcs = {}
        for name in ("cov.data", "kcovx.data"):
            data = coverage.CoverageData(str(tmp_path / name))
            data.read()
            (file,) = (f for f in data.measured_files() if Path(f).name == program.name)
            arcs[name] = set(data.arcs(file) or ())
        assert arcs["kcovx.data"] <= arcs["cov.data"]
        extra = arcs["cov.data"] - arcs["kcovx.data"]
        if program == CALC:
            assert not extra
        first = PythonFileReporter(
            str(program), coverage.Coverage(config_file=False)
        ).multiline_map()
        decorated = {
            (node.lineno, d.lineno)
            for node in ast.walk(ast.parse(program.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
            for d in node.decorator_list
        }
        for a, b in extra:
            same = first.get(abs(a), abs(a)) == first.get(abs(b), abs(b))
            assert same or (a, b) in decorated, (a, b)


STDLIB = ("textwrap", "difflib", "fractions")
STDLIB_PROG = textwrap.dedent(
    """\
    import difflib, fractions, textwrap
    t = "The quick brown fox jumps over the lazy dog. " * 20
    print(len(textwrap.wrap(t, 30)), textwrap.dedent("  a\\n  b\\n"), textwrap.shorten(t, 50))
    a = [line + "\\n" for line in t.split(".")]
    b = a[:5] + ["changed\\n"] + a[6:]
    print(len(list(difflib.unified_diff(a, b))), difflib.SequenceMatcher(None, "ab", "bc").ratio())
    print(fractions.Fraction(3, 4) + fractions.Fraction("1/3"), fractions.Fraction(1.5) ** 2)
    try:
        fractions.Fraction("x")
    except ValueError as e:
        print("error", e)
    """
)


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_stdlib_modules_equal_coveragepy(tmp_path: Path, profile: str) -> None:
    """Real code: three stdlib modules (loaded fresh by the program under both tools),
    lines and, from the linux trace, branches."""
    (tmp_path / "use.py").write_text(STDLIB_PROG, encoding="utf-8")
    include = ",".join(f"*/{m}.py" for m in STDLIB)
    tool("coverage", "run", "--branch", "--data-file=cov.data", f"--include={include}", "use.py",
         cwd=tmp_path)  # fmt: skip
    r = cli("run", "--profile", profile, *(f"--include={m}" for m in STDLIB), "use.py",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert cli("report", "--coverage-data", "k.data", cwd=tmp_path).returncode == 0
    reports = {}
    for name in ("cov", "k"):
        tool("coverage", "json", f"--data-file={name}.data", f"--include={include}", "-o",
             f"{name}.json", cwd=tmp_path)  # fmt: skip
        files = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))["files"]
        reports[name] = {Path(k).stem: v for k, v in files.items()}
    assert set(reports["cov"]) == set(STDLIB) == set(reports["k"])
    for module in STDLIB:
        want, got = reports["cov"][module], reports["k"][module]
        assert got["executed_lines"] == want["executed_lines"], module
        if profile == "linux":
            assert got["executed_branches"] == want["executed_branches"], module
            assert got["missing_branches"] == want["missing_branches"], module


def test_coverage_commands_on_the_data_file(tmp_path: Path) -> None:
    r = cli("run", "--profile", "linux", str(CALC), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("report", "--coverage-data", "k.data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tool("coverage", "html", "--data-file=k.data", "-d", "html", cwd=tmp_path)
    (page,) = (tmp_path / "html").glob("*calc_py.html")
    text = page.read_text(encoding="utf-8")
    assert 'class="run' in text and 'class="mis' in text
    tool("coverage", "lcov", "--data-file=k.data", "-o", "k.lcov", cwd=tmp_path)
    lcov = (tmp_path / "k.lcov").read_text(encoding="utf-8")
    assert f"SF:{CALC}\n" in lcov
    assert "BRDA:" in lcov  # branch data: arcs from the ordered trace
    tool("coverage", "xml", "--data-file=k.data", "-o", "k.xml", cwd=tmp_path)
    assert 'branch-rate="' in (tmp_path / "k.xml").read_text(encoding="utf-8")
    tool("coverage", "json", "--data-file=k.data", "-o", "k.json", cwd=tmp_path)
    doc = json.loads((tmp_path / "k.json").read_text(encoding="utf-8"))
    assert doc["meta"]["branch_coverage"] is True
    # kcovx report's own formats give the same files.
    r = cli(
        "report", "--html", "h2", "--lcov", "k2.lcov", "--xml", "k2.xml", "--json", "k2.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "h2").glob("*calc_py.html"))
    assert (tmp_path / "k2.lcov").read_text(encoding="utf-8") == lcov
    again = json.loads((tmp_path / "k2.json").read_text(encoding="utf-8"))
    assert again["files"] == doc["files"]


def test_every_instrumented_file_in_the_data(tmp_path: Path) -> None:
    (tmp_path / "unused.py").write_text("def f():\n    return 1\n", encoding="utf-8")
    (tmp_path / "main.py").write_text("import unused\nprint(1)\n", encoding="utf-8")
    assert cli("run", "main.py", cwd=tmp_path).returncode == 0
    assert cli("report", "--coverage-data", "d", cwd=tmp_path).returncode == 0
    data = coverage.CoverageData(str(tmp_path / "d"))
    data.read()
    files = {Path(f).name: f for f in data.measured_files()}
    assert set(files) == {"main.py", "unused.py"}
    assert data.lines(files["unused.py"]) == [1]  # the def runs at import; the body did not


def test_write_coverage_data_contract(tmp_path: Path) -> None:
    """write_coverage_data: contexts, PCs not in blocks ignored, arcs only when every run is
    ordered, lines otherwise."""
    from coverage.python import PythonFileReporter

    from kcovx.report import write_coverage_data

    prog = tmp_path / "prog.py"
    prog.write_text(PROG, encoding="utf-8")
    assert cli("run", "--profile", "linux", "prog.py", cwd=tmp_path).returncode == 0
    blocks = read_pcs_table(tmp_path / "kcovx.pcs").blocks
    trace = list(read_cover(tmp_path / "kcovx.cover"))
    half = trace[: len(trace) // 2]
    runs = [("test_a", [*half, 0xDEAD_BEEF], True), ("test_b", trace, True)]
    write_coverage_data(tmp_path / "arcs.data", runs, blocks)
    data = coverage.CoverageData(str(tmp_path / "arcs.data"))
    data.read()
    assert data.has_arcs()
    assert data.measured_contexts() == {"test_a", "test_b"}
    (file,) = data.measured_files()
    data.set_query_contexts(["test_a"])
    part = set(data.lines(file) or ())
    data.set_query_contexts(["test_b"])
    whole = set(data.lines(file) or ())
    assert part and part < whole
    # One run not ordered: lines for all; the same statements as the arcs gave.
    write_coverage_data(tmp_path / "lines.data", [("", trace, True), ("", trace, False)], blocks)
    data = coverage.CoverageData(str(tmp_path / "lines.data"))
    data.read()
    assert data.has_arcs() is False
    statements = PythonFileReporter(file, coverage.Coverage(config_file=False)).lines()
    assert set(data.lines(file) or ()) == whole & statements


def test_ordered_or_not(tmp_path: Path) -> None:
    """A linux trace (PCs repeat) gives arcs, a gvisor area lines; --arcs/--no-arcs decide."""
    (tmp_path / "prog.py").write_text(PROG, encoding="utf-8")

    def has_arcs(*args: str) -> bool:
        r = cli("report", "--coverage-data", "d", *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        data = coverage.CoverageData(str(tmp_path / "d"))
        data.read()
        return bool(data.has_arcs())

    assert cli("run", "--profile", "linux", "prog.py", cwd=tmp_path).returncode == 0
    assert has_arcs() and has_arcs("--arcs") and not has_arcs("--no-arcs")
    assert cli("run", "prog.py", cwd=tmp_path).returncode == 0  # gvisor: each block once
    pcs = list(read_cover(tmp_path / "kcovx.cover"))
    assert len(set(pcs)) == len(pcs)
    assert not has_arcs() and not has_arcs("--no-arcs")


def test_formats_without_coveragepy(tmp_path: Path, made: list[Block]) -> None:
    code = (
        "import sys; sys.modules['coverage'] = None\n"
        "from kcovx.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, "report", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    r = run()
    assert r.returncode == 0 and table_rows(r.stdout)["TOTAL"] == (6, 4, "66.7%")
    for option, value in (("--html", "h"), ("--lcov", "l"), ("--coverage-data", "d")):
        r = run(option, value)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            "kcovx report: this needs coverage.py: pip install 'kcovx[report]'"
        ]


def test_run_report_and_html(tmp_path: Path) -> None:
    r = cli("run", "--profile", "linux", "--report", "--html", "out", str(CALC), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kcovx run:" in r.stderr and "TOTAL" in r.stderr
    assert "TOTAL" not in r.stdout  # the program's stdout stays its own
    assert list((tmp_path / "out").glob("*calc_py.html"))
    rows = table_rows(r.stderr)
    blocks = read_pcs_table(tmp_path / "kcovx.pcs").blocks
    covered = set(read_cover(tmp_path / "kcovx.cover")) & set(blocks)
    assert rows["TOTAL"][:2] == (len(blocks), len(covered))
    r = cli("run", "--profile", "linux", "--cmp", "--report", str(CALC), cwd=tmp_path)
    assert r.returncode == 2 and "--cmp" in r.stderr


# -- native blocks in lcov ----------------------------------------------------------------------


def test_native_blocks_in_lcov(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    pytest.importorskip("elftools", reason="pyelftools (the test extra) is not installed")
    from _native_support import NATIVECOV, build_extension, line_of

    ext = build_extension(tmp_path_factory.mktemp("report-native"), "nativecov", [NATIVECOV],
                          opt="-O0")  # fmt: skip
    script = textwrap.dedent(
        f"""\
        import sys
        sys.path.insert(0, {str(ext)!r})
        import kcovx, nativecov
        from kcovx.pcs import write_pcs_table
        with kcovx.open(profile="linux") as kc:
            kc.init_trace(4096)
            area = kc.mmap()
            kc.enable()
            nativecov.branch(20)
            kc.disable()
            pcs = [int(pc) for pc in area[1 : int(area[0]) + 1]]
        kcovx.write_cover("kcovx.cover", pcs)
        write_pcs_table("kcovx.pcs")
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    assert all(pc >> 63 for pc in read_cover(tmp_path / "kcovx.cover"))
    r = cli("report", "--lcov", "n.lcov", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nativecov.c" in r.stdout  # the text report names the C file, no total
    lcov = (tmp_path / "n.lcov").read_text(encoding="utf-8")
    assert "SF:" in lcov and "nativecov.c" in lcov
    assert f"DA:{line_of('branch_big')},1" in lcov
    assert f"DA:{line_of('branch_test')},1" in lcov


def test_report_is_not_loaded_by_import_kcovx() -> None:
    r = subprocess.run(
        [sys.executable, "-c", "import kcovx, sys; print('kcovx.report' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "False"
    assert kcovx.__version__
