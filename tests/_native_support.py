"""Building instrumented C at test time: the test extension tests/native/nativecov.c, or any
list of sources, with kcovx.sancov's flags, against the kcovx this interpreter imports.

Owns no kcovx state.  ``build_extension`` copies the sources into a scratch folder (nothing is
written into the source tree), builds with setuptools in a subprocess (so a compiler failure
is a test failure with its output, not a crash of the session), and ``load`` imports the
result without touching sys.path.  ``line_of`` finds a ``/* LINE:name */`` marker's line.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import kcovx

NATIVE_DIR = Path(__file__).resolve().parent / "native"
NATIVECOV = NATIVE_DIR / "nativecov.c"
BUILD_TIMEOUT = 300  # seconds
KCOVX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kcovx.__file__)))

_SETUP = """\
import sys
from setuptools import Extension, setup
import kcovx.sancov as sancov

name, cmp, opt = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
sources = sys.argv[4:]
sys.argv[1:] = ["build_ext", "--inplace"]
setup(
    name=name,
    ext_modules=[
        Extension(
            name,
            sources,
            extra_compile_args=sancov.compile_args(cmp=cmp) + [opt],
            extra_link_args=sancov.link_args(),
        )
    ],
)
"""


def build_extension(
    root: Path, name: str, sources: list[Path], cmp: bool = True, opt: str = "-O2"
) -> Path:
    """Build extension ``name`` from ``sources`` with kcovx's flags into ``root``; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in sources:
        shutil.copy2(src, root / src.name)
        copied.append(src.name)
    (root / "setup_native.py").write_text(textwrap.dedent(_SETUP), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (KCOVX_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "setup_native.py", name, "1" if cmp else "0", opt, *copied]
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"building {name} took more than {BUILD_TIMEOUT}s:\n{exc.stderr}")
    if proc.returncode != 0:
        pytest.fail(
            f"building {name} failed (exit {proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return root


def load(name: str, folder: Path) -> ModuleType:
    """Import the extension module ``name`` from folder, without touching sys.path."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.exists():
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(f"no built {name} in {folder}: {sorted(os.listdir(folder))}")


def built_path(name: str, folder: Path) -> Path:
    """The built extension file of ``name`` in folder."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"no built {name} in {folder}")


def line_of(marker: str, source: Path = NATIVECOV) -> int:
    """The 1-based line of ``/* LINE:marker */`` in source."""
    tag = f"LINE:{marker} "
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if tag in line or line.rstrip().endswith(f"LINE:{marker} */"):
            return n
    raise LookupError(f"no marker LINE:{marker} in {source}")
