"""Native PCs to C lines: traces of the test extension tests/native/nativecov.c (built here with
kcovx.sancov's flags) symbolized in-process with pyelftools and with the addr2line fallback,
offline from a PC table written by another process, stale and debug-less objects, hostile
native objects in a table, and the ``kcovx cflags``/``ldflags`` flags through a real shell
and a real setuptools build.

The line checks use an -O0 build (at -O2 gcc makes ``branch`` branch-free, so its two returns
are no longer separate blocks); comparisons and the switch record the same lines either way.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _kcovx_support import Devices, python
from _native_support import NATIVECOV, build_extension, built_path, line_of, load

import kcovx
import kcovx.sancov
from kcovx import pcs
from kcovx.errors import PCsTableError, UnknownPCError
from kcovx.sancov import NativeObject
from kcovx.sancov import symbolize as native

pytest.importorskip("elftools", reason="pyelftools (the test extra) is not installed")

MODULE = "nativecov"


@pytest.fixture(scope="module")
def ext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_extension(tmp_path_factory.mktemp("native-O0"), MODULE, [NATIVECOV], opt="-O0")


@pytest.fixture(scope="module")
def ext(ext_dir: Path) -> Any:
    return load(MODULE, ext_dir)


@pytest.fixture(scope="module")
def nodebug_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # compile_args(debug=False) drops kcovx's -g, but setuptools also passes the interpreter's
    # own CFLAGS (Debian's and pyenv's carry -g): -g0 last switches debug information off.
    root = tmp_path_factory.mktemp("native-nodebug")
    return build_extension(
        root, "nativecov_nodebug", [_renamed(root, "nativecov_nodebug")], opt="-g0"
    )


def _renamed(root: Path, name: str) -> Path:
    """nativecov.c as a module called name (a second module of the same name would not load)."""
    src = NATIVECOV.read_text(encoding="utf-8").replace('"nativecov"', f'"{name}"')
    src = src.replace("PyInit_nativecov", f"PyInit_{name}")
    staged = root.parent / f"{root.name}-src"
    staged.mkdir(exist_ok=True)
    (staged / f"{name}.c").write_text(src, encoding="utf-8")
    return staged / f"{name}.c"


@pytest.fixture(params=["pyelftools", "addr2line"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Symbolize with pyelftools, or with addr2line as when pyelftools is not installed."""
    if request.param == "addr2line":
        if shutil.which("addr2line") is None:
            pytest.skip("binutils' addr2line is not installed")
        monkeypatch.setattr(native, "_elftools", lambda: None)
    native.clear_cache()
    assert native.backend() == request.param
    yield request.param
    native.clear_cache()


def _record(devices: Devices, call: Callable[[], object], mode: int) -> list[int]:
    """The words call() records on this thread in the linux profile (the device is closed
    again, so a test can record several times)."""
    dev, area = devices.enabled("linux", size=4096, mode=mode)
    try:
        area[0] = 0
        call()
        n = int(area[0]) * (1 if mode == kcovx.KCOV_TRACE_PC else 4)
        return [int(w) for w in area[1 : n + 1]]
    finally:
        dev.disable()
        del area
        dev.close()


def _trace(devices: Devices, call: Callable[[], object]) -> list[int]:
    return _record(devices, call, kcovx.KCOV_TRACE_PC)


def _cmp_records(devices: Devices, call: Callable[[], object]) -> list[tuple[int, int, int, int]]:
    words = _record(devices, call, kcovx.KCOV_TRACE_CMP)
    return [(words[i], words[i + 1], words[i + 2], words[i + 3]) for i in range(0, len(words), 4)]


def _lines_in(blocks: list[pcs.Block], function: str) -> list[int]:
    return [b.start_line for b in blocks if b.function == function]


# -- in-process ------------------------------------------------------------------------------------


