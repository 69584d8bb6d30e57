"""kcovx's own build ignores the instrumentation flags a user's environment carries (README
"Native code", setup.py): with ``CFLAGS="$(kcovx cflags)" LDFLAGS="$(kcovx ldflags)"`` set,
setup.py's BuildExt still makes a runtime whose code calls no hook and a core that is neither
instrumented nor linked against another kcovx's runtime.

Builds a copy of the source tree (setup.py and kcovx/, next to this tests folder; skipped when
the tests run without their source tree) in a temporary folder with
``setup.py build_ext --build-lib X --build-temp Y``, so nothing is written into the source
tree.  A control object compiled with the same CFLAGS shows the flags are live.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _native_support import undefined_dynamic_symbols

import kcovx.sancov

SOURCE_ROOT = Path(__file__).resolve().parent.parent
HOOK_PREFIX = "__sanitizer_cov_"


def _copy_tree(dst: Path) -> None:
    if not (SOURCE_ROOT / "setup.py").is_file() or not (SOURCE_ROOT / "kcovx").is_dir():
        pytest.skip("the kcovx source tree is not next to the tests")
    shutil.copy2(SOURCE_ROOT / "setup.py", dst / "setup.py")
    shutil.copytree(
        SOURCE_ROOT / "kcovx",
        dst / "kcovx",
        ignore=shutil.ignore_patterns("*.so", "_area.c", "*.html", "__pycache__"),
    )


def _calls_to_hooks(obj: Path) -> list[str]:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("binutils' objdump is not installed")
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(obj)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # a call to a hook (directly or through the PLT), not a jump inside a hook's own body
    hook_call = re.compile(r"\bcallq?\s+[0-9a-f]+ <__sanitizer_cov_\w+(@plt)?>")
    return [line for line in out.splitlines() if hook_call.search(line)]


@pytest.mark.slow
def test_own_build_drops_instrumentation_flags(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _copy_tree(src)
    cflags = kcovx.sancov.compile_args(cmp=True)
    ldflags = kcovx.sancov.link_args()
    env = dict(os.environ)
    env["CFLAGS"] = shlex.join(cflags)
    env["LDFLAGS"] = shlex.join(ldflags)
    lib, temp = tmp_path / "lib", tmp_path / "temp"
    proc = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(temp),
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    runtime = lib / "kcovx" / "sancov" / "libkcovx_rt.so"
    (core,) = (lib / "kcovx").glob("_area*.so")
    assert runtime.is_file()
    # the runtime defines the hooks and calls none of them; the core needs none
    assert not {s for s in undefined_dynamic_symbols(runtime) if s.startswith(HOOK_PREFIX)}
    assert _calls_to_hooks(runtime) == []
    assert not {s for s in undefined_dynamic_symbols(core) if s.startswith(HOOK_PREFIX)}
    assert _calls_to_hooks(core) == []
    # the core links the runtime built next to it, not the installed kcovx's
    readelf = shutil.which("readelf")
    assert readelf is not None
    dyn = subprocess.run(
        [readelf, "-d", str(core)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert kcovx.sancov.lib_dir() not in dyn
    assert "$ORIGIN/sancov" in dyn
    assert dyn.count("libkcovx_rt.so") == 1

    # control: the same CFLAGS do instrument ordinary code
    probe = tmp_path / "probe.c"
    probe.write_text("int f(int x) { return x > 3 ? x * 2 : x - 1; }\n", encoding="utf-8")
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None
    so = tmp_path / "probe.so"
    subprocess.run(
        [cc, *cflags, "-O2", "-fPIC", "-shared", str(probe), "-o", str(so)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert f"{HOOK_PREFIX}trace_pc" in undefined_dynamic_symbols(so)
