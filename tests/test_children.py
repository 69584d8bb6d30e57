"""Child processes under ``kcovx run`` (kcovx.children): each kind of child, in both profiles,
writes its own cover file ``kcovx.cover.<pid>`` and PC table ``kcovx.pcs.<pid>`` holding the
blocks it ran, and the parent's file holds the parent's; nothing happens without the
variable; the ``kcovx.pth`` start line is installed and costs a child nothing without it.

Every program runs in a subprocess, as a user runs it; the children's pids come back in a
file the program writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from kcovx import children
from kcovx.cover import read_cover
from kcovx.pcs import PCsTable, read_pcs_table

HELPER = textwrap.dedent(
    """\
    def in_child(x):
        if x > 0:
            return "pos"
        return "neg"

    def in_parent():
        return "parent"
    """
)

# The program: starts one child of the kind named by argv[1], waits for it, then runs
# in_parent(); writes {"child": pid} to pids.json.
PROGRAM = textwrap.dedent(
    """\
    import json, multiprocessing, os, subprocess, sys
    import helper

    def work():
        helper.in_child(1)

    def main(kind):
        if kind in ("fork", "fork-return"):
            pid = os.fork()
            if pid == 0:
                work()
                if kind == "fork":
                    os._exit(0)
                return None  # returns from the program, through kcovx run
            os.waitpid(pid, 0)
        elif kind in ("mp-fork", "spawn", "forkserver"):
            ctx = multiprocessing.get_context(kind.removeprefix("mp-"))
            p = ctx.Process(target=work)
            p.start()
            p.join()
            assert p.exitcode == 0, p.exitcode
            pid = p.pid
        elif kind == "subprocess":
            p = subprocess.Popen([sys.executable, "child.py"])
            assert p.wait() == 0
            pid = p.pid
        elif kind == "subprocess-m":
            p = subprocess.Popen([sys.executable, "-m", "childmod"])
            assert p.wait() == 0
            pid = p.pid
        elif kind == "not-python":
            p = subprocess.Popen(["/bin/true"])
            assert p.wait() == 0
            pid = p.pid
        helper.in_parent()
        with open("pids.json", "w") as f:
            json.dump({"child": pid}, f)
        return pid

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)

CHILD_SCRIPT = "import helper\nhelper.in_child(1)\n"
CHILD_MODULE = "import helper\n\ndef go():\n    helper.in_child(-1)\n\ngo()\n"

PYTHON_KINDS = ["fork", "fork-return", "mp-fork", "spawn", "forkserver", "subprocess"]


def kcovx_run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcovx", "run", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "prog.py").write_text(PROGRAM)
    (tmp_path / "child.py").write_text(CHILD_SCRIPT)
    (tmp_path / "childmod.py").write_text(CHILD_MODULE)
    return tmp_path


def functions(cover: Path, table: PCsTable) -> set[str]:
    """The functions of the blocks in a cover file, named by table (every PC must be in it)."""
    pcs = read_cover(str(cover)).tolist()
    assert pcs, f"{cover} is empty"
    unknown = [hex(pc) for pc in pcs if pc not in table.blocks]
    assert not unknown, f"PCs of {cover} not in its table: {unknown[:5]}"
    return {table.blocks[pc].function for pc in pcs}


def child_pid(project: Path) -> int:
    pid = json.loads((project / "pids.json").read_text())["child"]
    assert isinstance(pid, int)
    return pid


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
@pytest.mark.parametrize("kind", [*PYTHON_KINDS, "subprocess-m"])
def test_child_records_into_its_own_file(project: Path, kind: str, profile: str) -> None:
    r = kcovx_run("--profile", profile, "prog.py", kind, cwd=project)
    assert r.returncode == 0, r.stderr
    assert "kcovx: child process" not in r.stderr, r.stderr  # no child reported a problem
    pid = child_pid(project)
    cover, table_path = project / f"kcovx.cover.{pid}", project / f"kcovx.pcs.{pid}"
    assert cover.is_file() and table_path.is_file(), sorted(p.name for p in project.iterdir())
    table = read_pcs_table(str(table_path))
    ran = functions(cover, table)
    # The child's own blocks, named with the child's table; nothing the parent ran after it.
    assert "in_child" in ran
    assert "in_parent" not in ran
    if kind in ("fork", "fork-return", "mp-fork", "spawn", "forkserver"):
        assert "work" in ran  # the parent's main script: instrumented in the child too
    if kind == "subprocess-m":
        assert "go" in ran  # a -m child's main module is instrumented
    # The parent's file holds the parent's blocks only.
    parent_table = read_pcs_table(str(project / "kcovx.pcs"))
    parent = functions(project / "kcovx.cover", parent_table)
    assert "in_parent" in parent and "main" in parent
    assert "in_child" not in parent
    # PCs are the same in parent and child: a block known to both has one PC.
    for pc, block in table.blocks.items():
        if pc in parent_table.blocks:
            assert parent_table.blocks[pc] == block
    by_place = {(b.file, b.start_line, b.start_col): pc for pc, b in parent_table.blocks.items()}
    for pc, b in table.blocks.items():
        assert by_place.get((b.file, b.start_line, b.start_col), pc) == pc
    # The summary counts the children's files there when the parent finished (the waited-for
    # child's at least; multiprocessing's resource tracker, a child too, may end later).
    files = children.child_files(str(project / "kcovx.cover"))
    assert str(cover) in files
    m = re.search(r"^  (\d+) child process\(es\) wrote their own cover files", r.stderr, re.M)
    assert m and 1 <= int(m.group(1)) <= len(files), r.stderr


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_a_child_that_is_not_python_is_not_touched(project: Path, profile: str) -> None:
    r = kcovx_run("--profile", profile, "prog.py", "not-python", cwd=project)
    assert r.returncode == 0, r.stderr
    pid = child_pid(project)
    assert not (project / f"kcovx.cover.{pid}").exists()
    assert children.child_files(str(project / "kcovx.cover")) == []
    assert "child process" not in r.stderr


