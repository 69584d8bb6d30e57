"""Real consumers of kcovx's two C surfaces, built at test time and driven from Python.

Owns: building tests/consumer/ (a Cython module that does ``cimport kcovx`` and a plain C module
that uses the capsule ``kcovx._area._C_API``) once per session into a temporary folder, against
the kcovx this interpreter imports (source tree with the in-place build on PYTHONPATH, or an
installed wheel), and asserting the effects each surface promises: appends land in the area,
clipping, whole-or-nothing comparison records, trace_pc/trace_cmp going where kcovx.trace_pc
goes, area_of refusing non-Areas, the capsule's name and ABI version, and kcovx.h's import
helper (kcovx_import_api / kcovx.import_api) refusing an incompatible kcovx with ImportError,
whether the capsule is the odd one out or the consumer was built against another kcovx.h.

Invariants: nothing is written into the source tree (the sources are copied to the scratch
folder first); every device a test enables is disabled by the same thread before it is closed,
so no test leaves a per-thread recording target or the gvisor pending set switched on.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _kcovx_support import Devices, in_thread, load_extension, run_build

import kcovx
from kcovx import _area, abi

CONSUMER_DIR = Path(__file__).resolve().parent / "consumer"
CONSUMER_FILES = ("setup.py", "cy_consumer.pyx", "c_consumer.c")
BUILD_TIMEOUT = 300  # seconds, for Cython + two C compiles
CAPSULE_NAME = "kcovx._area._C_API"
CMP8 = kcovx.KCOV_CMP_SIZE(3)
CAPSULE_AREA_TYPE = "kcovx._area.Area"  # what area_of says it expected
# The folder holding the kcovx this interpreter imports: consumers build against it.
KCOVX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kcovx.__file__)))


def _build(root: Path, kcovx_root: str = KCOVX_ROOT) -> Path:
    """Build both consumers into root/lib in a subprocess, against the kcovx package found in
    the folder kcovx_root (its kcovx.h and .pxd files)."""
    src, lib, tmp = root / "src", root / "lib", root / "tmp"
    src.mkdir()
    for name in CONSUMER_FILES:
        shutil.copy2(CONSUMER_DIR / name, src / name)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (kcovx_root, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "setup.py",
        "build_ext",
        "--build-lib",
        str(lib),
        "--build-temp",
        str(tmp),
    ]
    run_build("the consumers", cmd, src, env, BUILD_TIMEOUT)
    return lib


@pytest.fixture(scope="session")
def consumers(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Build both consumers in a subprocess and import them: .cy (cimport), .c (capsule)."""
    lib = _build(tmp_path_factory.mktemp("kcovx_consumers"))
    return SimpleNamespace(
        cy=load_extension("cy_consumer", lib),
        c=load_extension("c_consumer", lib),
        lib=lib,
        built_against=(lib / "built_against.txt").read_text(encoding="utf-8"),
    )


def words(area: kcovx.Area) -> np.ndarray:
    return np.frombuffer(area, dtype=np.uint64)


# --------------------------------------------------------------------------------------------
# Both surfaces: built against this kcovx, the capsule named and versioned.


def test_built_against_the_imported_kcovx(consumers: SimpleNamespace) -> None:
    assert consumers.built_against == os.path.dirname(os.path.abspath(kcovx.__file__))


def test_capsule_name_and_abi_version(consumers: SimpleNamespace) -> None:
    get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(
        ("PyCapsule_GetName", ctypes.pythonapi)
    )
    assert get_name(_area._C_API) == CAPSULE_NAME.encode()
    assert consumers.c.CAPSULE_NAME == consumers.cy.CAPSULE_NAME == CAPSULE_NAME
    assert abi.CAPSULE_NAME == _area.CAPSULE_NAME == CAPSULE_NAME
    abi_version, struct_size = consumers.c.api_info()
    assert abi_version == kcovx.ABI_VERSION == consumers.c.ABI_VERSION == consumers.cy.ABI_VERSION
    assert struct_size == consumers.c.STRUCT_SIZE  # same header on both sides
    assert consumers.cy.api_info() == (abi_version, struct_size)  # kcovx.import_api()
    assert struct_size == consumers.cy.STRUCT_SIZE


