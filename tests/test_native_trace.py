"""Native code recorded by kcovx's sanitizer-coverage runtime, linux profile (README "Native
code"): the ordered TRACE_PC trace with repeats, the TRACE_CMP records field by field (each
width, constants and variables, switch), one kind per mode, clipping at the area's end and
user-written counts, per-thread isolation (another Python thread, a pthread from C), fork, and
Python probes interleaving with native hooks in one trace.

The test extension tests/native/nativecov.c is built once per session (_native_support.built)
with gcc and kcovx.sancov's flags.  Expected PCs are not hard-coded: each is read from the
built object's disassembly (the offset after a hook's call site, _native_support.hook_sites)
and put under the unit computed from the build-id ``readelf -n`` reports, so a test fails if
the runtime records another offset, unit, type or operand.  Every device here is enabled by
the main thread and disabled by the ``devices`` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices, in_child
from _native_support import NATIVECOV, Built, built

import kcovx
import kcovx.sancov
from kcovx import KCOV_CMP_CONST, KCOV_CMP_SIZE, KCOV_TRACE_CMP

SIZE = 4096
U64 = 2**64 - 1
SENTINEL = 0x5E_17_1E_15_0000_0000


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return built(tmp_path_factory, "nativecov", NATIVECOV)


def unit_of(nc: Built) -> int:
    return kcovx.sancov.native_unit(nc.build_id)


def pc(nc: Built, offset: int) -> int:
    return unit_of(nc) << 32 | offset


def pcs_of(nc: Built, func: str, hook: str = "trace_pc") -> list[int]:
    return [pc(nc, o) for o in nc.pcs(func, hook)]


def traced(w: np.ndarray, fn: Callable[[], object]) -> list[int]:
    """The PCs fn appends to the TRACE_PC area w (reset first)."""
    w[0] = 0
    fn()
    return [int(x) for x in w[1 : 1 + int(w[0])]]


def records(w: np.ndarray, fn: Callable[[], object]) -> list[tuple[int, int, int, int]]:
    """The CMP records fn appends to the TRACE_CMP area w (reset first)."""
    w[0] = 0
    fn()
    n = int(w[0])
    flat = [int(x) for x in w[1 : 1 + 4 * n]]
    return [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, 4 * n, 4)]


def within(trace: list[int], allowed: list[int] | set[int]) -> list[int]:
    keep = set(allowed)
    return [p for p in trace if p in keep]


def linux(devices: Devices, mode: int = kcovx.KCOV_TRACE_PC, size: int = SIZE) -> np.ndarray:
    _, view = devices.enabled("linux", size, mode)
    return view


# ---------------------------------------------------------------------------------------------
# Identity: unit, bit 63, offsets


def test_unit_is_build_id_hash_and_object_registered(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    trace = traced(w, lambda: nc.module.loop(3))
    assert trace, "loop(3) recorded nothing"
    objs = [o for o in kcovx.sancov.objects() if Path(o.path).resolve() == nc.path.resolve()]
    assert len(objs) == 1, kcovx.sancov.objects()
    obj = objs[0]
    assert obj.build_id == nc.build_id.hex()  # what readelf -n says
    assert obj.unit == kcovx.sancov.native_unit(nc.build_id) == unit_of(nc)
    assert obj.unit >> 31 == 1 and obj.unit != kcovx.sancov.NATIVE_UNKNOWN_UNIT
    for p in trace:
        assert p >> 63 == 1 and kcovx.sancov.is_native(p)
        assert p >> 32 == obj.unit
    # every PC is a trace_pc call site of the object, as the disassembly gives it
    assert {p & 0xFFFFFFFF for p in trace} <= nc.all_pcs("trace_pc")
    # and the load bias maps offsets back to this process's code
    leaf = nc.module.addresses()["loop"]
    assert kcovx._area._native_pc_of(leaf) == pc(nc, leaf - obj.base)


# ---------------------------------------------------------------------------------------------
# TRACE_PC: the ordered trace with repeats


def test_loop_trace_exact_with_repeats(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    mine = pcs_of(nc, "loop")
    entry = mine[0]  # the entry block comes first in the function
    bodies = set()
    exits = set()
    wrappers = set()
    for n in (1, 2, 3, 7, 50):
        trace = traced(w, lambda n=n: nc.module.loop(n))
        inner = within(trace, mine)
        assert len(inner) == n + 2, (n, inner)
        assert inner[0] == entry
        assert len(set(inner[1:-1])) == 1  # the body block, n times in a row
        bodies.add(inner[1])
        exits.add(inner[-1])
        # the wrapper's blocks surround loop's, the same for every n
        start = trace.index(entry)
        assert trace[start : start + n + 2] == inner
        wrappers.add((tuple(trace[:start]), tuple(trace[start + n + 2 :])))
        assert set(trace[:start]) | set(trace[start + n + 2 :]) <= set(pcs_of(nc, "py_loop"))
    assert len(bodies) == 1 and len(exits) == 1 and len(wrappers) == 1
    (pre, post) = wrappers.pop()
    assert pre and post
    assert bodies.isdisjoint(exits) and entry not in bodies | exits
    zero = within(traced(w, lambda: nc.module.loop(0)), mine)
    assert len(zero) == 2 and zero[0] == entry
    assert zero[1] not in bodies | exits | {entry}
    assert set(mine) == {entry} | bodies | exits | {zero[1]}  # every block of loop seen


def test_branches_differ_in_exactly_their_arms(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    mine = pcs_of(nc, "pick")
    small = within(traced(w, lambda: nc.module.pick(0)), mine)
    big = within(traced(w, lambda: nc.module.pick(20)), mine)
    assert len(small) == len(big) == 3
    assert small[0] == big[0] == mine[0]
    assert set(small[1:]).isdisjoint(big[1:])
    assert set(small) | set(big) == set(mine)
    # repeats: twice the call, twice the sequence
    twice = traced(w, lambda: (nc.module.pick(0), nc.module.pick(0)))
    once = traced(w, lambda: nc.module.pick(0))
    assert twice == once + once
    # branch() is one block at -O2 (if-converted): both inputs give the same trace
    b0 = traced(w, lambda: nc.module.branch(0))
    b20 = traced(w, lambda: nc.module.branch(20))
    assert within(b0, pcs_of(nc, "branch")) == within(b20, pcs_of(nc, "branch"))
    assert within(b0, pcs_of(nc, "branch")) == pcs_of(nc, "branch")


def test_trace_pc_mode_has_no_cmp_records(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    trace = traced(w, lambda: (nc.module.cmp_all(1, 2), nc.module.classify(17)))
    offsets = {p & 0xFFFFFFFF for p in trace}
    assert offsets <= nc.all_pcs("trace_pc")
    assert set(pcs_of(nc, "cmp_all")[:1]) <= set(trace)
    cmp_sites = {s.offset for f in nc.sites.values() for s in f if "cmp" in s.hook}
    cmp_sites |= nc.all_pcs("trace_switch")
    assert offsets.isdisjoint(cmp_sites)
    assert all(p >> 63 for p in trace)  # no record's type word (<= 7) among them


# ---------------------------------------------------------------------------------------------
# TRACE_CMP: records field by field


A = 0xFFEE_DDCC_BBAA_9988  # truncations: 0x88, 0x9988, 0xBBAA9988, all of it
B = 0x0102_0304_0506_0788

CONSTS = {1: 0x4B, 2: 0x4B43, 4: 0x4B434F56, 8: 0x4B434F5658585858}
SIZE_OF = {1: 0, 2: 1, 4: 2, 8: 3}


def cmp_all_expected(nc: Built, a: int, b: int) -> list[tuple[int, int, int, int]]:
    out = []
    for n in (1, 2, 4, 8):
        mask = (1 << (8 * n)) - 1
        ty = KCOV_CMP_SIZE(SIZE_OF[n]) | KCOV_CMP_CONST
        out.append((ty, CONSTS[n], a & mask, pc(nc, nc.site("cmp_all", f"trace_const_cmp{n}"))))
    for n in (1, 2, 4, 8):
        mask = (1 << (8 * n)) - 1
        ty = KCOV_CMP_SIZE(SIZE_OF[n])
        out.append((ty, a & mask, b & mask, pc(nc, nc.site("cmp_all", f"trace_cmp{n}"))))
    return out


@pytest.mark.parametrize(
    ("a", "b"),
    [(A, B), (0x4B434F5658585858, 0x4B434F5658585858), (0, U64), (0x4B, 0x4B)],
)
def test_cmp_all_records_field_by_field(devices: Devices, nc: Built, a: int, b: int) -> None:
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: nc.module.cmp_all(a, b))
    own = {pc(nc, s.offset) for s in nc.sites["cmp_all"]}
    mine = [r for r in got if r[3] in own]
    assert mine == cmp_all_expected(nc, a, b)
    # the rest come from the wrapper (argument parsing), before and after cmp_all's eight
    wrapper = {pc(nc, s.offset) for s in nc.sites["py_cmp_all"]}
    assert all(r[3] in wrapper for r in got if r[3] not in own)
    first = got.index(mine[0])
    assert got[first : first + 8] == mine
    # eight distinct PCs of one unit; operands within the width
    assert len({r[3] for r in mine}) == 8
    assert {r[3] >> 32 for r in got} == {unit_of(nc)}
    for ty, a1, a2, _ in got:
        assert ty <= kcovx.KCOV_CMP_SIZE(3) | KCOV_CMP_CONST
        nbits = 8 << ((ty >> 1) & 3)
        assert a1 >> nbits == 0 and a2 >> nbits == 0, (ty, hex(a1), hex(a2))


@pytest.mark.parametrize("v", [3, 17, 1000, 0, 123456])
def test_switch_one_const_record_per_case(devices: Devices, nc: Built, v: int) -> None:
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: nc.module.classify(v))
    at = pc(nc, nc.site("classify", "trace_switch"))
    mine = [r for r in got if r[3] == at]
    ty = KCOV_CMP_SIZE(2) | KCOV_CMP_CONST  # int: 32 bits
    assert mine == [(ty, 3, v, at), (ty, 17, v, at), (ty, 1000, v, at)]
    first = got.index(mine[0])
    assert got[first : first + 3] == mine  # one after the other
    assert {r[3] >> 32 for r in got} == {unit_of(nc)}


SWITCHES = {"classify8": (0, [7, 200, 250]), "classify64": (3, [5, 2**32, 2**64 - 16])}


@pytest.mark.parametrize(
    ("func", "v"),
    [("classify8", 200), ("classify8", 0), ("classify64", 2**32), ("classify64", U64)],
)
def test_switch_widths(devices: Devices, nc: Built, func: str, v: int) -> None:
    size, cases = SWITCHES[func]
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: getattr(nc.module, func)(v))
    at = pc(nc, nc.site(func, "trace_switch"))
    ty = KCOV_CMP_SIZE(size) | KCOV_CMP_CONST
    assert [r for r in got if r[3] == at] == [(ty, c, v, at) for c in cases]


def test_switch_negative_int_operand_as_linux_writes_it(devices: Devices, nc: Built) -> None:
    # Linux's __sanitizer_cov_trace_switch stores the u64 the compiler passes, unmasked: for an
    # int, gcc sign-extends it, so the record's arg2 is the 64-bit two's complement of v
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: nc.module.classify(-5))
    at = pc(nc, nc.site("classify", "trace_switch"))
    ty = KCOV_CMP_SIZE(2) | KCOV_CMP_CONST
    assert [r for r in got if r[3] == at] == [(ty, c, 2**64 - 5, at) for c in (3, 17, 1000)]


def test_float_comparisons_record_nothing(devices: Devices, nc: Built) -> None:
    sites = {pc(nc, nc.site("fcmp", "trace_cmpd")), pc(nc, nc.site("fcmp", "trace_cmpf"))}
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: (nc.module.fcmp(1.0, 2.0), nc.module.fcmp(3.0, 0.0)))
    assert got  # the wrapper's integer comparisons are there ...
    assert sites.isdisjoint(r[3] for r in got)  # ... fcmp's float ones are not
    assert {r[3] for r in got} <= {pc(nc, s.offset) for s in nc.sites["py_fcmp"]}


def test_trace_cmp_mode_has_no_pcs(devices: Devices, nc: Built) -> None:
    w = linux(devices, KCOV_TRACE_CMP)
    got = records(w, lambda: (nc.module.loop(5), nc.module.pick(20), nc.module.cmp_all(1, 1)))
    assert got
    cmp_sites = {
        s.offset for f in nc.sites.values() for s in f if s.hook != "__sanitizer_cov_trace_pc"
    }
    for ty, _, _, p in got:
        assert ty <= 7
        assert p & 0xFFFFFFFF in cmp_sites
    # loop(5): one const compare at entry, then the loop test 5 times
    loop_test = pc(nc, nc.site("loop", "trace_cmp8"))
    assert [r[1:] for r in got if r[3] == loop_test] == [(5, i, loop_test) for i in range(1, 6)]


# ---------------------------------------------------------------------------------------------
# Clipping and user-written counts


def test_pc_clipping_at_area_end(devices: Devices, nc: Built) -> None:
    size = 512
    w = linux(devices, size=size)
    full = traced(w, lambda: nc.module.loop(20))
    assert len(full) > 5
    for room in (0, 1, 2, 5):
        w[:] = SENTINEL
        w[0] = size - 1 - room
        nc.module.loop(20)
        assert int(w[0]) == size - 1
        assert [int(x) for x in w[size - room :]] == full[:room]
        assert all(int(x) == SENTINEL for x in w[1 : size - room])
    # the count a user set past the end: nothing written, count untouched
    w[:] = SENTINEL
    w[0] = size + 100
    nc.module.loop(20)
    assert int(w[0]) == size + 100
    assert all(int(x) == SENTINEL for x in w[1:])


def test_pc_count_all_ones_wraps_into_word_zero(devices: Devices, nc: Built) -> None:
    w = linux(devices, size=512)
    full = traced(w, lambda: nc.module.loop(4))
    w[:] = SENTINEL
    w[0] = U64
    nc.module.loop(4)
    # kcovx.h: pos wraps to 0, the first PC lands in word 0 (as Linux); then the count is that
    # PC (bit 63 set: far past the end), so every later PC is clipped
    assert int(w[0]) == full[0]
    assert all(int(x) == SENTINEL for x in w[1:])


def test_cmp_clipping_only_whole_records(devices: Devices, nc: Built) -> None:
    size = 512  # 127 records, 3 words to spare
    w = linux(devices, KCOV_TRACE_CMP, size)
    full = records(w, lambda: nc.module.cmp_all(A, B))
    assert len(full) > 8
    cap = (size - 1) // 4
    for room in (0, 1, 3):
        w[:] = SENTINEL
        w[0] = cap - room
        nc.module.cmp_all(A, B)
        assert int(w[0]) == cap
        tail = [int(x) for x in w[1 + 4 * (cap - room) : 1 + 4 * cap]]
        assert tail == [x for r in full[:room] for x in r]
        # the 3 words after the last whole record are never written
        assert all(int(x) == SENTINEL for x in w[1 + 4 * cap :])
        assert all(int(x) == SENTINEL for x in w[1 : 1 + 4 * (cap - room)])
    for count in (cap, cap + 1, U64, 2**62 - 1):  # start past the end, or wrapped past it
        w[:] = SENTINEL
        w[0] = count
        nc.module.cmp_all(A, B)
        nc.module.classify(3)
        assert int(w[0]) == count
        assert all(int(x) == SENTINEL for x in w[1:])


def test_cmp_count_wrapping_to_start_writes_like_linux(devices: Devices, nc: Built) -> None:
    # kcovx.h: a record goes at 1 + 4*count in wrapping arithmetic, as Linux's write_comp_data;
    # count 2**62 wraps to word 1, inside the area, so the records land there and the count
    # keeps counting from 2**62
    w = linux(devices, KCOV_TRACE_CMP, 512)
    full = records(w, lambda: nc.module.cmp_all(A, B))
    w[:] = SENTINEL
    w[0] = 2**62
    nc.module.cmp_all(A, B)
    assert int(w[0]) == 2**62 + len(full)
    assert [int(x) for x in w[1 : 1 + 4 * len(full)]] == [x for r in full for x in r]
    assert all(int(x) == SENTINEL for x in w[1 + 4 * len(full) :])


def test_switch_records_clipped_one_by_one(devices: Devices, nc: Built) -> None:
    size = 512
    cap = (size - 1) // 4
    w = linux(devices, KCOV_TRACE_CMP, size)
    at = pc(nc, nc.site("classify", "trace_switch"))
    full = records(w, lambda: nc.module.classify(17))
    pre = [r[3] for r in full].index(at)  # the wrapper's records before the switch
    w[:] = SENTINEL
    w[0] = cap - pre - 2  # room for the wrapper's and two of the three case records
    nc.module.classify(17)
    assert int(w[0]) == cap
    got = [int(x) for x in w[1 + 4 * (cap - pre - 2) : 1 + 4 * cap]]
    assert got == [x for r in full[: pre + 2] for x in r]
    ty = KCOV_CMP_SIZE(2) | KCOV_CMP_CONST
    assert full[pre : pre + 3] == [(ty, 3, 17, at), (ty, 17, 17, at), (ty, 1000, 17, at)]
    assert all(int(x) == SENTINEL for x in w[1 + 4 * cap :])


# ---------------------------------------------------------------------------------------------
# Threads


def test_other_python_thread_records_nothing_here(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    w[0] = 0
    worker = devices.worker()
    worker.call(nc.module.loop, 10)
    worker.call(nc.module.cmp_all, 1, 2)
    assert int(w[0]) == 0
    # the worker's own device gets the worker's calls; the main area still nothing
    other = devices.open("linux")
    other.init_trace(SIZE)
    ow = other.mmap()
    worker.call(other.enable)
    worker.call(nc.module.loop, 3)
    n = int(ow[0])
    assert within([int(x) for x in ow[1 : 1 + n]], pcs_of(nc, "loop"))[0] == pcs_of(nc, "loop")[0]
    assert int(w[0]) == 0
    # the main thread's own calls still record, and not into the worker's area
    mine = traced(w, lambda: nc.module.loop(3))
    assert within(mine, pcs_of(nc, "loop")) == within(
        [int(x) for x in ow[1 : 1 + n]], pcs_of(nc, "loop")
    )
    assert int(ow[0]) == n
    worker.call(other.disable)


def test_concurrent_thread_without_gil_never_lands_in_trace(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    ref = traced(w, lambda: nc.module.loop(3))
    stop = threading.Event()
    runs = [0]

    def hammer() -> None:
        while not stop.is_set():
            nc.module.picks_nogil(50)  # releases the GIL: runs while the main thread records
            runs[0] += 1

    t = threading.Thread(target=hammer, name="native-hammer")
    t.start()
    try:
        traces = [traced(w, lambda: nc.module.loop(3)) for _ in range(300)]
    finally:
        stop.set()
        t.join(TIMEOUT)
    assert not t.is_alive()
    assert runs[0] > 0
    assert all(tr == ref for tr in traces)


def test_pthread_from_c_records_nothing_into_any_area(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    worker = devices.worker()
    other = devices.open("linux")
    other.init_trace(SIZE)
    ow = other.mmap()
    worker.call(other.enable)
    ow[0] = 0
    body = set(pcs_of(nc, "pthread_body")) | set(pcs_of(nc, "loop")) | set(pcs_of(nc, "branch"))
    trace = traced(w, lambda: nc.module.in_pthread(5))
    assert trace, "the wrapper, run by the main thread, records"
    assert set(trace) <= set(pcs_of(nc, "py_in_pthread"))
    assert body.isdisjoint(trace)
    assert int(ow[0]) == 0
    worker.call(nc.module.in_pthread, 5)  # started by the enabled worker: still nothing
    assert set(int(x) for x in ow[1 : 1 + int(ow[0])]) <= set(pcs_of(nc, "py_in_pthread"))
    assert int(ow[0]) > 0
    worker.call(other.disable)
    # the main thread's own native calls record
    assert within(traced(w, lambda: nc.module.loop(2)), pcs_of(nc, "loop"))


def test_fork_child_records_nothing_into_parent_area(devices: Devices, nc: Built) -> None:
    w = linux(devices)
    w[0] = 0

    def child() -> object:
        nc.module.loop(4)
        nc.module.pick(20)
        return int(w[0])

    assert in_child(child) == 0
    assert int(w[0]) == 0  # the mapping is shared: a child's record would show here
    assert within(traced(w, lambda: nc.module.loop(4)), pcs_of(nc, "loop"))


def test_fork_from_c_child_records_nothing_into_parent_area(devices: Devices, nc: Built) -> None:
    # fork() called from C runs no Python fork hook: the runtime's own atfork handler must
    # clear the child's targets, as the kernel gives a child no kcov (regression: the child
    # of an instrumented fork kept the parent's target and wrote into the shared area)
    dev, w = devices.enabled("linux", SIZE)
    trace = traced(w, lambda: nc.module.fork_loop(4))
    assert trace, "the parent's wrapper records"
    assert set(trace) <= set(pcs_of(nc, "py_fork_loop"))
    assert not set(trace) & (set(pcs_of(nc, "loop")) | set(pcs_of(nc, "branch")))
    dev.disable()
    cmp = linux(devices, KCOV_TRACE_CMP)
    got = records(cmp, lambda: nc.module.fork_loop(4))
    assert got and {r[3] for r in got} <= {pc(nc, s.offset) for s in nc.sites["py_fork_loop"]}


def test_fork_child_enables_its_own_and_records(devices: Devices, nc: Built) -> None:
    dev = devices.open("linux")
    dev.init_trace(SIZE)
    w = dev.mmap()
    w[0] = 0

    def child() -> object:
        dev.enable()
        nc.module.loop(2)
        n = int(w[0])
        dev.disable()
        return [int(x) for x in w[1 : 1 + n]]

    got = in_child(child)
    assert isinstance(got, list)
    loop = pcs_of(nc, "loop")
    assert within(got, loop)[0] == loop[0] and len(within(got, loop)) == 4
    assert int(w[0]) == len(got)  # what the child wrote is in the shared area


# ---------------------------------------------------------------------------------------------
# Python probes and native hooks in one trace


def _mixed(mod: object, k: int) -> int:
    a = mod.loop(k)  # type: ignore[attr-defined]
    if a > 0:  # noqa: SIM108  (two blocks on purpose)
        b = mod.loop(1)  # type: ignore[attr-defined]
    else:
        b = -1
    return a + b


def test_python_and_native_interleave_in_one_trace(devices: Devices, nc: Built) -> None:
    fn = kcovx.instrument_func(_mixed)
    w = linux(devices)
    ref2 = traced(w, lambda: nc.module.loop(2))
    ref1 = traced(w, lambda: nc.module.loop(1))
    trace = traced(w, lambda: fn(nc.module, 2))
    runs: list[tuple[bool, list[int]]] = []
    for p in trace:
        native = p >> 63 == 1
        if runs and runs[-1][0] == native:
            runs[-1][1].append(p)
        else:
            runs.append((native, [p]))
    kinds = [native for native, _ in runs]
    assert kinds[:4] == [False, True, False, True], kinds
    assert runs[1][1] == ref2 and runs[3][1] == ref1
    assert len(runs) <= 5
    python_pcs = [p for native, part in runs if not native for p in part]
    assert all(p >> 32 != unit_of(nc) for p in python_pcs)
    # the other arm: no second native call
    other = traced(w, lambda: fn(nc.module, 0))
    kinds0 = []
    for p in other:
        native = p >> 63 == 1
        if not kinds0 or kinds0[-1] != native:
            kinds0.append(native)
    assert kinds0[:3] == [False, True, False]
    assert True not in kinds0[3:]


def test_python_and_native_cmp_records_interleave(devices: Devices, nc: Built) -> None:
    w = linux(devices, KCOV_TRACE_CMP)
    native = records(w, lambda: nc.module.cmp_all(A, B))
    first = (KCOV_CMP_SIZE(0) | KCOV_CMP_CONST, 1, 2, 0x1111)
    last = (KCOV_CMP_SIZE(3), 3, 4, 0x2222)

    def mixed() -> None:
        kcovx.trace_cmp(*first)
        nc.module.cmp_all(A, B)
        kcovx.trace_cmp(*last)

    assert records(w, mixed) == [first, *native, last]


# ---------------------------------------------------------------------------------------------
# No device


def test_no_device_records_nothing_until_enabled(devices: Devices, nc: Built) -> None:
    nc.module.loop(5)
    nc.module.cmp_all(1, 2)
    dev = devices.open("linux")
    dev.init_trace(SIZE)
    w = dev.mmap()
    nc.module.loop(5)  # initialised, mapped, not enabled: nothing
    dev.enable()
    assert int(w[0]) == 0
    nc.module.loop(5)
    assert len(within([int(x) for x in w[1 : 1 + int(w[0])]], pcs_of(nc, "loop"))) == 7
    dev.disable()
    n = int(w[0])
    nc.module.loop(5)
    assert int(w[0]) == n
