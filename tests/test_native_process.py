"""Native code recorded by kcovx's runtime across threads and processes (README "Native code"):
the gvisor profile's covered set fed by several threads without the GIL while the owner
flushes, pthreads from C counting there (gVisor's coverage is global), PCs identical in two
processes with different load addresses, import order (the extension before kcovx, or with no
device at all), and clang's trace-pc-guard pair driven by hand (tests/native/guardcov.c, built
without instrumentation: no clang here).

Expected PCs come from the built objects' disassembly (_native_support.hook_sites), as in
test_native_trace.py; a reference trace recorded with a linux-profile device in this process is
what the gvisor batches and the other processes are compared with.  Devices are enabled by the
main thread and cleaned up by the ``devices`` fixture; subprocesses are bounded.
"""

from __future__ import annotations

import _ctypes
import ctypes
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices, python
from _native_support import NATIVE_DIR, NATIVECOV, Built, build_id, built, load

import kcovx
import kcovx.sancov
from kcovx import KCOV_TRACE_CMP

SIZE = 1 << 16  # words: a multiple of 512, as gvisor wants


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return built(tmp_path_factory, "nativecov", NATIVECOV)


@pytest.fixture(scope="module")
def gc(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return built(tmp_path_factory, "guardcov", NATIVE_DIR / "guardcov.c", instrument=False)


def pc(b: Built, offset: int) -> int:
    return kcovx.sancov.native_unit(b.build_id) << 32 | offset


def pcs_of(b: Built, func: str) -> set[int]:
    return {pc(b, o) for o in b.pcs(func)}


def linux_trace(devices: Devices, fn: object, mode: int = kcovx.KCOV_TRACE_PC) -> list[int]:
    """What fn() records on a fresh linux device of the main thread (disabled afterwards)."""
    dev, w = devices.enabled("linux", 4096, mode)
    w[0] = 0
    fn()  # type: ignore[operator]
    n = int(w[0]) * (4 if mode == KCOV_TRACE_CMP else 1)
    out = [int(x) for x in w[1 : 1 + n]]
    dev.disable()
    return out


def first_hits(trace: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for p in trace:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def flushed(dev: kcovx.Device, v: np.ndarray) -> list[int]:
    """One gvisor task-work batch: reset the count, flush, read what arrived."""
    v[0] = 0
    dev.flush()
    return [int(x) for x in v[1 : 1 + int(v[0])]]


# ---------------------------------------------------------------------------------------------
# gvisor: the covered set


def test_gvisor_batch_is_first_hit_order_once_each(devices: Devices, nc: Built) -> None:
    ref = linux_trace(devices, lambda: (nc.module.picks_nogil(30), nc.module.loop(4)))
    assert len(ref) > len(set(ref))  # repeats there ...
    dev, v = devices.enabled("gvisor", SIZE)
    flushed(dev, v)
    nc.module.picks_nogil(30)
    nc.module.loop(4)
    assert flushed(dev, v) == first_hits(ref)  # ... once each here, in first-hit order
    assert flushed(dev, v) == []  # nothing new
    nc.module.loop(4)  # a new period: covered again, recorded again
    assert flushed(dev, v) == first_hits(linux_trace_only(ref, nc, "loop", "py_loop"))


def linux_trace_only(trace: list[int], b: Built, *funcs: str) -> list[int]:
    keep = set().union(*(pcs_of(b, f) for f in funcs))
    return [p for p in trace if p in keep]


def test_gvisor_threads_without_gil_while_owner_flushes(devices: Devices, nc: Built) -> None:
    ref = first_hits(linux_trace(devices, lambda: nc.module.picks_nogil(30)))
    assert pcs_of(nc, "pick") <= set(ref)  # both arms of pick() are in the reference
    dropped = kcovx._area._native_dropped()
    dev, v = devices.enabled("gvisor", SIZE)
    flushed(dev, v)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                nc.module.picks_nogil(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, name=f"native-{i}") for i in range(4)]
    for t in threads:
        t.start()
    periods: list[list[int]] = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            periods.append(flushed(dev, v))
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    periods.append(flushed(dev, v))  # what the threads hit after the last flush above
    allowed = set(ref)
    for batch in periods:
        assert len(batch) == len(set(batch)), "a PC twice in one period"
        assert set(batch) <= allowed
    busy = [b for b in periods if b]
    assert len(busy) >= 10, f"only {len(busy)} of {len(periods)} periods saw a hit"
    assert set().union(*periods) == allowed
    assert kcovx._area._native_dropped() == dropped
    # after the threads: one call, one batch with each of its PCs once, in first-hit order
    assert flushed(dev, v) == []
    nc.module.picks_nogil(30)
    assert flushed(dev, v) == ref


def test_gvisor_two_copies_of_one_binary_push_each_pc_once(
    devices: Devices, nc: Built, tmp_path: Path
) -> None:
    # the same file loaded from two paths: one build-id, so one unit and the same PCs; the
    # covered set must still hold each PC once per period (regression: each copy had its own
    # marks, and a PC both copies hit was pushed twice)
    shutil.copy2(nc.path, tmp_path / nc.path.name)
    twin = load("nativecov", tmp_path)
    ref = first_hits(linux_trace(devices, lambda: nc.module.picks_nogil(30)))
    dev, v = devices.enabled("gvisor", SIZE)
    flushed(dev, v)
    for _ in range(3):  # a new period each time: both copies, each PC once
        nc.module.picks_nogil(30)
        twin.picks_nogil(30)
        assert flushed(dev, v) == ref
    twin.picks_nogil(30)  # the copy alone
    assert flushed(dev, v) == ref
    paths = {Path(o.path).resolve(): o for o in kcovx.sancov.objects()}
    a, b = paths[nc.path.resolve()], paths[(tmp_path / nc.path.name).resolve()]
    assert a.unit == b.unit and a.base != b.base


def test_gvisor_pthread_from_c_counts(devices: Devices, nc: Built) -> None:
    dev, v = devices.enabled("gvisor", SIZE)
    flushed(dev, v)
    nc.module.in_pthread(5)
    batch = flushed(dev, v)
    assert len(batch) == len(set(batch))
    # the pthread's code (pthread_body, loop(5), branch(5)): only that thread ran it
    body = pcs_of(nc, "pthread_body")
    assert body and body <= set(batch)
    loop = [p for p in batch if p in pcs_of(nc, "loop")]
    assert len(loop) == 3  # entry, body (once, however many iterations), exit
    assert pcs_of(nc, "branch") <= set(batch)
    assert set(batch) <= pcs_of(nc, "py_in_pthread") | body | pcs_of(nc, "loop") | pcs_of(
        nc, "branch"
    )


def test_gvisor_no_device_then_enable_starts_empty(devices: Devices, nc: Built) -> None:
    nc.module.picks_nogil(30)  # no device: runs, records nowhere
    nc.module.in_pthread(3)
    dev = devices.open("gvisor")
    dev.init_trace(SIZE)
    v = dev.mmap()
    nc.module.picks_nogil(30)  # initialised, not enabled: still nothing
    dev.enable()
    assert flushed(dev, v) == []
    nc.module.pick(0)
    got = flushed(dev, v)
    assert pcs_of(nc, "pick") & set(got)
    assert set(got) <= pcs_of(nc, "pick") | pcs_of(nc, "py_pick")


_FORK_STRESS = """\
import json, os, sys, threading, warnings
warnings.simplefilter("ignore")  # fork with threads alive: that is the point here
sys.path.insert(0, sys.argv[1])
import nativecov, kcovx

def batch(dev, v):
    v[0] = 0
    dev.flush()
    return [int(x) for x in v[1 : 1 + int(v[0])]]

dev = kcovx.open("gvisor")
dev.init_trace(1 << 16)
v = dev.mmap()
dev.enable()
stop = threading.Event()

def hammer():
    while not stop.is_set():
        nativecov.picks_nogil(30)

threads = [threading.Thread(target=hammer) for _ in range(2)]
for t in threads:
    t.start()
children, parent_dups = [], 0
for _ in range(int(sys.argv[2])):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            d = kcovx.open("gvisor")
            d.init_trace(1 << 16)
            cv = d.mmap()
            d.enable()
            first = batch(d, cv)
            nativecov.picks_nogil(30)
            out = {"first": first, "got": batch(d, cv)}
        except BaseException as exc:
            out = {"error": repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    children.append(json.loads(data))
    got = batch(dev, v)
    parent_dups += len(got) - len(set(got))
stop.set()
for t in threads:
    t.join()
batch(dev, v)
nativecov.picks_nogil(30)
print(json.dumps({"children": children, "parent_dups": parent_dups, "final": batch(dev, v),
                  "dropped": kcovx._area._native_dropped()}))
"""


def test_gvisor_fork_while_native_threads_record(devices: Devices, nc: Built) -> None:
    # a fork child inherits the covered set mid-push (its pushers are gone): it must neither
    # report a stale word nor keep a PC marked covered that no period holds
    ref = first_hits(linux_trace(devices, lambda: nc.module.picks_nogil(30)))
    forks = 25
    proc = python("-c", _FORK_STRESS, str(nc.folder), str(forks))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["children"]) == forks
    for child in out["children"]:
        assert child == {"first": [], "got": ref}
    assert out["parent_dups"] == 0
    assert out["final"] == ref
    assert out["dropped"] == 0


