"""The command line: ``kcovx run`` (script and -m module, arguments, exit statuses, what is
instrumented by default and with --include/--exclude, the area dump, the PC table, the
summary) and ``kcovx symbolize`` (the runsc-symbolize format, --all, malformed and unknown
PCs, missing or corrupt tables).  Every command runs in a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kcovx import load_pcs_table, read_cover

# What syzkaller expects of runsc symbolize's second line (its regex, without the pkg/ part).
LOCATION = re.compile(r"^(.+):([0-9]+)\.([0-9]+),([0-9]+)\.([0-9]+)$")

HELPER = textwrap.dedent(
    """\
    def classify(n):
        if n < 0:
            return "neg"
        elif n == 0:
            return "zero"
        return "pos"
    """
)

SCRIPT = textwrap.dedent(
    """\
    import json, sys
    import helper

    def main(args):
        out = [helper.classify(int(a)) for a in args]
        print(json.dumps(out))
        if "boom" in out:
            raise RuntimeError("boom")
        return 3 if len(args) == 3 else 0

    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
    """
)


def kcovx_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcovx", *args],
        check=False,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "prog.py").write_text(SCRIPT)
    pkg = tmp_path / "tool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(SCRIPT.replace("import helper", "from tool import helper"))
    (pkg / "helper.py").write_text(HELPER)
    return tmp_path


def symbolized_files(cwd: Path, pcs: np.ndarray) -> set[str]:
    lines = "".join(f"{int(pc):x}\n" for pc in pcs)
    r = kcovx_cli("symbolize", cwd=cwd, stdin=lines)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 2 * len(pcs)
    files = set()
    for pc, (first, second) in zip(pcs, zip(out[::2], out[1::2], strict=True), strict=True):
        assert int(first, 16) == int(pc)
        m = LOCATION.match(second)
        assert m, second
        files.add(Path(m.group(1)).name)
    return files


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_run_script(project: Path, profile: str) -> None:
    r = kcovx_cli("run", "--profile", profile, "prog.py", "-1", "0", cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '["neg", "zero"]\n'  # the program's stdout is untouched
    pcs = read_cover(str(project / "kcovx.cover"))
    assert len(pcs) > 5
    # Both the script and the module it imported from the current directory are
    # instrumented; json (stdlib) is not.
    assert symbolized_files(project, pcs) == {"prog.py", "helper.py"}
    if profile == "gvisor":
        assert len(set(pcs.tolist())) == len(pcs)  # one PC per covered block
    summary = r.stderr
    assert f"{len(pcs)} PCs recorded ({profile} profile" in summary
    assert "not clipped" in summary
    assert "prog.py" in summary and "helper.py" in summary


def test_run_linux_trace_is_ordered_with_repeats(project: Path) -> None:
    r = kcovx_cli("run", "--profile", "linux", "prog.py", "5", "6", cwd=project)
    assert r.returncode == 0, r.stderr
    pcs = read_cover(str(project / "kcovx.cover")).tolist()
    assert len(pcs) > len(set(pcs))  # classify's blocks ran twice
    table = load_pcs_table(project / "kcovx.pcs")
    funcs = [table[pc].function for pc in pcs]
    assert funcs[0] == "<module>"  # execution order: the script's entry block first
    first = funcs.index("classify")
    # classify(5), then the comprehension's next element, then classify(6): each call runs
    # the entry block, the elif test and the join after if/elif, in that order.
    assert funcs[first - 1 : first + 7] == [
        "main.<locals>.<listcomp>",
        *["classify"] * 3,
        "main.<locals>.<listcomp>",
        *["classify"] * 3,
    ]
    assert pcs[first : first + 3] == pcs[first + 4 : first + 7]
    assert [table[pc].start_line for pc in pcs[first : first + 3]] == [2, 4, 6]


def test_run_exit_status_and_arguments(project: Path) -> None:
    r = kcovx_cli("run", "prog.py", "1", "2", "3", cwd=project)
    assert r.returncode == 3
    assert r.stdout == '["pos", "pos", "pos"]\n'


def test_run_uncaught_exception(project: Path) -> None:
    (project / "bad.py").write_text("def f():\n    raise ValueError('nope')\n\nf()\n")
    r = kcovx_cli("run", "bad.py", cwd=project)
    assert r.returncode == 1
    assert "ValueError: nope" in r.stderr
    assert 'File "' in r.stderr and 'bad.py", line 2, in f' in r.stderr
    assert "kcovx/run.py" not in r.stderr and "runpy" not in r.stderr
    assert (project / "kcovx.cover").exists()  # coverage up to the failure is kept
    assert len(read_cover(str(project / "kcovx.cover"))) >= 2


def test_run_module(project: Path) -> None:
    r = kcovx_cli(
        "run", "--output", "out.bin", "--pcs-table", "t.pcs", "-m", "tool", "-5", cwd=project
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == '["neg"]\n'
    pcs = read_cover(str(project / "out.bin"))
    r2 = kcovx_cli(
        "symbolize", "--pcs-table", "t.pcs", cwd=project, stdin="\n".join(map(hex, pcs.tolist()))
    )
    assert r2.returncode == 0, r2.stderr
    names = {Path(line.split(":")[0]).name for line in r2.stdout.splitlines()[1::2]}
    assert names == {"__main__.py", "helper.py"}


def test_run_include_exclude(project: Path) -> None:
    # --include replaces the current-directory default (the script itself is always
    # instrumented); the stdlib is instrumented when named.
    r = kcovx_cli("run", "--include", "json", "prog.py", "1", cwd=project)
    assert r.returncode == 0, r.stderr
    files = symbolized_files(project, read_cover(str(project / "kcovx.cover")))
    assert "prog.py" in files and "encoder.py" in files and "helper.py" not in files
    r = kcovx_cli("run", "--exclude", "helper", "prog.py", "1", cwd=project)
    assert r.returncode == 0, r.stderr
    assert symbolized_files(project, read_cover(str(project / "kcovx.cover"))) == {"prog.py"}


def test_run_clipping_is_reported(project: Path) -> None:
    args = ["1"] * 300  # a few blocks each: well over the 511 PCs a 512-word area holds
    r = kcovx_cli("run", "--profile", "linux", "--size", "512", "prog.py", *args, cwd=project)
    assert r.returncode == 0, r.stderr
    assert len(read_cover(str(project / "kcovx.cover"))) == 511
    assert "area full: PCs were dropped" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.py"], "can't open file 'nope.py'"),
        (["-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
        (["--size", "100", "prog.py"], "Invalid argument"),  # gvisor: multiple of 512
        (["--size", "x", "prog.py"], "not an integer"),
        (["--profile", "bsd", "prog.py"], "invalid choice"),
        ([], "a script or -m module to run is required"),
    ],
)
def test_run_usage_errors(project: Path, args: list[str], message: str) -> None:
    r = kcovx_cli("run", *args, cwd=project)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_symbolize_formats_and_errors(project: Path) -> None:
    assert kcovx_cli("run", "prog.py", "1", cwd=project).returncode == 0
    pcs = read_cover(str(project / "kcovx.cover")).tolist()
    a, b = pcs[0], pcs[1]
    stdin = f"{a:#x}\n{b:X}\n\n  0x{b:x}  \nnot-hex\n0x1\n{'f' * 17}\n"
    r = kcovx_cli("symbolize", cwd=project, stdin=stdin)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[0] == f"{a:#x}" and out[2] == f"{b:#x}" and out[4] == f"{b:#x}"
    assert len(out) == 6 and all(LOCATION.match(x) for x in out[1::2])
    err = r.stderr.splitlines()
    assert err == [
        "kcovx symbolize: malformed PC 'not-hex' (want up to 16 hex digits)",
        "kcovx symbolize: unknown PC 0x1: not in the PC table",
        f"kcovx symbolize: malformed PC '{'f' * 17}' (want up to 16 hex digits)",
    ]


def test_symbolize_all(project: Path) -> None:
    assert kcovx_cli("run", "prog.py", cwd=project).returncode == 0
    r = kcovx_cli("symbolize", "--all", cwd=project)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) % 2 == 0 and len(lines) >= 10
    listed = [int(x, 16) for x in lines[::2]]
    assert len(set(listed)) == len(listed)
    assert all(LOCATION.match(x) for x in lines[1::2])
    # Every block of both instrumented files, including those the run did not cover.
    assert {Path(x.split(":")[0]).name for x in lines[1::2]} == {"prog.py", "helper.py"}
    assert len(listed) > len(read_cover(str(project / "kcovx.cover")))


def test_symbolize_without_a_table(tmp_path: Path) -> None:
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin="0x1\n")
    assert r.returncode == 2
    assert "no PC table 'kcovx.pcs'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "kcovx.pcs").write_text("garbage")
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin="0x1\n")
    assert r.returncode == 2
    assert "not a kcovx PC table" in r.stderr and "Traceback" not in r.stderr


def test_unknown_command(tmp_path: Path) -> None:
    r = kcovx_cli("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr


# -- the command line's shape ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_no_command_and_help_list_the_subcommands(tmp_path: Path, args: list[str]) -> None:
    r = kcovx_cli(*args, cwd=tmp_path)
    assert r.returncode == (0 if args else 2)
    text = r.stdout + r.stderr
    for command in ("run", "symbolize", "demo"):
        assert re.search(rf"^\s+{command}\b", text, re.M), text
    assert "input b''" not in text  # the demo did not run


def test_demo_is_a_subcommand(tmp_path: Path) -> None:
    r = kcovx_cli("demo", "--profile", "linux", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok"
    r = kcovx_cli("demo", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--profile" in r.stdout


# -- sizes in words --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--size", "1000"], ["multiple of 512 words", "from 512 to 10485760", "try 512 or 1024"]),
        (["--size", "100"], ["multiple of 512 words", "try 512"]),
        (["--size", str(1 << 30)], ["from 512 to 10485760", "try 10485760"]),
        (
            ["--profile", "linux", "--size", "1"],
            ["linux profile needs a multiple of 512", "try 512"],
        ),
        # linux takes 100 words at KCOV_INIT_TRACE, but its mmap cannot map 800 bytes
        (["--profile", "linux", "--size", "100"], ["mmap maps whole 4096-byte pages", "try 512"]),
        (["--profile", "linux", "--size", str(1 << 40)], ["to 268434944", "try 268434944"]),
    ],
)
def test_run_size_errors_say_the_rule(project: Path, args: list[str], words: list[str]) -> None:
    (project / "marker.py").write_text("open('ran', 'w').close()\n")
    r = kcovx_cli("run", *args, "marker.py", cwd=project)
    assert r.returncode == 2
    for w in words:
        assert w in r.stderr, r.stderr
    assert "[Errno" not in r.stderr and "Traceback" not in r.stderr
    assert not (project / "ran").exists()


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_demo_size_errors_say_the_rule(tmp_path: Path, profile: str) -> None:
    r = kcovx_cli("demo", "--profile", profile, "--size", "1000", cwd=tmp_path)
    assert r.returncode == 2
    assert "multiple of 512 words" in r.stderr and "Traceback" not in r.stderr


def test_run_linux_smallest_page_sized_area(project: Path) -> None:
    (project / "marker.py").write_text("open('ran', 'w').close()\n")
    r = kcovx_cli("run", "--profile", "linux", "--size", "512", "marker.py", cwd=project)
    assert r.returncode == 0, r.stderr
    assert (project / "ran").exists()


# -- outputs checked before the program runs -------------------------------------------------------


@pytest.mark.parametrize("option", ["--output", "--pcs-table"])
@pytest.mark.parametrize("where", ["missing-folder", "folder-is-a-file", "fifo", "directory"])
def test_run_unwritable_outputs_stop_before_the_program(
    project: Path, option: str, where: str
) -> None:
    (project / "marker.py").write_text("open('ran', 'w').close()\n")
    (project / "plain").write_text("")
    (project / "dir").mkdir()
    os.mkfifo(project / "fifo")
    path = {
        "missing-folder": "/nonexistent-kcovx/x.out",
        "folder-is-a-file": "plain/x.out",
        "fifo": "fifo",
        "directory": "dir",
    }[where]
    r = kcovx_cli("run", option, path, "marker.py", cwd=project)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kcovx run: cannot write {option} "), lines
    assert not (project / "ran").exists()  # the program did not run
    assert stat.S_ISFIFO(os.lstat(project / "fifo").st_mode)  # left as it was
    assert (project / "dir").is_dir()


def test_run_output_and_table_must_differ(project: Path) -> None:
    r = kcovx_cli("run", "--output", "same", "--pcs-table", "same", "prog.py", cwd=project)
    assert r.returncode == 2 and "same file" in r.stderr


# -- forked children -------------------------------------------------------------------------------

FORKER = textwrap.dedent(
    """\
    import os, sys
    import helper

    def child_work():
        helper.classify(1)

    pid = os.fork()
    if pid == 0:
        child_work()
        if sys.argv[1:] == ["exit7"]:
            sys.exit(7)
        # otherwise the child returns from the script normally
    else:
        _, st = os.waitpid(pid, 0)
        print("child status", os.waitstatus_to_exitcode(st), flush=True)
        helper.classify(-1)
    """
)


@pytest.mark.parametrize(("profile", "arg", "want"), [("gvisor", "", 0), ("linux", "exit7", 7)])
def test_run_forked_child_exits_with_the_programs_status(
    project: Path, profile: str, arg: str, want: int
) -> None:
    (project / "forker.py").write_text(FORKER)
    r = kcovx_cli("run", "--profile", profile, "forker.py", *([arg] if arg else []), cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"child status {want}\n"
    assert "Errno" not in r.stderr
    # One summary, from the parent; the cover file is the parent's.
    assert r.stderr.count("PCs recorded") == 1, r.stderr
    pcs = read_cover(str(project / "kcovx.cover"))
    assert f"{len(pcs)} PCs recorded" in r.stderr
    assert "helper.py" in symbolized_files(project, np.array(pcs, dtype=np.uint64))


# -- symbolize: PCs --------------------------------------------------------------------------------


def _hand_table(path: Path, file: str = "/src/m.py") -> None:
    blocks = [["0x0000000000001000", file, "f", 1, 1, 2, 5]]
    path.write_text(json.dumps({"format": "kcovx-pcs-table", "version": 1, "blocks": blocks}))


@pytest.mark.parametrize(
    "text", ["0x0x1000", "10_00", "\uff11\uff10\uff10\uff10", "+1000", "0x", " 0X-1000", "1000h"]
)
def test_symbolize_accepts_only_hex_digits(tmp_path: Path, text: str) -> None:
    _hand_table(tmp_path / "kcovx.pcs")
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin=f"0x1000\n{text}\n")
    assert r.returncode == 1
    assert r.stdout == "0x1000\n/src/m.py:1.1,2.5\n"  # only the well-formed one
    assert "malformed PC" in r.stderr and "Traceback" not in r.stderr


def test_symbolize_several_pcs_a_line_as_od_prints_them(project: Path) -> None:
    assert kcovx_cli("run", "prog.py", "1", "-2", cwd=project).returncode == 0
    pcs = read_cover(str(project / "kcovx.cover")).tolist()
    assert len(pcs) >= 4
    od = subprocess.run(
        ["od", "-An", "-v", "-tx8", "-j8", "kcovx.cover"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(od.splitlines()) < len(pcs)  # two words a line
    by_od = kcovx_cli("symbolize", cwd=project, stdin=od)
    one_a_line = kcovx_cli("symbolize", cwd=project, stdin="".join(f"{pc:x}\n" for pc in pcs))
    by_cover = kcovx_cli("symbolize", "--cover", "kcovx.cover", cwd=project)
    assert by_od.returncode == one_a_line.returncode == by_cover.returncode == 0
    assert by_od.stdout == one_a_line.stdout == by_cover.stdout
    assert by_cover.stdout.splitlines()[::2] == [f"{pc:#x}" for pc in pcs]


def test_symbolize_od_star_is_explained(tmp_path: Path) -> None:
    _hand_table(tmp_path / "kcovx.pcs")
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin="0000000000001000 0000000000001000\n*\n")
    assert r.returncode == 1 and "use od -v" in r.stderr


def test_symbolize_invalid_utf8_and_long_lines_on_stdin(tmp_path: Path) -> None:
    _hand_table(tmp_path / "kcovx.pcs")
    data = b"0x1000\n\xff\xfe\x80\n" + b"1" * 200_000 + b"\n0x1000\n"
    r = subprocess.run(
        [sys.executable, "-m", "kcovx", "symbolize"],
        cwd=tmp_path,
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert r.stdout == b"0x1000\n/src/m.py:1.1,2.5\n" * 2
    assert b"Traceback" not in r.stderr and b"malformed PC" in r.stderr
    assert b"longer than" in r.stderr


@pytest.mark.parametrize(
    "case", ["fifo", "dev-zero", "directory", "too-large", "missing-cover", "bad-cover"]
)
def test_symbolize_cover_and_table_files_that_are_not(tmp_path: Path, case: str) -> None:
    _hand_table(tmp_path / "kcovx.pcs")
    args: list[str] = []
    if case == "fifo":
        os.mkfifo(tmp_path / "t.pcs")
        args = ["--pcs-table", "t.pcs"]
    elif case == "dev-zero":
        args = ["--pcs-table", "/dev/zero"]  # opened read-only, never written
    elif case == "directory":
        args = ["--pcs-table", str(tmp_path)]
    elif case == "too-large":
        with open(tmp_path / "t.pcs", "wb") as f:
            f.truncate(65 << 20)  # sparse: no memory or disk spent
        args = ["--pcs-table", "t.pcs"]
    elif case == "missing-cover":
        args = ["--cover", "nope.cover"]
    else:
        (tmp_path / "bad.cover").write_bytes((5).to_bytes(8, "little") + b"\0" * 16)
        args = ["--cover", "bad.cover"]
    r = kcovx_cli("symbolize", *args, cwd=tmp_path, stdin="0x1000\n")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


HEAD = '{"format":"kcovx-pcs-table","version":1,"blocks":'
BAD_TABLES: dict[str, str | bytes] = {
    "infinity": HEAD + '[["0x1","f","g",1,1,Infinity,1]]}',
    "nan": HEAD + '[["0x1","f","g",1,1,NaN,1]]}',
    "1e999": HEAD + '[["0x1","f","g",1,1,1e999,1]]}',
    "float": HEAD + '[["0x1","f","g",1,1,2.5,1]]}',
    "huge-int": HEAD + '[["0x1","f","g",1,1,' + "9" * 5000 + ",1]]}",
    "bool": HEAD + '[["0x1","f","g",true,1,1,1]]}',
    "nested": "[" * 200_000 + "]" * 200_000,
    "nested-in-blocks": HEAD + "[" * 100_000 + "]" * 100_000 + "}",
    "surrogate": HEAD + '[["0x1","\\ud800.py","g",1,1,1,1]]}',
    "bad-pc": HEAD + '[["0x0x1","f","g",1,1,1,1]]}',
    "pc-too-wide": HEAD + '[["0x1' + "0" * 16 + '","f","g",1,1,1,1]]}',
    "not-utf8": HEAD.encode() + b'[["0x1","\xff","g",1,1,1,1]]}',
    "blocks-not-a-list": HEAD + '{"a":1}}',
    "row-not-a-list": HEAD + '["0x1"]}',
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_symbolize_bad_tables_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    content = BAD_TABLES[case]
    data = content if isinstance(content, bytes) else content.encode()
    (tmp_path / "kcovx.pcs").write_bytes(data)
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin="0x1\n")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("kcovx symbolize: ")
    assert r.stdout == ""


def test_symbolize_prints_non_utf8_file_names_as_their_bytes(tmp_path: Path) -> None:
    _hand_table(tmp_path / "kcovx.pcs", file="/src/caf\udce9.py")  # b"caf\xe9.py" on disk
    r = subprocess.run(
        [sys.executable, "-m", "kcovx", "symbolize"],
        cwd=tmp_path,
        input=b"1000\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"0x1000\n/src/caf\xe9.py:1.1,2.5\n"


# -- pytest's assertion rewriting ------------------------------------------------------------------


def test_run_pytest_names_the_modules_it_could_not_instrument(tmp_path: Path) -> None:
    (tmp_path / "util.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "test_util.py").write_text(
        "import util\n\ndef test_double():\n    assert util.double(2) == 4\n"
    )
    r = kcovx_cli(
        "run", "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_util.py", cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    line = [x for x in r.stderr.splitlines() if "not loaded through kcovx's import hook" in x]
    assert len(line) == 1, r.stderr
    assert "1 matching modules" in line[0] and line[0].endswith(": test_util")
    # util, imported by the test module, is instrumented all the same.
    assert "util.py" in symbolized_files(tmp_path, read_cover(str(tmp_path / "kcovx.cover")))


def test_run_outputs_stay_where_they_were_named_when_the_program_changes_directory(
    project: Path,
) -> None:
    (project / "elsewhere").mkdir()
    (project / "mover.py").write_text("import os\nos.chdir('elsewhere')\nx = 1\n")
    r = kcovx_cli("run", "mover.py", cwd=project)
    assert r.returncode == 0, r.stderr
    assert os.listdir(project / "elsewhere") == []
    pcs = read_cover(str(project / "kcovx.cover"))
    assert symbolized_files(project, pcs) == {"mover.py"}


def test_run_script_with_a_syntax_error_is_reported_as_python_does(project: Path) -> None:
    (project / "broken.py").write_text("x = 1\nif x\n    pass\n")
    r = kcovx_cli("run", "broken.py", cwd=project)
    plain = subprocess.run(
        [sys.executable, "broken.py"], cwd=project, capture_output=True, text=True, check=False
    )
    assert r.returncode == plain.returncode == 1
    assert "SyntaxError" in r.stderr and "kcovx" not in r.stderr.replace("kcovx run", "")
    assert r.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]


# -- symbolize: native PCs -------------------------------------------------------------------------


def test_symbolize_native_pc_without_its_object(tmp_path: Path) -> None:
    _hand_table(tmp_path / "kcovx.pcs")  # version 1: no native objects
    native = 0x8123456700001000
    r = kcovx_cli("symbolize", cwd=tmp_path, stdin=f"0x1000 {native:x}\n")
    assert r.returncode == 1
    assert r.stdout == "0x1000\n/src/m.py:1.1,2.5\n"
    assert f"unknown PC {native:#x}: no native object recorded with unit 0x81234567" in r.stderr


def test_cflags_ldflags_usage(tmp_path: Path) -> None:
    r = kcovx_cli("cflags", "--no-cmp", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "-fsanitize-coverage=trace-pc -g\n"
    r = kcovx_cli("cflags", "--bogus", cwd=tmp_path)
    assert r.returncode == 2 and "--bogus" in r.stderr
    r = kcovx_cli("--help", cwd=tmp_path)
    assert "cflags" in r.stdout and "ldflags" in r.stdout