def test_branch_pcs_symbolize_to_the_lines_taken(
    devices: Devices, ext: Any, ext_dir: Path, backend: str
) -> None:
    big = [kcovx.symbolize(pc) for pc in _trace(devices, lambda: ext.branch(20))]
    small = [kcovx.symbolize(pc) for pc in _trace(devices, lambda: ext.branch(0))]
    assert all(kcovx.sancov.is_native(b.pc) for b in big + small)
    source = str(ext_dir / "nativecov.c")
    assert {b.file for b in big + small} == {source}
    taken, not_taken = _lines_in(big, "branch"), _lines_in(small, "branch")
    assert line_of("branch_test") in taken and line_of("branch_test") in not_taken
    assert line_of("branch_big") in taken and line_of("branch_big") not in not_taken
    assert line_of("branch_small") in not_taken
    assert set(taken) <= {line_of(m) for m in ("branch_test", "branch_big", "branch_small")}
    # A native PC is a point: start == end; pyelftools has the column, addr2line does not.
    for b in big:
        assert (b.start_line, b.start_col) == (b.end_line, b.end_col)
        assert (b.start_col > 0) == (backend == "pyelftools")
    entry = next(b for b in big if b.function == "branch")
    assert entry.start_line == line_of("branch_test")
    if backend == "pyelftools":  # a column inside `if (x > 10)`
        text = NATIVECOV.read_text(encoding="utf-8").splitlines()[entry.start_line - 1]
        assert text.index("if") <= entry.start_col - 1 <= text.index(")"), entry


def test_loop_body_is_one_pc_per_iteration(devices: Devices, ext: Any, backend: str) -> None:
    blocks = [kcovx.symbolize(pc) for pc in _trace(devices, lambda: ext.loop(5))]
    assert _lines_in(blocks, "loop").count(line_of("loop_body")) == 5


def test_switch_records_symbolize_to_the_switch(devices: Devices, ext: Any, backend: str) -> None:
    records = _cmp_records(devices, lambda: ext.classify(17))
    mine = [(r, kcovx.symbolize(r[3])) for r in records]
    switch = [(r, b) for r, b in mine if b.function == "classify"]
    assert sorted(r[1] for r, _ in switch) == [3, 17, 1000]  # one record per case
    assert {b.start_line for _, b in switch} == {line_of("switch")}


def test_each_comparison_symbolizes_to_its_line(devices: Devices, ext: Any, backend: str) -> None:
    assert _cmp_lines(devices, ext) == {name: line_of(name) for name in _CMP_LINES}


def test_unknown_native_unit(ext: Any) -> None:
    units = {o.unit for o in kcovx.sancov.objects()}
    unit = next(u for u in range(0x80000001, 0x80000100) if u not in units)
    with pytest.raises(UnknownPCError, match="no native object"):
        kcovx.symbolize(unit << 32 | 0x1234)
    with pytest.raises(UnknownPCError):
        kcovx.symbolize(kcovx.sancov.NATIVE_UNKNOWN_UNIT << 32 | 0x1234)


def test_pc_outside_any_function_gives_no_line(devices: Devices, ext: Any, ext_dir: Path) -> None:
    native.clear_cache()
    unit = _trace(devices, lambda: ext.branch(1))[0] >> 32
    block = kcovx.symbolize(unit << 32 | 0xFFFFFFF0)  # far past the object's code
    path = str(built_path(MODULE, ext_dir))
    assert (block.file, block.function, block.start_line, block.end_line) == (path, "", 0, 0)


_CMP_LINES = ("c1", "c2", "c4", "c8", "v1", "v2", "v4", "v8")


def _cmp_lines(
    devices: Devices, mod: Any, objects: list[NativeObject] | None = None
) -> dict[str, int]:
    got = {}
    for kind, _a, _b, pc in _cmp_records(devices, lambda: mod.cmp_all(0x4B434F5658585858, 7)):
        block = kcovx.symbolize(pc) if objects is None else pcs.symbolize_native(pc, objects)
        if block.function == "cmp_all":
            width = 1 << ((kind & kcovx.KCOV_CMP_MASK) >> 1)
            got[("c" if kind & kcovx.KCOV_CMP_CONST else "v") + str(width)] = block.start_line
    return got