def test_cmp_children_record_comparisons(project: Path) -> None:
    r = kcovx_run("--profile", "linux", "--cmp", "prog.py", "fork", cwd=project)
    assert r.returncode == 0, r.stderr
    pid = child_pid(project)
    words = read_cover(str(project / f"kcovx.cover.{pid}")).tolist()
    assert words and len(words) % 4 == 0
    sites = read_pcs_table(str(project / f"kcovx.pcs.{pid}")).sites
    # in_child's `x > 0`: a record at a site of the child's table.
    assert {pc for pc in words[3::4]} <= set(sites)


def test_files_of_a_former_run_are_removed(project: Path) -> None:
    stale = [project / "kcovx.cover.1", project / "kcovx.pcs.1"]
    for p in stale:
        p.write_bytes(b"old")
    (project / "kcovx.cover.notapid").write_bytes(b"kept")
    r = kcovx_run("prog.py", "not-python", cwd=project)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in stale)
    assert (project / "kcovx.cover.notapid").read_bytes() == b"kept"


@pytest.mark.parametrize("kind", PYTHON_KINDS)
def test_nothing_is_written_without_kcovx_run(project: Path, kind: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != children.ENV}
    r = subprocess.run(
        [sys.executable, "prog.py", kind],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in project.iterdir() if p.name.startswith("kcovx")) == []


def test_the_pth_is_installed_and_a_no_op_without_the_variable(tmp_path: Path) -> None:
    import kcovx

    purelib = Path(sysconfig.get_paths()["purelib"])
    pth = purelib / "kcovx.pth"
    # Installed next to the package it starts (site-packages, where .pth files are read).
    assert pth.is_file(), sorted(p.name for p in purelib.iterdir())
    assert Path(kcovx.__file__).resolve().parent.parent == purelib.resolve()
    lines = pth.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import os;"), lines
    assert children.ENV in lines[0]
    env = {k: v for k, v in os.environ.items() if k != children.ENV}
    env.pop("PYTHONPATH", None)  # the interpreter's own site-packages, as a user's child has
    probe = "import sys; print(sorted(m for m in sys.modules if m.startswith('kcovx')))"
    r = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert r.stdout == "[]\n" and r.stderr == ""
    # With the variable, the same line starts kcovx.children.
    config = children.Config(output=str(tmp_path / "c"), table=str(tmp_path / "t"))
    env[children.ENV] = config.encode()
    r = subprocess.run(
        [sys.executable, "-c", probe + "; import os; print(os.getpid())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    loaded, pid = r.stdout.splitlines()
    assert "kcovx.children" in loaded, r.stderr
    assert (tmp_path / f"c.{pid}").is_file() and (tmp_path / f"t.{pid}").is_file()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("garbage", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 99}', "not version 1"),
        ('{"version": 1, "output": "rel", "table": "/t"}', "absolute path"),
        ('{"version": 1, "output": "/o", "table": "/t", "size": 1.5}', "not an integer"),
        ('{"version": 1, "output": "/o", "table": "/t", "profile": "bsd"}', "profile"),
        ('{"version": 1, "output": "/o", "table": "/t", "exclude": [1]}', "exclude"),
        ('{"version": 1, "output": "/o", "table": "/t", "extra": 1}', "unknown fields"),
        ('{"version": 1, "output": "/o"}', "table"),
    ],
)
def test_a_bad_variable_is_one_line_and_the_child_runs(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        children.Config.decode(value)
    env = {**os.environ, children.ENV: value}
    r = subprocess.run(
        [sys.executable, "-c", "print('ran')"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert len(r.stderr.splitlines()) == 1 and "records nothing" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_config_round_trips() -> None:
    config = children.Config(
        output="/o/kcovx.cover",
        table="/o/kcovx.pcs",
        profile="linux",
        size=4096,
        include=("pkg", "other.*"),
        exclude=("pkg.tests",),
        always=("tool",),
        directory="/o",
        main="/o/prog.py",
        cmp=True,
    )
    assert children.Config.decode(config.encode()) == config
    assert "\n" not in config.encode()
    with pytest.raises(TypeError):
        children.enable("not a config")  # type: ignore[arg-type]


TERMINATED = textwrap.dedent(
    """\
    import json, multiprocessing, os, time
    import helper

    def sleeper(ready):
        helper.in_child(1)
        ready.set()
        time.sleep(60)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        p = ctx.Process(target=sleeper, args=(ready,))
        p.start()
        assert ready.wait(30)
        p.terminate()
        p.join()
        with open("pids.json", "w") as f:
            json.dump({"child": p.pid, "exitcode": p.exitcode}, f)
    """
)


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_a_terminated_child_dies_by_sigterm_with_its_files_written(
    project: Path, profile: str
) -> None:
    (project / "term.py").write_text(TERMINATED)
    r = kcovx_run("--profile", profile, "term.py", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    got = json.loads((project / "pids.json").read_text())
    assert got["exitcode"] == -15  # as without kcovx
    table = read_pcs_table(str(project / f"kcovx.pcs.{got['child']}"))
    assert "in_child" in functions(project / f"kcovx.cover.{got['child']}", table)
