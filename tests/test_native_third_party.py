"""Real C extensions nobody here wrote, built from their PyPI sdists with kcovx's flags.

simplejson's ``_speedups`` and msgpack's ``_cmsgpack`` are downloaded (pinned sdists; skipped,
saying why, when PyPI cannot be reached) and built once per session the way a user would:
``CFLAGS="<compile_args>" LDFLAGS="<link_args>" pip install --no-binary :all: --no-deps
--no-build-isolation --target DIR SDIST``.  The tests check that the build really instrumented
the C code (the object calls ``__sanitizer_cov_trace_pc``, needs ``libkcovx_rt.so``, and is the
module the package uses: simplejson silently falls back to pure Python when its C build fails),
then record per input in the linux profile (reset word 0, run, read words 1..count) and show
that inputs taking different paths through the C code give different native PCs, that the
same input gives the same ordered trace again (in this process and in another one), and that
every native PC belongs to the extension's unit as kcovx.sancov.objects() reports it, and that
in KCOV_TRACE_CMP mode msgpack's comparisons carry each input's type byte.  Last,
examples/native_fuzz.py runs briefly over each build (fixed seed and exec count) and must report
Python and native blocks and a corpus grown beyond its seeds.

The packages are imported from the build folders into this process (sys.path is restored
after the import; the modules stay loaded).  The device is opened, enabled and closed by the
test's own thread.  Marked slow: the two builds take several seconds (measured: about 2 s for
simplejson and 3 s for msgpack on an idle reference machine; the download and both builds
13-30 s when its two cores are shared).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _native_support import download_sdist, elf_facts, pip_build_sdist, sancov_build_env

import kcovx
from kcovx import sancov

pytestmark = pytest.mark.slow

SIMPLEJSON = "simplejson==4.3.0"
MSGPACK = "msgpack==1.2.4"
AREA_WORDS = 1 << 18
Tracer = Callable[[Callable[[], object]], np.ndarray]  # fn -> its native trace


@dataclass(frozen=True)
class Built:
    """One package built with kcovx's flags: where it is, its extension, the imported modules."""

    folder: Path
    extension: Path  # the built .so
    package: ModuleType
    native: ModuleType  # the extension module, as the package imported it


def _import_from(folder: Path, package: str, native: str) -> tuple[ModuleType, ModuleType]:
    for name in list(sys.modules):
        if name == package or name.startswith(f"{package}."):
            pytest.fail(f"{name} is already imported from {sys.modules[name]!r}")
    sys.path.insert(0, str(folder))
    try:
        pkg = importlib.import_module(package)
        ext = importlib.import_module(native)
    finally:
        sys.path.remove(str(folder))
    return pkg, ext


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    """Both packages downloaded and built once per session into a scratch folder."""
    root = tmp_path_factory.mktemp("native-third-party")
    out: dict[str, Built] = {}
    for spec, package, native in (
        (SIMPLEJSON, "simplejson", "simplejson._speedups"),
        (MSGPACK, "msgpack", "msgpack._cmsgpack"),
    ):
        sdist = download_sdist(spec, root / "sdists")
        folder = pip_build_sdist(
            sdist, root / package, sancov_build_env(True, REQUIRE_SPEEDUPS="1")
        )
        pkg, ext = _import_from(folder, package, native)
        assert ext.__file__ is not None
        out[package] = Built(folder, Path(ext.__file__), pkg, ext)
    yield out


def _recorder() -> tuple[kcovx.Device, np.ndarray]:
    dev = kcovx.Device(profile="linux")
    dev.init_trace(AREA_WORDS)
    area = dev.mmap()
    dev.enable(kcovx.KCOV_TRACE_PC)
    return dev, area


@pytest.fixture
def trace() -> Iterator[Tracer]:
    """``trace(fn)``: fn's ordered native trace, recorded by this thread in the linux profile."""
    dev, area = _recorder()

    def run(fn: Callable[[], object]) -> np.ndarray:
        area[0] = 0
        fn()
        n = int(area[0])
        assert n < AREA_WORDS - 1, "the area filled up: the trace is clipped"
        pcs = np.array(area[1 : n + 1], dtype=np.uint64)
        native = pcs[(pcs >> np.uint64(63)) == 1]
        assert len(native) == n, "only native code is instrumented here"
        return native

    try:
        yield run
    finally:
        dev.disable()
        dev.close()


