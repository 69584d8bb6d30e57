"""examples/instrumented_python.py's argument handling, without building anything.

Owns: the checks the script makes before it starts a CPython build: a path that does not
exist, an archive, a folder that is not a CPython source tree, a tree of a version kcovx does
not support, a tree configured in place, and a missing argument each end with exit status 2 and
one clear line on stderr, before any build step runs (no configure, no make: the tests would
take seconds, not minutes, if one did, and the build folder would appear).  The script runs in
a subprocess with this interpreter, from the source checkout's examples/ folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "instrumented_python.py"

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="needs the source checkout")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_tree(root: Path, major: int = 3, minor: int = 11) -> Path:
    """The files the script looks for in a CPython source tree (nothing that would build)."""
    (root / "Include").mkdir(parents=True)
    (root / "Python").mkdir()
    (root / "configure").write_text("#!/bin/sh\nexit 99\n", encoding="utf-8")
    (root / "Python" / "ceval.c").write_text("/* not CPython */\n", encoding="utf-8")
    (root / "Include" / "patchlevel.h").write_text(
        f"#define PY_MAJOR_VERSION {major}\n#define PY_MINOR_VERSION {minor}\n"
        "#define PY_MICRO_VERSION 2\n",
        encoding="utf-8",
    )
    return root


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "=== configure" not in proc.stdout  # refused before the first build step
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_path(tmp_path: Path) -> None:
    assert_refused(run(tmp_path / "nope"), "no such file or directory")


def test_archive_is_refused_with_a_hint(tmp_path: Path) -> None:
    tarball = tmp_path / "python3.11_3.11.2.orig.tar.xz"
    tarball.write_bytes(b"\xfd7zXZ\x00")
    assert_refused(run(tarball), "is an archive", "unpack it first")


def test_plain_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x", encoding="utf-8")
    assert_refused(run(f), "is not a folder")


def test_folder_that_is_not_cpython(tmp_path: Path) -> None:
    (tmp_path / "configure").write_text("", encoding="utf-8")
    proc = run(tmp_path)
    assert_refused(proc, "is not a CPython source tree", "Include/patchlevel.h", "Python/ceval.c")
    assert "no configure" not in proc.stderr  # it names what is missing, only that
    assert not (tmp_path.parent / "kcovx-build").exists()


def test_old_cpython_is_refused(tmp_path: Path) -> None:
    assert_refused(run(fake_tree(tmp_path / "src", 3, 10)), "CPython 3.10.2", "3.11 or later")


def test_tree_configured_in_place_is_refused(tmp_path: Path) -> None:
    src = fake_tree(tmp_path / "src")
    (src / "Makefile").write_text("all:\n", encoding="utf-8")
    assert_refused(run(src), "configured in place", "make distclean")
    assert not (tmp_path / "kcovx-build").exists()


def test_missing_argument_and_bad_jobs(tmp_path: Path) -> None:
    proc = run()
    assert proc.returncode == 2 and "source tree is required" in proc.stderr
    proc = run(fake_tree(tmp_path / "src"), "--jobs", "0")
    assert proc.returncode == 2 and "--jobs must be at least 1" in proc.stderr


def test_skip_build_without_a_build(tmp_path: Path) -> None:
    src = fake_tree(tmp_path / "src")
    proc = run(src, "--skip-build", "--prefix", tmp_path / "prefix")
    assert_refused(proc, "python3: build first")
