"""The command line: ``kcovx run`` (script and -m module, arguments, exit statuses, what is
instrumented by default and with --include/--exclude, the area dump, the PC table, the
summary) and ``kcovx symbolize`` (the runsc-symbolize format, --all, malformed and unknown
PCs, missing or corrupt tables).  Every command runs in a subprocess, as a user runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kcovx import load_pcs_table
from kcovx.run import read_cover

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