# --- the builds ----------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["simplejson", "msgpack"])
def test_extension_is_instrumented_and_used(built: dict[str, Built], package: str) -> None:
    b = built[package]
    needed, undefined, build_id = elf_facts(b.extension)
    assert sancov.LIB_NAME in needed, needed
    assert "__sanitizer_cov_trace_pc" in undefined
    assert "__sanitizer_cov_trace_const_cmp8" in undefined  # compile_args() has trace-cmp
    assert build_id, "gcc's default link records a GNU build-id"
    assert b.extension.is_relative_to(b.folder)
    if package == "simplejson":
        # The fallback to pure Python is silent; the C scanner and scanstring must be in use.
        assert b.package.decoder.c_scanstring is b.native.scanstring
        assert b.package.scanner.make_scanner is b.native.make_scanner
        assert b.package._default_decoder.scan_once.__class__.__module__ == b.native.__name__
    else:
        assert b.package.Packer is b.native.Packer
        assert b.package.unpackb is b.native.unpackb


# --- per-input native coverage -------------------------------------------------------------


def _call(trace: Tracer, fn: Callable[[], object]) -> tuple[np.ndarray, object]:
    """fn's native trace and its result."""
    box: list[object] = []
    pcs = trace(lambda: box.append(fn()))
    return pcs, box[0]


def _distinct(pcs: np.ndarray) -> set[int]:
    return set(pcs.tolist())


def _check_paths_differ(traces: dict[str, np.ndarray]) -> None:
    sets = {k: _distinct(v) for k, v in traces.items()}
    for k, s in sets.items():
        assert s, f"{k}: no native PCs"
        others = set().union(*(o for j, o in sets.items() if j != k))
        assert s - others, f"{k}: no native PC that the other inputs do not also reach"


def test_simplejson_inputs_take_different_native_paths(
    built: dict[str, Built], trace: Tracer
) -> None:
    loads = built["simplejson"].package.loads
    docs = {
        "object, int, float, string": '{"a": [1, 2.5, "x"]}',
        "string with a \\u escape": '"\\u00e9"',
        "true and null": "[true, null]",
    }
    expected = {k: json.loads(v) for k, v in docs.items()}
    traces = {}
    for k, doc in docs.items():
        traces[k], got = _call(trace, functools.partial(loads, doc))
        assert got == expected[k]
    _check_paths_differ(traces)
    # A longer document of the same shape walks the same code more often, and then some.
    longer = trace(lambda: loads('{"a": [1, 2.5, "x"], "b": [3, 4.5, "y"]}'))
    assert len(longer) > len(traces["object, int, float, string"])
    assert _distinct(longer) > _distinct(traces["object, int, float, string"])


def test_msgpack_inputs_take_different_native_paths(built: dict[str, Built], trace: Tracer) -> None:
    msgpack = built["msgpack"].package
    # Packing ints of different widths: each takes its own branch of the packer's int ladder.
    ints = {"fixint": 1, "uint8": 200, "uint16": 60_000, "uint32": 1 << 31, "uint64": 1 << 40}
    packed = {}
    traces = {}
    for k, v in ints.items():
        traces[k], packed[k] = _call(trace, functools.partial(msgpack.packb, v))
    assert [len(p) for p in packed.values()] == [1, 2, 3, 5, 9]
    _check_paths_differ(traces)
    # Unpacking a map and an array.
    docs = {"map": msgpack.packb({"k": 1}), "array": msgpack.packb([1, 2])}
    traces = {k: trace(functools.partial(msgpack.unpackb, d)) for k, d in docs.items()}
    _check_paths_differ(traces)


def test_same_input_gives_the_same_native_trace(built: dict[str, Built], trace: Tracer) -> None:
    loads = built["simplejson"].package.loads
    msgpack = built["msgpack"].package
    blob = msgpack.packb({"k": [1, 2.5, "s", None, True, 1 << 40]})
    for fn in (
        lambda: loads('{"a": [1, 2.5, "x"], "\\u00e9": [true, null]}'),
        lambda: msgpack.unpackb(blob),
        lambda: msgpack.packb({"k": [1, 2.5, "s", None, True, 1 << 40]}),
    ):
        first = trace(fn)
        again = trace(fn)
        assert len(first) > 0
        np.testing.assert_array_equal(first, again)


def test_native_pcs_belong_to_the_extensions_unit(built: dict[str, Built], trace: Tracer) -> None:
    runs = {
        "simplejson": lambda: built["simplejson"].package.loads('[1, "a", {"b": null}]'),
        "msgpack": lambda: built["msgpack"].package.unpackb(b"\x92\x01\xa1a"),
    }
    for package, fn in runs.items():
        pcs = trace(fn)
        assert all(sancov.is_native(pc) for pc in pcs.tolist())
        ext = built[package].extension
        (obj,) = [o for o in sancov.objects() if os.path.realpath(o.path) == str(ext.resolve())]
        _, _, build_id = elf_facts(ext)
        assert obj.build_id == build_id.hex()
        assert obj.unit == sancov.native_unit(build_id, str(ext))
        units = set((pcs >> np.uint64(32)).tolist())
        assert units == {obj.unit}, [hex(u) for u in units]
        # The offsets are call sites inside the object's file.
        offsets = (pcs & np.uint64(0xFFFFFFFF)).tolist()
        assert min(offsets) > 0 and max(offsets) < ext.stat().st_size