@pytest.mark.parametrize("flag", ["-gdwarf-4", "-gz", "no-aranges"])
def test_debug_info_variants(devices: Devices, tmp_path: Path, ext_dir: Path, flag: str) -> None:
    """DWARF 4 line tables (1-based file numbers), compressed debug sections, and an object
    without .debug_aranges (as clang builds them): the same lines."""
    native.clear_cache()
    want = {name: line_of(name) for name in _CMP_LINES}
    if flag == "no-aranges":
        objcopy = shutil.which("objcopy")
        if objcopy is None:
            pytest.skip("binutils' objcopy is not installed")
        so = built_path(MODULE, ext_dir)
        copy = tmp_path / so.name
        subprocess.run(
            [objcopy, "--remove-section", ".debug_aranges", str(so), str(copy)],
            check=True,
            timeout=60,
        )
        assert not _has_section(copy, ".debug_aranges") and _has_section(so, ".debug_aranges")
        mine = next(o for o in kcovx.sancov.objects() if o.path == str(so))
        assert native.read_build_id(str(copy)) == mine.build_id
        assert _cmp_lines(devices, load(MODULE, ext_dir), [mine._replace(path=str(copy))]) == want
        return
    name = "nativecov_" + flag.strip("-").replace("-", "_")
    root = tmp_path / name
    mod = load(name, build_extension(root, name, [_renamed(root, name)], opt=flag))
    assert _cmp_lines(devices, mod) == want
    source = str(root / f"{name}.c")
    pc = _trace(devices, lambda: mod.branch(1))[0]
    assert kcovx.symbolize(pc).file == source


# -- without debug information ---------------------------------------------------------------------


def _has_section(path: Path, name: str) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return ELFFile(f).get_section_by_name(name) is not None


def test_object_without_debug_info_gives_function_names(
    devices: Devices, nodebug_dir: Path, backend: str
) -> None:
    path = built_path("nativecov_nodebug", nodebug_dir)
    assert not _has_section(path, ".debug_info") and not _has_section(path, ".debug_line")
    mod = load("nativecov_nodebug", nodebug_dir)
    blocks = [kcovx.symbolize(pc) for pc in _trace(devices, lambda: mod.branch(20))]
    assert blocks and {b.file for b in blocks} == {str(path)}
    assert {(b.start_line, b.start_col, b.end_line, b.end_col) for b in blocks} == {(0, 0, 0, 0)}
    # gcc may clone a static function (branch.constprop.0 and the like): the name leads.
    assert {b.function.split(".")[0] for b in blocks} == {"py_branch", "branch"}


# -- offline: a table written by another process ---------------------------------------------------

