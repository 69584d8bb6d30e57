"""Building instrumented C at test time: the test extension tests/native/nativecov.c, or any
list of sources, with kcovx.sancov's flags, against the kcovx this interpreter imports.

Owns no kcovx state.  ``build_extension`` copies the sources into a scratch folder (nothing is
written into the source tree), builds with setuptools in a subprocess (so a compiler failure
is a test failure with its output, not a crash of the session), and ``load`` imports the
result without touching sys.path.  ``line_of`` finds a ``/* LINE:name */`` marker's line.
``hook_sites`` reads a built object's disassembly (binutils' objdump) for the PC each hook call
site records, function by function, so tests can predict a trace exactly; ``build_id`` reads the
GNU build-id with ``readelf -n``.  ``built`` builds and loads a test extension once per session
(the test modules share it).

Third-party extensions from PyPI: ``download_sdist`` fetches a pinned sdist (the test skips,
saying why, when PyPI cannot be reached), ``pip_build_sdist`` builds it as a user would
(``CFLAGS=... LDFLAGS=... pip install --no-binary :all: --no-build-isolation --target DIR``;
no wheel cache, so flags always reach the compiler), and ``elf_facts`` reads what the linker
recorded (DT_NEEDED, undefined dynamic symbols, the GNU build-id) with binutils' readelf.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from _kcovx_support import load_extension as load
from _kcovx_support import run_build

import kcovx
import kcovx.sancov

NATIVE_DIR = Path(__file__).resolve().parent / "native"
NATIVECOV = NATIVE_DIR / "nativecov.c"
BUILD_TIMEOUT = 300  # seconds
KCOVX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kcovx.__file__)))

_SETUP = """\
import sys
from setuptools import Extension, setup
import kcovx.sancov as sancov

