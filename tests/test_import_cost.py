"""``import kcovx`` loads the core, the device API and the errors only: the
instrumentation (ast, dis, marshal) and the PC registry (json) load on first use of one of
their names, which still resolve as before (``from kcovx import instrument_func``, ``dir``,
``__all__``).  Checked in fresh interpreters, with ``-X importtime``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _kcovx_support import python

import kcovx

# Modules `import kcovx` must not import (numpy loads on the first numpy view, Device.mmap).
FORBIDDEN = {"json", "ast", "dis", "marshal", "numpy"}
EXCLUDED_SUBTREES: set[str] = set()


def imported_by(code: str) -> list[str]:
    """Modules first imported while running ``code`` (not at the interpreter's start-up),
    except inside EXCLUDED_SUBTREES."""
    startup = set(_importtime("pass")) if code != "pass" else set()
    return [name for name in _importtime(code) if name not in startup]


def _importtime(code: str) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        name_field = line.split("|")[2]
        if name_field.strip() == "imported package":
            continue
        depth = (len(name_field) - len(name_field.lstrip())) // 2
        rows.append((depth, name_field.strip()))
    # importtime prints a module after the modules it imported, one level deeper: read in
    # reverse, a module comes before its children.
    out = []
    skip_below: int | None = None
    for depth, name in reversed(rows):
        if skip_below is not None and depth > skip_below:
            continue
        skip_below = None
        if name.split(".")[0] in EXCLUDED_SUBTREES:
            skip_below = depth
            continue
        out.append(name)
    return out


def test_import_kcovx_imports_no_heavy_module() -> None:
    names = imported_by("import kcovx")
    assert "kcovx" in names and "kcovx._area" in names
    assert not FORBIDDEN & set(names), sorted(FORBIDDEN & set(names))
    assert "kcovx.instrument" not in names and "kcovx.pcs" not in names


def test_the_parser_can_see_forbidden_imports() -> None:
    # The check above can fail: what is imported after start-up is seen, lazy names included.
    names = set(imported_by("import kcovx, json; kcovx.symbolize; kcovx.instrument_func"))
    assert {"json", "kcovx.pcs", "kcovx.instrument"} <= names
    assert "marshal" not in names  # imported at start-up, before any code runs


def test_lazy_names_resolve() -> None:
    code = (
        "import kcovx\n"
        "from kcovx import instrument_func, symbolize, Block, ImportHook, read_cover\n"
        "assert set(kcovx.__all__) <= set(dir(kcovx)), set(kcovx.__all__) - set(dir(kcovx))\n"
        "for name in kcovx.__all__:\n"
        "    getattr(kcovx, name)\n"
        "assert kcovx.instrument_func is instrument_func\n"
        "assert kcovx.pcs.symbolize is symbolize and kcovx.instrument.ImportHook is ImportHook\n"
        "try:\n"
        "    kcovx.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
        "print('ok')\n"
    )
    r = python("-c", code)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_errors_are_exported() -> None:
    for name in (
        "KcovxError",
        "NoSourceError",
        "InstrumentError",
        "UnknownPCError",
        "PCsTableError",
        "CoverFileError",
        "CacheEntryError",
    ):
        assert name in kcovx.__all__
        assert issubclass(getattr(kcovx, name), kcovx.KcovxError)


def test_run_starts_the_program_without_numpy(tmp_path: Path) -> None:
    # A program under `kcovx run` starts with what plain python gives it: no numpy, no BLAS
    # thread (the area is mapped with Device.map_area, not a numpy view).
    script = tmp_path / "prog.py"
    script.write_text(
        "import os, sys\nprint('numpy' in sys.modules, len(os.listdir('/proc/self/task')))\n"
    )
    r = python("-m", "kcovx", "run", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False 1\n", r.stdout


def test_map_area_is_mmap_without_numpy() -> None:
    code = (
        "import errno, sys, kcovx\n"
        "kc = kcovx.open('gvisor')\n"
        "kc.init_trace(512)\n"
        "area = kc.map_area()\n"
        "assert isinstance(area, kcovx.Area) and area.size == 512 and area is kc.area\n"
        "assert 'numpy' not in sys.modules\n"
        "try:\n"
        "    kc.map_area(offset=1)\n"
        "except OSError as e:\n"
        "    assert e.errno == errno.EINVAL\n"
        "else:\n"
        "    raise SystemExit('no EINVAL')\n"
        "kc.enable(); kcovx.trace_pc(0x1234); kc.flush()\n"
        "assert memoryview(area).cast('B').cast('Q')[:2].tolist() == [1, 0x1234]\n"
        "assert 'numpy' not in sys.modules\n"
        "print('ok')\n"
    )
    r = python("-c", code)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