# ---------------------------------------------------------------------------------------------
# Processes: identical PCs, import order


_SCRIPT = """\
import json, os, sys
sys.path.insert(0, sys.argv[1])
import nativecov
before = [nativecov.loop(3), nativecov.pick(0), nativecov.cmp_all(1, 2), nativecov.in_pthread(2)]
early = sorted(m for m in sys.modules if m == "kcovx" or m.startswith("kcovx."))
import kcovx, kcovx.sancov
from kcovx import KCOV_TRACE_CMP
dev = kcovx.open("linux")
dev.init_trace(4096)
w = dev.mmap()
dev.enable()
fresh = int(w[0])
nativecov.loop(3); nativecov.pick(20); nativecov.classify(17)
pcs = [int(x) for x in w[1 : 1 + int(w[0])]]
dev.disable()
dev.enable(KCOV_TRACE_CMP)
w[0] = 0
nativecov.cmp_all(0xFFEEDDCCBBAA9988, 0x0102030405060788); nativecov.classify(17)
cmp = [int(x) for x in w[1 : 1 + 4 * int(w[0])]]
dev.disable()
path = os.path.realpath(nativecov.__file__)
objs = [o for o in kcovx.sancov.objects() if os.path.realpath(o.path) == path]
rts = {l.split()[-1] for l in open("/proc/self/maps") if "libkcovx_rt" in l}
print(json.dumps({"early": early, "fresh": fresh, "pcs": pcs, "cmp": cmp,
                  "bases": [o.base for o in objs], "units": [o.unit for o in objs],
                  "runtimes": sorted(rts)}))
"""