def test_abi_constants_are_the_headers(consumers: SimpleNamespace) -> None:
    """kcovx.abi's values are what a C extension compiled against kcovx.h sees."""
    c = consumers.c
    assert (abi.KCOV_TRACE_PC, abi.KCOV_TRACE_CMP) == (c.TRACE_PC, c.TRACE_CMP)
    assert (abi.KCOV_CMP_CONST, abi.KCOV_CMP_MASK) == (c.CMP_CONST, c.CMP_MASK)
    assert abi.KCOV_CMP_SIZE(2) == c.CMP_SIZE_2
    assert abi.KCOV_CMP_SIZE(3) | abi.KCOV_CMP_CONST == c.CMP_TYPE_MAX == _area.CMP_TYPE_MAX
    assert abi.KCOV_WORDS_PER_CMP == c.WORDS_PER_CMP
    modes = (c.MODE_DISABLED, c.MODE_INIT, c.MODE_TRACE_PC, c.MODE_TRACE_CMP, c.MODE_UNIQUE_PC)
    assert tuple(abi.Mode) == modes
    assert _area.MAX_WORDS == c.MAX_WORDS


def _fake_api(abi_version: int, struct_size: int, slots_of: int) -> ctypes.Structure:
    """A kcovx_api_t-shaped struct: the two header words, then slots_of bytes of NULL slots."""
    slots = (slots_of - 8) // ctypes.sizeof(ctypes.c_void_p)
    fields = [("abi_version", ctypes.c_uint32), ("struct_size", ctypes.c_uint32)]
    fields += [(f"fn{i}", ctypes.c_void_p) for i in range(slots)]
    fake_api = type("FakeApi", (ctypes.Structure,), {"_fields_": fields})
    return fake_api(abi_version, struct_size)


# (abi_version delta, struct_size delta, capsule name, the error the import must raise)
_INCOMPATIBLE = {
    "newer ABI": (1, 0, CAPSULE_NAME, ImportError),
    "struct without the last slot": (0, -8, CAPSULE_NAME, ImportError),
    "another capsule": (0, 0, "kcovx._area._C_API_v0", (AttributeError, ValueError)),
}


def _copy_built(consumers: SimpleNamespace, module: str, folder: Path) -> Path:
    """A copy of a built consumer at another path, so its module init runs again."""
    folder.mkdir()
    for so in consumers.lib.glob(f"{module}.*"):
        shutil.copy2(so, folder / so.name)
    return folder


@pytest.mark.parametrize("module", ["c_consumer", "cy_consumer"])
@pytest.mark.parametrize("case", list(_INCOMPATIBLE))
def test_consumer_refuses_an_incompatible_capsule(
    consumers: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    module: str,
) -> None:
    abi_delta, size_delta, name, error = _INCOMPATIBLE[case]
    size = consumers.c.STRUCT_SIZE
    fake = _fake_api(kcovx.ABI_VERSION + abi_delta, size + size_delta, size)
    c_name = ctypes.create_string_buffer(name.encode())
    capsule_new = ctypes.PYFUNCTYPE(
        ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p
    )(("PyCapsule_New", ctypes.pythonapi))
    monkeypatch.setattr(_area, "_C_API", capsule_new(ctypes.addressof(fake), c_name, None))
    copy = _copy_built(consumers, module, tmp_path / "copy")
    with pytest.raises(error, match=r"kcovx|PyCapsule") as info:
        load_extension(module, copy)
    if error is ImportError:
        assert "rebuild it against the installed kcovx" in str(info.value)