name, kinds, opt = sys.argv[1], sys.argv[2], sys.argv[3]
sources = sys.argv[4:]
sys.argv[1:] = ["build_ext", "--inplace"]
flags = ["-g"] if kinds == "none" else sancov.compile_args(cmp=kinds == "cmp")
setup(
    name=name,
    ext_modules=[
        Extension(
            name,
            sources,
            extra_compile_args=flags + [opt],
            extra_link_args=sancov.link_args(),
        )
    ],
)
"""


def build_extension(
    root: Path,
    name: str,
    sources: list[Path],
    cmp: bool = True,
    opt: str = "-O2",
    *,
    instrument: bool = True,
) -> Path:
    """Build extension ``name`` from ``sources`` with kcovx's flags into ``root``; returns root.
    ``instrument=False`` compiles without any -fsanitize-coverage flag (still linked with
    ``link_args()``)."""
    root.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in sources:
        shutil.copy2(src, root / src.name)
        copied.append(src.name)
    (root / "setup_native.py").write_text(textwrap.dedent(_SETUP), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (KCOVX_ROOT, env.get("PYTHONPATH")) if p)
    kinds = ("cmp" if cmp else "pc") if instrument else "none"
    cmd = [sys.executable, "setup_native.py", name, kinds, opt, *copied]
    run_build(name, cmd, root, env, BUILD_TIMEOUT)
    return root


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


# ---------------------------------------------------------------------------------------------
# What a built object's code says: hook call sites, function ranges, build-id.

_FUNC_RE = re.compile(r"^([0-9a-f]+) <([^>]+)>:$")
_INSN_RE = re.compile(r"^\s*([0-9a-f]+):\s*(.*)$")
_HOOK_RE = re.compile(r"\bcallq?\s+[0-9a-f]+ <(__sanitizer_cov_\w+?)(?:@plt)?>")


@dataclass(frozen=True)
class HookSite:
    """One call of a sanitizer-coverage hook: the hook's name and the offset a hook called there
    records (the link-time address of the instruction after the call)."""

    hook: str
    offset: int


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"binutils' {name} is not installed")
    return path


def _tool_output(name: str, *args: str) -> str:
    """What binutils' ``name`` prints for args (the test skips without the tool)."""
    return subprocess.run(
        [_tool(name), *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def hook_sites(obj: Path) -> dict[str, list[HookSite]]:
    """Function name (clone suffixes such as ``.isra.0`` stripped; a ``.cold`` part is its own
    ``name.cold`` entry) -> its hook call sites in address order, from ``objdump -d``."""
    out = _tool_output("objdump", "-d", "--no-show-raw-insn", str(obj))
    sites: dict[str, list[HookSite]] = {}
    func: str | None = None
    pending: str | None = None  # the hook of the previous instruction, if it was a hook call
    for line in out.splitlines():
        m = _FUNC_RE.match(line)
        if m:
            name = m.group(2)
            func = name.split(".")[0] + (".cold" if ".cold" in name else "")
            sites.setdefault(func, [])
            pending = None
            continue
        m = _INSN_RE.match(line)
        if m is None or func is None:
            continue
        addr = int(m.group(1), 16)
        if pending is not None:
            sites[func].append(HookSite(pending, addr))
            pending = None
        h = _HOOK_RE.search(m.group(2))
        if h:
            pending = h.group(1)
    return sites


def build_id(obj: Path) -> bytes:
    """The GNU build-id of obj, from ``readelf -n``."""
    out = _tool_output("readelf", "-n", str(obj))
    m = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    if m is None:
        raise LookupError(f"{obj} has no GNU build-id note:\n{out}")
    return bytes.fromhex(m.group(1))


def undefined_dynamic_symbols(obj: Path) -> set[str]:
    """The undefined symbols of obj's dynamic symbol table (``nm -D --undefined-only``)."""
    out = _tool_output("nm", "-D", "--undefined-only", str(obj))
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


# ---------------------------------------------------------------------------------------------
# The test extensions, built once per session (whichever test module asks first).


@dataclass(frozen=True)
class Built:
    """A built, loaded test extension and what its binary says."""

    module: ModuleType
    folder: Path  # the build folder (a subprocess imports from here)
    path: Path  # the extension file
    sites: dict[str, list[HookSite]]
    build_id: bytes

    def pcs(self, func: str, hook: str = "trace_pc") -> list[int]:
        """Offsets of func's call sites of __sanitizer_cov_<hook>, in address order."""
        return [s.offset for s in self.sites[func] if s.hook == f"__sanitizer_cov_{hook}"]

    def site(self, func: str, hook: str) -> int:
        """The offset of func's only call site of __sanitizer_cov_<hook>."""
        (only,) = self.pcs(func, hook)
        return only

    def all_pcs(self, hook: str = "trace_pc") -> set[int]:
        """Offsets of every call site of __sanitizer_cov_<hook> in the object."""
        return {o for f in self.sites for o in self.pcs(f, hook)}


_BUILT: dict[str, Built] = {}


def built(
    tmp_path_factory: pytest.TempPathFactory, name: str, source: Path, *, instrument: bool = True
) -> Built:
    """Build (once per session) and load the extension name from source."""
    if name not in _BUILT:
        folder = build_extension(
            tmp_path_factory.mktemp(f"build-{name}"), name, [source], instrument=instrument
        )
        path = built_path(name, folder)
        _BUILT[name] = Built(load(name, folder), folder, path, hook_sites(path), build_id(path))
    return _BUILT[name]


SDIST_TIMEOUT = 300  # seconds, for pip download


def _pip(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=SDIST_TIMEOUT,
        check=False,
        env=env,
        cwd=cwd,
    )


def download_sdist(spec: str, where: Path) -> Path:
    """The sdist of ``spec`` (``name==version``) downloaded from PyPI into where; skips the
    test, saying why, when it cannot be downloaded."""
    where.mkdir(parents=True, exist_ok=True)
    got = _pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(where), spec)
    if got.returncode != 0:
        pytest.skip(f"cannot download {spec}'s sdist from PyPI: {got.stderr.strip()[-300:]}")
    name, _, version = spec.partition("==")
    found = [
        p
        for p in where.iterdir()
        if p.name.lower().replace("_", "-").startswith(f"{name.lower()}-{version}.")
        and p.name.endswith((".tar.gz", ".zip"))
    ]
    if len(found) != 1:
        pytest.fail(f"pip download {spec}: expected one sdist in {where}, got {found}")
    return found[0]


def sancov_build_env(instrumented: bool = True, **extra: str) -> dict[str, str]:
    """The environment a user builds an sdist in: CFLAGS/LDFLAGS from kcovx.sancov (joined
    with spaces) when instrumented, none of ours otherwise; ``extra`` added on top."""
    env = dict(os.environ)
    env.pop("CFLAGS", None)
    env.pop("LDFLAGS", None)
    if instrumented:
        env["CFLAGS"] = " ".join(kcovx.sancov.compile_args())
        env["LDFLAGS"] = " ".join(kcovx.sancov.link_args())
    env.update(extra)
    return env


def pip_build_sdist(sdist: Path, target: Path, env: dict[str, str]) -> Path:
    """``pip install`` the sdist into target (no dependencies, no build isolation, no wheel
    cache) under env; fails the test with pip's output when the build fails.  Returns target."""
    got = _pip(
        "install",
        "-q",
        "--no-cache-dir",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "--target",
        str(target),
        str(sdist),
        env=env,
        cwd=sdist.parent,
    )
    if got.returncode != 0:
        pytest.fail(
            f"building {sdist.name} failed (exit {got.returncode}):\n"
            f"--- stdout ---\n{got.stdout[-4000:]}\n--- stderr ---\n{got.stderr[-8000:]}"
        )
    return target


def elf_facts(path: Path) -> tuple[list[str], set[str], bytes]:
    """(DT_NEEDED entries, undefined dynamic symbols, GNU build-id or b"") of a shared object,
    as binutils shows them; skips the test without binutils."""
    needed = re.findall(
        r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _tool_output("readelf", "-W", "-d", str(path))
    )
    try:
        bid = build_id(path)
    except LookupError:
        bid = b""
    return needed, undefined_dynamic_symbols(path), bid