def run_fresh(nc: Built) -> dict[str, object]:
    proc = python("-c", _SCRIPT, str(nc.folder))
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_pcs_identical_across_processes(devices: Devices, nc: Built) -> None:
    first, second = run_fresh(nc), run_fresh(nc)
    here_pcs = linux_trace(
        devices, lambda: (nc.module.loop(3), nc.module.pick(20), nc.module.classify(17))
    )
    here_cmp = linux_trace(
        devices,
        lambda: (nc.module.cmp_all(0xFFEEDDCCBBAA9988, 0x0102030405060788), nc.module.classify(17)),
        KCOV_TRACE_CMP,
    )
    assert len(here_pcs) > 10 and len(here_cmp) > 4 * 10
    assert first["pcs"] == second["pcs"] == here_pcs
    assert first["cmp"] == second["cmp"] == here_cmp
    unit = kcovx.sancov.native_unit(nc.build_id)
    assert first["units"] == second["units"] == [unit]
    bases = {b for run in (first, second) for b in run["bases"]}  # type: ignore[attr-defined]
    if aslr_on():
        assert len(bases) == 2, "the two processes loaded the extension at the same address"


def aslr_on() -> bool:
    """Whether this process's children get randomized load addresses."""
    knob = Path("/proc/sys/kernel/randomize_va_space")
    if not knob.exists() or knob.read_text().strip() == "0":
        return False
    personality = Path("/proc/self/personality")
    addr_no_randomize = 0x0040000
    return not (personality.exists() and int(personality.read_text(), 16) & addr_no_randomize)