# A consumer built against another kcovx.h than the kcovx it then imports: (pattern in kcovx.h,
# its replacement, what the ImportError must say).  The build itself succeeds; the import helper
# is what refuses.
_OTHER_HEADERS = {
    "newer ABI version": (
        r"#define KCOVX_ABI_VERSION (\d+)u",
        lambda m: f"#define KCOVX_ABI_VERSION {int(m[1]) + 1}u",
        r"has ABI version \d+, this extension was built against version \d+",
    ),
    "larger API struct": (
        r"(kcovx_area_t \*\(\*area_of\)\(kcovx_pyobject_t \*obj\);)",
        lambda m: m[1] + "\n    void (*slot_from_the_future)(void);",
        r"API struct is \d+ bytes, this extension was built for \d+",
    ),
}


@pytest.fixture(scope="session")
def consumers_of_other_headers(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Both consumers built against a copy of this kcovx whose kcovx.h is doctored as each case
    of _OTHER_HEADERS says (a whole package copy: Cython puts the folder of the .pxd files it
    cimports first on the include path): case -> lib."""
    here = Path(kcovx.__file__).resolve().parent
    header = (here / "kcovx.h").read_text(encoding="utf-8")
    libs = {}
    for case, (pattern, replace, _) in _OTHER_HEADERS.items():
        root = tmp_path_factory.mktemp("kcovx_other_header")
        doctored, n = re.subn(pattern, replace, header)
        assert n == 1, f"{case}: kcovx.h no longer matches {pattern!r}"
        copy = root / "pkg" / "kcovx"
        shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
        (copy / "kcovx.h").write_text(doctored, encoding="utf-8")
        libs[case] = _build(root, str(root / "pkg"))
        assert (libs[case] / "built_against.txt").read_text(encoding="utf-8") == str(copy)
    return libs


@pytest.mark.parametrize("module", ["c_consumer", "cy_consumer"])
@pytest.mark.parametrize("case", list(_OTHER_HEADERS))
def test_consumer_built_against_another_abi_gets_import_error(
    consumers_of_other_headers: dict[str, Path], case: str, module: str
) -> None:
    message = _OTHER_HEADERS[case][2] + r": rebuild it against the installed kcovx"
    with pytest.raises(ImportError, match=message):
        load_extension(module, consumers_of_other_headers[case])


# --------------------------------------------------------------------------------------------
# cimport kcovx: inline appends on `area.c`, in nogil loops.


def test_cimport_appends_land_in_the_linux_device_area(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    cy = consumers.cy
    kc = devices.open("linux")
    kc.init_trace(512)
    cover = kc.mmap()
    kc.enable(kcovx.KCOV_TRACE_PC)
    area = kc.area
    assert isinstance(area, kcovx.Area)
    assert cy.area_size(area) == 512

    assert cy.append_range(area, 0x1000, 10) == 10
    kcovx.trace_pc(0x2000)  # the Python entry point writes to the same area, after them
    assert cy.append_batch(area, np.array([0x3000, 0x3001], dtype=np.uint64)) == 2
    assert cy.append_batch(area, np.array([], dtype=np.uint64)) == 0
    expected = [*range(0x1000, 0x100A), 0x2000, 0x3000, 0x3001]
    assert cover[0] == cy.load_count(area) == len(expected)
    assert cover[1 : 1 + len(expected)].tolist() == expected

    cover[0] = 0  # user code resets the count; the next append honours it
    assert cy.append_range(area, 0x4000, 1) == 1
    assert cover[0] == 1 and cover[1] == 0x4000
    cy.publish_count(area, 0)
    assert cover[0] == 0


def test_cimport_clips_at_size_minus_one(consumers: SimpleNamespace) -> None:
    cy = consumers.cy
    area = kcovx.Area(8)
    w = words(area)
    assert cy.append_range(area, 100, 20) == 7
    assert cy.load_count(area) == 7
    assert w.tolist() == [7, *range(100, 107)]
    assert cy.append_batch(area, np.arange(5, dtype=np.uint64)) == 0
    cy.publish_count(area, 5)
    assert cy.append_batch(area, np.arange(5, dtype=np.uint64)) == 2
    assert w.tolist() == [7, *range(100, 105), 0, 1]


def test_cimport_cmp_records_are_whole_or_nothing(consumers: SimpleNamespace) -> None:
    cy = consumers.cy
    area = kcovx.Area(12)  # room for 2 records (words 1..8); words 9..11 are too few
    w = words(area)
    w[9:] = 0xDEAD
    assert cy.append_cmps(area, 5, 0x500) == 2
    assert cy.append_cmp(area, CMP8, 1, 2, 3) is False
    assert w[0] == cy.load_count(area) == 2
    mask = 2**64 - 1
    assert w[1:9].tolist() == [CMP8, 0, mask, 0x500, CMP8, 1, mask - 1, 0x501]
    assert w[9:].tolist() == [0xDEAD] * 3


def test_cimport_refuses_what_is_not_an_area(consumers: SimpleNamespace) -> None:
    for obj in (None, object(), np.zeros(8, dtype=np.uint64)):
        with pytest.raises(TypeError):
            consumers.cy.append_range(obj, 1, 1)
        with pytest.raises(TypeError):
            consumers.cy.load_count(obj)


# --------------------------------------------------------------------------------------------
# The capsule from plain C: area_of and the appends.


def test_capsule_appends_land_in_the_linux_device_area(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    c, cy = consumers.c, consumers.cy
    kc = devices.open("linux")
    kc.init_trace(512)
    cover = kc.mmap()
    kc.enable(kcovx.KCOV_TRACE_PC)
    area = kc.area
    assert c.area_size(area) == 512
    assert c.append_pc(area, 0x10) is True
    assert cy.append_range(area, 0x20, 2) == 2  # both surfaces on one area, in order
    assert c.append_pcs(area, [0x30, 0x31, 0x32]) == 3
    assert cy.capsule_append_pc(area, 0x40) is True  # the capsule from Cython (import_api)
    assert c.load_count(area) == 7
    assert cover[:8].tolist() == [7, 0x10, 0x20, 0x21, 0x30, 0x31, 0x32, 0x40]


def test_capsule_clips_at_size_minus_one(consumers: SimpleNamespace) -> None:
    c = consumers.c
    area = kcovx.Area(8)
    w = words(area)
    assert [c.append_pc(area, 0x100 + i) for i in range(9)] == [True] * 7 + [False] * 2
    assert w.tolist() == [7, *range(0x100, 0x107)]
    assert c.append_pcs(area, [1, 2, 3]) == 0
    w[0] = 4
    assert c.append_pcs(area, [1, 2, 3, 4, 5]) == 3
    assert w.tolist() == [7, 0x100, 0x101, 0x102, 0x103, 1, 2, 3]
    assert c.append_pcs(area, []) == 0
    w[0] = 6  # the last free word: exactly one more fits
    assert c.append_pc(area, 9) is True and c.append_pc(area, 10) is False
    assert w.tolist() == [7, 0x100, 0x101, 0x102, 0x103, 1, 2, 9]


def test_capsule_cmp_records_are_whole_or_nothing(consumers: SimpleNamespace) -> None:
    c = consumers.c
    for size, fits in ((4, 0), (5, 1), (8, 1), (9, 2), (12, 2)):
        area = kcovx.Area(size)
        w = words(area)
        w[1:] = 0xDEAD
        results = [c.append_cmp(area, CMP8 | 1, i, i + 1, 0x700 + i) for i in range(fits + 1)]
        assert results == [True] * fits + [False], size
        assert w[0] == fits
        for i in range(fits):
            assert w[1 + 4 * i : 5 + 4 * i].tolist() == [CMP8 | 1, i, i + 1, 0x700 + i]
        assert (w[1 + 4 * fits :] == 0xDEAD).all(), size  # the clipped record wrote nothing


def test_area_of_refuses_what_is_not_an_area(consumers: SimpleNamespace, devices: Devices) -> None:
    c = consumers.c
    not_areas = (None, object(), 1, bytearray(64), np.zeros(8, np.uint64), devices.open("linux"))
    for obj in not_areas:
        with pytest.raises(TypeError, match=re.escape(CAPSULE_AREA_TYPE)):
            c.area_size(obj)
        with pytest.raises(TypeError, match=re.escape(CAPSULE_AREA_TYPE)):
            c.append_pc(obj, 1)
        with pytest.raises(TypeError, match=re.escape(CAPSULE_AREA_TYPE)):
            c.append_cmp(obj, CMP8, 1, 2, 3)


# --------------------------------------------------------------------------------------------
# The capsule's trace_pc/trace_cmp: what kcovx.trace_pc/trace_cmp do.


def test_capsule_trace_pc_records_into_the_calling_threads_linux_device(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    c = consumers.c
    kc = devices.open("linux")
    kc.init_trace(512)
    cover = kc.mmap()
    c.trace_pc(0x1)  # not enabled yet: nowhere to go
    kc.enable(kcovx.KCOV_TRACE_PC)
    c.trace_pc(0x11)
    kcovx.trace_pc(0x12)
    c.trace_pc(0x11)  # linux keeps duplicates
    in_thread(c.trace_pc, 0x99)  # another thread has no device: not recorded here

    def other_thread_with_its_own_device() -> None:
        with kcovx.open("linux") as own:
            own.init_trace(512)
            own_cover = own.mmap()
            own.enable(kcovx.KCOV_TRACE_PC)
            c.trace_pc(0x77)
            own.disable()
            assert own_cover[:2].tolist() == [1, 0x77]

    in_thread(other_thread_with_its_own_device)
    assert cover[:4].tolist() == [3, 0x11, 0x12, 0x11]
    kc.disable()
    c.trace_pc(0x13)
    assert cover[0] == 3


def test_capsule_trace_pc_clips_like_the_kernel(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    kc = devices.open("linux")
    kc.init_trace(512)
    cover = kc.mmap()
    kc.enable(kcovx.KCOV_TRACE_PC)
    for pc in range(600):
        consumers.c.trace_pc(pc)
    assert cover[0] == 511
    assert cover[511] == 510


def test_capsule_trace_cmp_records_into_the_calling_threads_linux_device(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    c = consumers.c
    kc = devices.open("linux")
    kc.init_trace(512)
    cover = kc.mmap()
    kc.enable(kcovx.KCOV_TRACE_CMP)
    c.trace_cmp(CMP8 | kcovx.KCOV_CMP_CONST, 5, 6, 0x55)
    kcovx.trace_cmp(CMP8, 7, 8, 0x56)
    c.trace_pc(0x1)  # a CMP device does not take PCs
    in_thread(c.trace_cmp, CMP8, 1, 1, 0x99)  # nor another thread's comparisons
    with pytest.raises(ValueError, match=re.escape("0..7")):
        c.trace_cmp(8, 0, 0, 0)
    assert cover[:9].tolist() == [2, CMP8 | 1, 5, 6, 0x55, CMP8, 7, 8, 0x56]


def test_capsule_trace_pc_reaches_a_gvisor_device_after_flush(
    consumers: SimpleNamespace, devices: Devices
) -> None:
    c = consumers.c
    kc = devices.open("gvisor")
    kc.init_trace(512)
    cover = kc.mmap()
    kc.enable(kcovx.KCOV_TRACE_PC)
    for pc in (0x10, 0x20, 0x10, 0x30):
        c.trace_pc(pc)
    in_thread(c.trace_pc, 0x40)  # gvisor coverage is global: any thread counts
    assert cover[0] == 0  # pending until the owner's task work runs
    kc.flush()
    assert cover[:5].tolist() == [4, 0x10, 0x20, 0x30, 0x40]  # once each, first-covered order
    c.trace_pc(0x20)
    kc.flush()
    assert cover[0] == 5 and cover[5] == 0x20  # covered again since the last task work