_RECORDER = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import kcovx
from _native_support import load
mod = load(sys.argv[2], __import__("pathlib").Path(sys.argv[3]))
kc = kcovx.open("linux"); kc.init_trace(4096); area = kc.mmap(); kc.enable()
area[0] = 0
mod.branch(20); mod.loop(3)
pcs = [int(pc) for pc in area[1 : int(area[0]) + 1]]
kc.disable()
kc.enable(kcovx.KCOV_TRACE_CMP)
area[0] = 0
mod.cmp_all(0x4B434F5658585858, 7)
pcs += [int(area[1 + 4 * i + 3]) for i in range(int(area[0]))]
kc.disable()
kcovx.write_pcs_table(sys.argv[4])
here = [kcovx.pcs.format_block(kcovx.symbolize(pc)) for pc in pcs]
print(json.dumps({"pcs": pcs, "here": here}))
"""


def _record_elsewhere(tmp_path: Path, name: str, folder: Path) -> tuple[Path, list[int], list[str]]:
    script = tmp_path / "recorder.py"
    script.write_text(_RECORDER, encoding="utf-8")
    table = tmp_path / "native.pcs"
    tests = str(Path(__file__).resolve().parent)
    r = python(str(script), tests, name, str(folder), str(table), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return table, doc["pcs"], doc["here"]


def _cli(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return python("-m", "kcovx", *args, cwd=cwd, input=stdin)


def test_offline_symbolize_matches_the_recording_process(tmp_path: Path, ext_dir: Path) -> None:
    table, pcs_seen, here = _record_elsewhere(tmp_path, MODULE, ext_dir)
    objects = pcs.read_pcs_table(table).objects
    so = str(built_path(MODULE, ext_dir))
    assert so in {o.path for o in objects}
    assert {pc >> 32 for pc in pcs_seen} <= {o.unit for o in objects}
    stdin = " ".join(f"{pc:x}" for pc in pcs_seen) + "\n"
    r = _cli("symbolize", "--pcs-table", str(table), cwd=tmp_path, stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(f"{t}\n" for t in here)
    lines = {int(t.rsplit(":", 1)[1].split(".")[0]) for t in here}
    assert {line_of(m) for m in ("branch_big", "loop_body", "c1", "c2", "c4", "c8")} <= lines
    assert {line_of(m) for m in ("v1", "v2", "v4", "v8")} <= lines
    # --functions: the same lines, each followed by its function.
    r = _cli("symbolize", "--functions", "--pcs-table", str(table), cwd=tmp_path, stdin=stdin)
    second = r.stdout.splitlines()[1::2]
    assert r.returncode == 0 and len(second) == len(here)
    assert {s.split(" ")[-1] for s in second} >= {"branch", "loop", "cmp_all", "py_branch"}


def test_offline_stale_object_is_reported_not_misread(tmp_path: Path, ext_dir: Path) -> None:
    so = built_path(MODULE, ext_dir)
    mine = tmp_path / "lib" / so.name
    mine.parent.mkdir()
    shutil.copy2(so, mine)
    table, pcs_seen, _here = _record_elsewhere(tmp_path, MODULE, mine.parent)
    stdin = "".join(f"{pc:#x}\n" for pc in pcs_seen)
    r = _cli("symbolize", "--pcs-table", str(table), cwd=tmp_path, stdin=stdin)
    assert r.returncode == 0 and r.stdout.count("\n") == 2 * len(pcs_seen), r.stderr
    # The same path now holds a different build of the same source: another build-id.
    rebuilt = build_extension(tmp_path / "rebuilt", MODULE, [NATIVECOV], opt="-O1")
    shutil.copy2(built_path(MODULE, rebuilt), mine)
    r = _cli("symbolize", "--pcs-table", str(table), cwd=tmp_path, stdin=stdin)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("stale object") == len(pcs_seen), r.stderr
    # In-process, against the table's objects, the same answer.
    native.clear_cache()
    objects = pcs.read_pcs_table(table).objects
    with pytest.raises(UnknownPCError, match="stale object"):
        pcs.symbolize_native(pcs_seen[0], objects)
    mine.unlink()
    with pytest.raises(UnknownPCError, match="cannot be read"):
        pcs.symbolize_native(pcs_seen[0], objects)


def test_offline_object_without_debug_info(tmp_path: Path, nodebug_dir: Path) -> None:
    table, pcs_seen, _here = _record_elsewhere(tmp_path, "nativecov_nodebug", nodebug_dir)
    so = str(built_path("nativecov_nodebug", nodebug_dir))
    stdin = "\n".join(f"{pc:#x}" for pc in pcs_seen)
    r = _cli("symbolize", "--functions", "--pcs-table", str(table), cwd=tmp_path, stdin=stdin)
    assert r.returncode == 0, r.stderr
    second = r.stdout.splitlines()[1::2]
    assert len(second) == len(pcs_seen)
    assert all(s.startswith(f"{so}:0.0,0.0 ") for s in second)
    assert {s.split(" ")[-1].split(".")[0] for s in second} >= {"branch", "loop", "cmp_all"}
    assert r.stderr.count("no line information") == 1  # said once per object


# -- hostile objects in a table --------------------------------------------------------------------

_GOOD_ID = "ab" * 20


def _good_object() -> dict[str, Any]:
    unit = kcovx.sancov.native_unit(bytes.fromhex(_GOOD_ID), "/x/lib.so")
    return {
        "path": "/x/lib.so",
        "build_id": _GOOD_ID,
        "base": "0x7f0000000000",
        "unit": f"{unit:#x}",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"objects": None},
        {"objects": {}},
        {"objects": ["/x/lib.so"]},
        {"objects": [[]]},
        {"extra": 1},
        {"path": ""},
        {"path": 5},
        {"path": "/x/\0lib.so"},
        {"path": "/x/" + "a" * 5000},
        {"build_id": "abc"},
        {"build_id": "AB" * 20},
        {"build_id": "zz" * 20},
        {"build_id": "ab" * 65},
        {"build_id": None},
        {"base": 0x7F0000000000},
        {"base": "-0x1"},
        {"base": "0x1" + "0" * 16},
        {"unit": "0x80000001"},
        {"unit": 1},
        {"unit": "0x" + "f" * 17},
        {"no-objects": True},
        {"many": True},
    ],
)
def test_malformed_objects_in_a_table(tmp_path: Path, change: dict[str, Any]) -> None:
    obj = _good_object()
    doc: dict[str, Any] = {
        "format": "kcovx-pcs-table",
        "version": 2,
        "blocks": [],
        "objects": [obj],
    }
    key, value = next(iter(change.items()))
    if key == "objects":
        doc["objects"] = value
    elif key == "extra":
        obj["extra"] = value
    elif key == "no-objects":
        del doc["objects"]
    elif key == "many":
        doc["objects"] = [obj] * (pcs.MAX_TABLE_OBJECTS + 1)
    else:
        obj[key] = value
    path = tmp_path / "bad.pcs"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(PCsTableError, match="malformed PC table"):
        pcs.read_pcs_table(path)
    with pytest.raises(PCsTableError):
        kcovx.load_pcs_table(path)
    # The unchanged object reads back.
    doc["objects"] = [_good_object()]
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert pcs.read_pcs_table(path).objects == [
        NativeObject("/x/lib.so", _GOOD_ID, 0x7F0000000000, int(_good_object()["unit"], 16))
    ]


def test_read_build_id_of_hostile_files(tmp_path: Path, ext_dir: Path) -> None:
    so = built_path(MODULE, ext_dir)
    good = native.read_build_id(str(so))
    assert good and len(good) == 40
    data = so.read_bytes()
    cases = {
        "empty": b"",
        "text": b"hello, world\n" * 10,
        "header-only": data[:64],
        "truncated": data[: len(data) // 3],
        "bad-phoff": data[:32] + b"\xff" * 8 + data[40:],
        "bad-class": data[:4] + b"\x09" + data[5:],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        got = native.read_build_id(str(path))
        assert got in (None, "", good), (name, got)
    mine = tmp_path / "lib.so"
    mine.write_bytes(data[:64])  # an ELF header whose program headers are missing: no build-id
    with pytest.raises(UnknownPCError, match="stale object"):
        native.lookup(str(mine), good, 0x1000)
    mine.write_bytes(b"hello, world\n" * 10)
    with pytest.raises(UnknownPCError, match="not an ELF file"):
        native.lookup(str(mine), good, 0x1000)
    # A FIFO or a folder at an object's path: refused, without blocking on the FIFO.
    fifo = tmp_path / "fifo.so"
    os.mkfifo(fifo)
    assert native.read_build_id(str(fifo)) is None
    for special in (fifo, tmp_path):
        with pytest.raises(UnknownPCError, match="not a regular file"):
            native.lookup(str(special), good, 0x1000)


@pytest.mark.parametrize("section", [".debug_info", ".debug_line", ".debug_abbrev", ".symtab"])
def test_corrupt_debug_sections_give_an_error_or_an_answer(
    tmp_path: Path, ext_dir: Path, section: str
) -> None:
    """An object with its build-id intact but a debug section overwritten with noise: each
    lookup answers or raises UnknownPCError, nothing else."""
    import random

    from elftools.elf.elffile import ELFFile

    so = built_path(MODULE, ext_dir)
    data = bytearray(so.read_bytes())
    with open(so, "rb") as f:
        sec = ELFFile(f).get_section_by_name(section)
        start, size = sec["sh_offset"], sec["sh_size"]
    good = native.read_build_id(str(so))
    assert good
    for seed in range(4):
        rng = random.Random(seed)
        noisy = bytearray(data)
        for _ in range(max(1, size // 16)):
            noisy[start + rng.randrange(size)] = rng.randrange(256)
        path = tmp_path / f"{seed}.so"
        path.write_bytes(noisy)
        assert native.read_build_id(str(path)) == good
        for addr in (0, 0x1000, 0x1258, 0x1600, 0xFFFFFF):
            try:
                where = native.lookup(str(path), good, addr)
            except UnknownPCError as e:
                assert "malformed debug information" in str(e)
            else:
                assert isinstance(where, native.NativeLine)


# -- cflags, ldflags -------------------------------------------------------------------------------


def test_cflags_and_ldflags_print_the_flags(tmp_path: Path) -> None:
    cases = {
        ("cflags",): kcovx.sancov.compile_args(),
        ("cflags", "--no-cmp"): kcovx.sancov.compile_args(cmp=False),
        ("cflags", "--no-debug"): kcovx.sancov.compile_args(debug=False),
        ("cflags", "--no-cmp", "--no-debug"): kcovx.sancov.compile_args(cmp=False, debug=False),
        ("ldflags",): kcovx.sancov.link_args(),
    }
    for args, want in cases.items():
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") == 1 and shlex.split(r.stdout) == want, (args, r.stdout)
    no_debug = shlex.split(_cli("cflags", "--no-debug", cwd=tmp_path).stdout)
    assert "-g" not in no_debug and no_debug[-1] == "-g0"  # -g0 last overrides a CFLAGS -g
    assert _cli("ldflags", "--no-cmp", cwd=tmp_path).returncode == 2


_SPACED_LDFLAGS = """\
import sys
import kcovx.sancov
kcovx.sancov.lib_dir = lambda: sys.argv[1]
from kcovx.cli import main
sys.exit(main(["ldflags"]))
"""

_PLAIN_SETUP = """\
from setuptools import Extension, setup
setup(name="nativecov", ext_modules=[Extension("nativecov", ["nativecov.c"])])
"""


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_flags_round_trip_through_a_shell_and_setuptools(tmp_path: Path) -> None:
    # kcovx's runtime seen from a folder whose path has a space (and a quote) in it.
    spaced = tmp_path / "it's a dir" / "sancov"
    spaced.parent.mkdir()
    spaced.symlink_to(kcovx.sancov.lib_dir(), target_is_directory=True)
    flags = tmp_path / "ldflags.py"
    flags.write_text(_SPACED_LDFLAGS, encoding="utf-8")
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy2(NATIVECOV, build / "nativecov.c")
    (build / "setup.py").write_text(_PLAIN_SETUP, encoding="utf-8")
    env = dict(os.environ)
    env["KCOVX_PY"], env["KCOVX_FLAGS"], env["KCOVX_SPACED"] = (
        sys.executable,
        str(flags),
        str(spaced),
    )
    # What make does with $(LDFLAGS) (the shell reads the quoting back), then a setuptools build
    # with CFLAGS/LDFLAGS from the environment (split by setuptools' own quote-aware splitter).
    script = textwrap.dedent(
        """\
        set -e
        CFLAGS="$("$KCOVX_PY" -m kcovx cflags)"
        LDFLAGS="$("$KCOVX_PY" "$KCOVX_FLAGS" "$KCOVX_SPACED")"
        export CFLAGS LDFLAGS
        eval "set -- $LDFLAGS"
        printf '%s\\n' "$@"
        "$KCOVX_PY" setup.py -q build_ext --inplace >/dev/null
        """
    )
    r = subprocess.run(
        ["sh", "-c", script],
        cwd=build,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    words = r.stdout.splitlines()
    assert f"-L{spaced}" in words and f"-Wl,-rpath,{spaced}" in words and "-lkcovx_rt" in words
    so = built_path(MODULE, build)
    dyn = subprocess.run(
        ["readelf", "-d", str(so)], capture_output=True, text=True, timeout=60, check=False
    )
    if dyn.returncode == 0:
        assert str(spaced) in dyn.stdout and "libkcovx_rt.so" in dyn.stdout
    # The extension built that way records and symbolizes, in a fresh process.
    code = (
        "import sys, kcovx\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from _native_support import load\n"
        "m = load('nativecov', __import__('pathlib').Path(sys.argv[2]))\n"
        "kc = kcovx.open('linux'); kc.init_trace(512); area = kc.mmap(); kc.enable()\n"
        "area[0] = 0; m.branch(20); n = int(area[0])\n"
        "print(sorted({kcovx.symbolize(int(pc)).function for pc in area[1 : n + 1]}))\n"
    )
    r = python("-c", code, str(Path(__file__).resolve().parent), str(build), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['branch', 'py_branch']\n"


# -- import cost -----------------------------------------------------------------------------------


def test_pyelftools_loads_on_the_first_native_symbolize(ext_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys, kcovx\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from _native_support import load\n"
        "m = load('nativecov', __import__('pathlib').Path(sys.argv[2]))\n"
        "kc = kcovx.open('linux'); kc.init_trace(512); area = kc.map_area(); kc.enable()\n"
        "words = memoryview(area).cast('B').cast('Q')\n"
        "words[0] = 0; m.branch(1); pc = words[1]\n"
        "kcovx.write_pcs_table(sys.argv[3])\n"
        "before = 'elftools' in sys.modules\n"
        "kcovx.symbolize(pc)\n"
        "print(before, 'elftools' in sys.modules)\n"
    )
    tests = str(Path(__file__).resolve().parent)
    r = python("-c", code, tests, str(ext_dir), str(tmp_path / "t.pcs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False True\n"


def test_kcovx_run_table_symbolizes_the_native_pcs_of_its_cover_file(
    tmp_path: Path, ext_dir: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from _native_support import load\n"
        "m = load('nativecov', Path(sys.argv[2]))\n"
        "m.branch(20)\n"
        "m.cmp_all(0x4B, 0)\n",
        encoding="utf-8",
    )
    tests = str(Path(__file__).resolve().parent)
    r = _cli("run", str(prog), tests, str(ext_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the summary counts native PCs apart (no percentage: native code has no block list)
    assert re.search(r"^ +[1-9][0-9]* native PCs in 1 native object", r.stderr, re.M), r.stderr
    table = pcs.read_pcs_table(tmp_path / "kcovx.pcs")
    assert str(built_path(MODULE, ext_dir)) in {o.path for o in table.objects}
    r = _cli("symbolize", "--functions", "--cover", "kcovx.cover", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    second = r.stdout.splitlines()[1::2]
    source = str(ext_dir / "nativecov.c")
    where = {(s.split(":")[0], s.split(" ")[-1]) for s in second}
    assert {(source, "branch"), (source, "cmp_all"), (str(prog), "<module>")} <= where
    lines = {int(s.split(":")[1].split(".")[0]) for s in second if s.startswith(source)}
    assert {line_of("branch_big"), line_of("c1"), line_of("v8")} <= lines