def test_extension_imported_before_kcovx(nc: Built) -> None:
    out = run_fresh(nc)
    assert out["early"] == []  # the extension ran before kcovx was imported at all
    assert out["fresh"] == 0  # what ran before the enable recorded nothing
    assert isinstance(out["pcs"], list) and len(out["pcs"]) > 10
    assert isinstance(out["runtimes"], list) and len(out["runtimes"]) == 1  # one runtime
    assert Path(out["runtimes"][0]).resolve() == Path(kcovx.sancov.lib_path()).resolve()


# ---------------------------------------------------------------------------------------------
# trace-pc-guard, by hand


def test_pc_guard_init_numbers_guards(gc: Built) -> None:
    a = gc.module.init(0)
    b = gc.module.init(1)
    assert len(a) == len(b) == 8
    assert all(g != 0 for g in a + b)
    assert len(set(a + b)) == 16  # distinct across arrays too
    assert gc.module.init(0) == a  # an array already numbered is left alone


def test_pc_guard_records_caller_pc(devices: Devices, gc: Built) -> None:
    gc.module.init(0)
    site = pc(gc, gc.site("guard_hit", "trace_pc_guard"))
    assert site >> 63 == 1
    _, w = devices.enabled("linux", 512)
    w[0] = 0
    gc.module.hit(2)
    gc.module.hit(5)
    assert [int(x) for x in w[1 : 1 + int(w[0])]] == [site, site]
    assert any(o.unit == site >> 32 for o in kcovx.sancov.objects())
    gc.module.zero(2)
    w[0] = 0
    gc.module.hit(2)  # a zeroed guard: nothing
    assert int(w[0]) == 0
    gc.module.hit(3)  # the others still record
    assert [int(x) for x in w[1 : 1 + int(w[0])]] == [site]


def test_pc_guard_in_gvisor_profile(devices: Devices, gc: Built) -> None:
    gc.module.init(0)
    site = pc(gc, gc.site("guard_hit", "trace_pc_guard"))
    dev, v = devices.enabled("gvisor", SIZE)
    flushed(dev, v)
    gc.module.hit(4)
    gc.module.hit(6)
    assert flushed(dev, v) == [site]


# ---------------------------------------------------------------------------------------------
# Known limitation: the registry outlives dlclose


def _plain_lib(folder: Path, name: str, body: str) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src, out = folder / f"{name}.c", folder / f"lib{name}.so"
    src.write_text(body, encoding="utf-8")
    flags = kcovx.sancov.compile_args() + kcovx.sancov.link_args()
    subprocess.run(
        [cc, "-O2", "-fPIC", "-shared", *flags, str(src), "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_object_loaded_where_an_unloaded_one_was_gets_its_own_unit(
    devices: Devices, tmp_path: Path
) -> None:
    first = _plain_lib(tmp_path, "first", "int fa(int x) { return x > 3 ? x * 2 : x - 1; }\n")
    second = _plain_lib(
        tmp_path, "second", "int fb(int x) { if (x < 7) return x * 3; return x + 5; }\n"
    )
    _, w = devices.enabled("linux", 512)
    lib = ctypes.CDLL(str(first))
    w[0] = 0
    lib.fa(5)
    assert int(w[0]) > 0
    (reg,) = [o for o in kcovx._area._native_objects() if os.fsdecode(o[0]) == str(first)]
    lo, span = reg[3], reg[4]
    _ctypes.dlclose(lib._handle)  # type: ignore[attr-defined]
    del lib
    other = ctypes.CDLL(str(second))
    addr = ctypes.cast(other.fb, ctypes.c_void_p).value
    assert addr is not None
    if not 0 <= addr - lo < span:
        pytest.skip("the loader put the second object elsewhere: nothing to show")
    w[0] = 0
    other.fb(5)
    got = [int(x) for x in w[1 : 1 + int(w[0])]]
    assert got
    assert {p >> 32 for p in got} == {kcovx.sancov.native_unit(build_id(second))}