_CHILD = """\
import json, sys
import kcovx, simplejson, simplejson._speedups
assert simplejson._speedups.__file__.startswith(sys.argv[1])
dev = kcovx.Device(profile="linux")
dev.init_trace(1 << 16)
area = dev.mmap()
dev.enable(kcovx.KCOV_TRACE_PC)
area[0] = 0
simplejson.loads(sys.argv[2])
n = int(area[0])
print(json.dumps([int(pc) for pc in area[1 : n + 1]]))
"""


def test_native_trace_is_the_same_in_another_process(
    built: dict[str, Built], trace: Tracer
) -> None:
    doc = '{"a": [1, 2.5, "x"], "b": "\\u00e9"}'
    here = trace(lambda: built["simplejson"].package.loads(doc))
    folder = str(built["simplejson"].folder)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH")) if p)
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), folder, doc],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    there = json.loads(r.stdout)
    assert there == here.tolist()


# --- examples/native_fuzz.py ---------------------------------------------------------------

NATIVE_FUZZ = Path(__file__).resolve().parent.parent / "examples" / "native_fuzz.py"
DONE = re.compile(
    r"^done: (\d+) execs, [\d,]+ execs/s, python blocks (\d+), native blocks (\d+), "
    r"corpus (\d+) \(from (\d+) seeds\)",
    re.M,
)


@pytest.mark.parametrize("package", ["simplejson", "msgpack"])
def test_native_fuzz_example_finds_python_and_native_blocks(
    built: dict[str, Built], package: str
) -> None:
    folder = built[package].folder
    cmd = [sys.executable, str(NATIVE_FUZZ), "--target", package, "--package-dir", str(folder)]
    r = subprocess.run(
        [*cmd, "--seed", "7", "--execs", "4096"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    m = DONE.search(r.stdout)
    assert m, r.stdout + r.stderr[-2000:]
    execs, python, native, corpus, seeds = map(int, m.groups())
    assert execs >= 4096
    assert python > 0 and native > 0, r.stdout
    assert corpus > seeds, r.stdout  # the loop kept inputs of its own
    ext = built[package].extension
    unit = sancov.native_unit(elf_facts(ext)[2], str(ext))
    assert f"{unit:#x} {ext.name}" in r.stdout
    # Progress lines on stderr carry both counts too.
    assert re.search(r"python blocks \d+  native blocks \d+  corpus \d+", r.stderr)


def test_msgpack_cmp_records_carry_the_input_bytes(built: dict[str, Built]) -> None:
    """KCOV_TRACE_CMP over real code: the unpacker compares each input's type byte against
    its constants, so the variable operands (arg2 of const records) carry that byte."""
    msgpack = built["msgpack"].package
    ext = built["msgpack"].extension
    unit = sancov.native_unit(elf_facts(ext)[2], str(ext))
    dev = kcovx.Device(profile="linux")
    dev.init_trace(1 << 16)
    area = dev.mmap()
    dev.enable(kcovx.KCOV_TRACE_CMP)
    try:
        records = {}
        for blob in (b"\xcc\x05", b"\xcd\x01\x00", b"\x92\x01\x02"):
            area[0] = 0
            msgpack.unpackb(blob)
            n = int(area[0])
            assert n > 0 and 1 + 4 * n <= len(area)
            records[blob[0]] = np.array(area[1 : 1 + 4 * n], dtype=np.uint64).reshape(n, 4)
    finally:
        dev.disable()
        dev.close()
    for byte, recs in records.items():
        kinds, arg1, arg2, pcs = (recs[:, i] for i in range(4))
        assert set((pcs >> np.uint64(32)).tolist()) == {unit}
        assert ((kinds & ~np.uint64(kcovx.KCOV_CMP_CONST | kcovx.KCOV_CMP_MASK)) == 0).all()
        const = (kinds & np.uint64(kcovx.KCOV_CMP_CONST)) != 0
        assert const.any() and (~const).any()
        variables = set(arg2[const].tolist())
        assert byte in variables, sorted(variables)
        assert not (variables & (records.keys() - {byte})), sorted(variables)
        # The constants it was compared with bracket it (the unpacker's type-byte ranges).
        bounds = arg1[const & (arg2 == np.uint64(byte))].tolist()
        assert min(bounds) < byte < max(bounds), [hex(b) for b in bounds]
