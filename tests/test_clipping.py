"""Clipping and count arithmetic of the area (README: the count and clipping rules).

Covers: linux TRACE_PC capacity (size-1 PCs; later PCs dropped, stored words untouched) through
every entry point (trace_pc, trace_pcs, Area.append_pc/append_pcs); TRACE_CMP capacity
(floor((size-1)/4) whole records, never a partial one); user-written counts (resets, arbitrary
values, 2**64-1 wrapping pos to 0); gvisor task work (batch at count+1 up to the end, the rest
lost, count written back, dedup in first-covered order, global coverage, enable clearing what
was pending); and trace_cmp/append_cmp operand validation.

Linux-profile devices are enabled by the main thread and disabled by the ``devices`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kcovx_support import Devices, in_thread

import kcovx
from kcovx import KCOV_CMP_CONST, KCOV_CMP_SIZE, KCOV_TRACE_CMP, Area, _area

U64_MAX = 2**64 - 1
SENTINEL = 0xDEAD_BEEF_0000_0000


def words(area: Area) -> np.ndarray:
    return np.frombuffer(area, dtype=np.uint64)


def linux_pc(devices: Devices, size: int) -> tuple[kcovx.Device, np.ndarray]:
    """A linux device of size words, enabled for TRACE_PC by the calling thread."""
    dev = devices.open("linux")
    dev.init_trace(size)
    dev.enable()
    assert dev.area is not None
    return dev, words(dev.area)


def linux_cmp(devices: Devices, size: int) -> tuple[kcovx.Device, np.ndarray]:
    dev = devices.open("linux")
    dev.init_trace(size)
    dev.enable(KCOV_TRACE_CMP)
    assert dev.area is not None
    return dev, words(dev.area)


# ---------------------------------------------------------------------------------------------
# Linux TRACE_PC: capacity size-1


@pytest.mark.parametrize("size", [7, 512, 1024])
def test_trace_pc_fills_exactly_size_minus_one(devices: Devices, size: int) -> None:
    _, w = linux_pc(devices, size)
    for i in range(size - 1):
        kcovx.trace_pc(1000 + i)
    assert int(w[0]) == size - 1
    expected = np.arange(1000, 1000 + size - 1, dtype=np.uint64)
    assert np.array_equal(w[1:], expected)
    for pc in (1, 2, 3, U64_MAX):  # dropped: count stays, words untouched
        kcovx.trace_pc(pc)
    assert int(w[0]) == size - 1
    assert np.array_equal(w[1:], expected)


@pytest.mark.parametrize("size", [7, 512, 1024])
def test_trace_pcs_clips_at_size_minus_one(devices: Devices, size: int) -> None:
    _, w = linux_pc(devices, size)
    first = np.arange(1, size // 2 + 1, dtype=np.uint64)
    kcovx.trace_pcs(first)
    assert int(w[0]) == len(first)
    rest = np.arange(5000, 5000 + size, dtype=np.uint64)  # more than the room left
    kcovx.trace_pcs(rest)
    assert int(w[0]) == size - 1
    expected = np.concatenate([first, rest])[: size - 1]
    assert np.array_equal(w[1:], expected)
    kcovx.trace_pcs(np.arange(9, 20, dtype=np.uint64))
    assert int(w[0]) == size - 1
    assert np.array_equal(w[1:], expected)


def test_trace_pcs_large_batch_clips(devices: Devices) -> None:
    # above the bulk path's GIL-release threshold
    size = 8192
    _, w = linux_pc(devices, size)
    pcs = np.arange(1, 40001, dtype=np.uint64)
    kcovx.trace_pcs(pcs)
    assert int(w[0]) == size - 1
    assert np.array_equal(w[1:], pcs[: size - 1])


@pytest.mark.parametrize("size", [7, 512, 1024])
def test_area_append_pc_returns_whether_stored(size: int) -> None:
    a = Area(size)
    w = words(a)
    results = [a.append_pc(10 + i) for i in range(size + 3)]
    assert results == [True] * (size - 1) + [False] * 4
    assert all(type(r) is bool for r in results)
    assert a.count == size - 1
    assert np.array_equal(w[1:], np.arange(10, 10 + size - 1, dtype=np.uint64))


@pytest.mark.parametrize("size", [7, 512, 1024])
def test_area_append_pcs_returns_how_many_stored(size: int) -> None:
    a = Area(size)
    w = words(a)
    assert a.append_pcs(np.arange(1, 4, dtype=np.uint64)) == 3
    n = a.append_pcs(np.arange(100, 100 + 2 * size, dtype=np.uint64))
    assert n == size - 1 - 3
    assert a.append_pcs(np.arange(7, 9, dtype=np.uint64)) == 0
    assert a.append_pcs(np.zeros(0, dtype=np.uint64)) == 0
    assert a.count == size - 1
    assert np.array_equal(w[1:4], [1, 2, 3])
    assert np.array_equal(w[4:], np.arange(100, 100 + n, dtype=np.uint64))


def test_full_area_accepts_again_after_reset(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    kcovx.trace_pcs(np.arange(1, 1000, dtype=np.uint64))
    assert int(w[0]) == 511
    w[0] = 0
    kcovx.trace_pc(77)
    assert int(w[0]) == 1
    assert int(w[1]) == 77
    assert int(w[2]) == 2  # the rest of the old contents is left as it was


# ---------------------------------------------------------------------------------------------
# Linux: user-written counts


def test_user_reset_restarts_at_word_one(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    kcovx.trace_pcs(np.array([5, 6, 7], dtype=np.uint64))
    w[0] = 0
    kcovx.trace_pc(8)
    kcovx.trace_pcs(np.array([9], dtype=np.uint64))
    assert w[:5].tolist() == [2, 8, 9, 7, 0]


@pytest.mark.parametrize("k", [0, 1, 100, 509])
def test_user_written_count_is_honoured(devices: Devices, k: int) -> None:
    _, w = linux_pc(devices, 512)
    w[0] = k
    kcovx.trace_pc(0xABC)
    assert int(w[0]) == k + 1
    assert int(w[k + 1]) == 0xABC
    assert np.count_nonzero(w[1:]) == 1


@pytest.mark.parametrize("k", [511, 512, 10_000, 2**63])
def test_user_count_at_or_past_capacity_drops(devices: Devices, k: int) -> None:
    _, w = linux_pc(devices, 512)
    w[0] = k
    kcovx.trace_pc(0xABC)
    kcovx.trace_pcs(np.array([1, 2], dtype=np.uint64))
    assert int(w[0]) == k
    assert np.count_nonzero(w[1:]) == 0


def test_user_count_max_wraps_pc_into_word_zero(devices: Devices) -> None:
    # Linux: pos = count + 1 wraps to 0 < size, so it stores area[0] = 0 then area[0] = pc.
    _, w = linux_pc(devices, 512)
    w[0] = U64_MAX
    kcovx.trace_pc(3)
    assert int(w[0]) == 3
    assert np.count_nonzero(w[1:]) == 0
    kcovx.trace_pc(0x55)  # the PC is now the count: the next one goes at word 4
    assert int(w[0]) == 4
    assert int(w[4]) == 0x55


def test_user_count_max_wraps_in_bulk_like_one_at_a_time(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    w[0] = U64_MAX
    kcovx.trace_pcs(np.array([3, 100, 101], dtype=np.uint64))
    a = Area(512)
    wa = words(a)
    wa[0] = U64_MAX
    assert a.append_pcs(np.array([3, 100, 101], dtype=np.uint64)) == 3
    for arr in (w, wa):
        assert int(arr[0]) == 5
        assert arr[1:7].tolist() == [0, 0, 0, 100, 101, 0]


def test_user_count_max_wrapping_to_big_pc_then_drops(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    w[0] = U64_MAX
    kcovx.trace_pcs(np.array([10_000, 1, 2], dtype=np.uint64))
    assert int(w[0]) == 10_000  # then pos 10001 is out of the area: dropped
    assert np.count_nonzero(w[1:]) == 0


# ---------------------------------------------------------------------------------------------
# Linux TRACE_CMP: whole records only


@pytest.mark.parametrize(
    ("size", "records"), [(7, 1), (512, 127), (1024, 255), (9, 2), (8, 1), (513, 128)]
)
def test_trace_cmp_capacity(devices: Devices, size: int, records: int) -> None:
    _, w = linux_cmp(devices, size)
    tail_start = 1 + 4 * records
    w[tail_start:] = SENTINEL  # words past the last whole record
    for i in range(records + 5):
        kcovx.trace_cmp(KCOV_CMP_SIZE(3), i, i + 1, 0x1000 + i)
    assert int(w[0]) == records
    recs = w[1:tail_start].reshape(records, 4)
    for i, rec in enumerate(recs):
        assert rec.tolist() == [KCOV_CMP_SIZE(3), i, i + 1, 0x1000 + i]
    assert all(int(x) == SENTINEL for x in w[tail_start:])


def test_cmp_partial_record_never_written(devices: Devices) -> None:
    # size 512: records at 1+4k; count 127 would start at 509 and needs 509..512: no room
    _, w = linux_cmp(devices, 512)
    w[0] = 127
    w[509:] = SENTINEL
    kcovx.trace_cmp(KCOV_CMP_CONST | KCOV_CMP_SIZE(0), 1, 2, 3)
    assert int(w[0]) == 127
    assert w[509:].tolist() == [SENTINEL] * 3
    w[0] = 126  # the last whole record still fits
    kcovx.trace_cmp(KCOV_CMP_CONST | KCOV_CMP_SIZE(0), 1, 2, 3)
    assert int(w[0]) == 127
    assert w[505:509].tolist() == [KCOV_CMP_CONST, 1, 2, 3]
    assert w[509:].tolist() == [SENTINEL] * 3


def test_cmp_user_reset_and_count(devices: Devices) -> None:
    _, w = linux_cmp(devices, 512)
    kcovx.trace_cmp(0, 1, 2, 3)
    kcovx.trace_cmp(0, 4, 5, 6)
    w[0] = 0
    kcovx.trace_cmp(2, 7, 8, 9)
    assert w[:9].tolist() == [1, 2, 7, 8, 9, 0, 4, 5, 6]
    w[0] = 10
    kcovx.trace_cmp(4, 1, 1, 1)
    assert int(w[0]) == 11
    assert w[41:45].tolist() == [4, 1, 1, 1]


@pytest.mark.parametrize("count", [2**62, 2**63, 3 * 2**62])
def test_cmp_count_wrapping_to_start_one_writes_at_word_one(devices: Devices, count: int) -> None:
    # Linux: start = 1 + 4*count (mod 2**64) == 1, the bound check passes: record at word 1
    _, w = linux_cmp(devices, 512)
    w[0] = count
    kcovx.trace_cmp(6, 1, 2, 3)
    assert int(w[0]) == count + 1
    assert w[1:6].tolist() == [6, 1, 2, 3, 0]


@pytest.mark.parametrize("count", [U64_MAX, 2**62 - 1, 2**63 - 1, U64_MAX - 3])
def test_cmp_count_wrapping_outside_area_writes_nothing(devices: Devices, count: int) -> None:
    # start wraps to just below the area (Linux would write before it) or far past it
    _, w = linux_cmp(devices, 512)
    w[0] = count
    kcovx.trace_cmp(6, 1, 2, 3)
    assert int(w[0]) == count
    assert np.count_nonzero(w[1:]) == 0


@pytest.mark.parametrize(("size", "records"), [(7, 1), (512, 127), (1024, 255)])
def test_area_append_cmp_capacity(size: int, records: int) -> None:
    a = Area(size)
    w = words(a)
    w[1 + 4 * records :] = SENTINEL
    results = [a.append_cmp(1, 2, 3, i) for i in range(records + 2)]
    assert results == [True] * records + [False] * 2
    assert a.count == records
    assert all(int(x) == SENTINEL for x in w[1 + 4 * records :])


def test_pc_and_cmp_modes_do_not_mix(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    kcovx.trace_cmp(0, 1, 2, 3)  # TRACE_PC device: comparisons are not recorded
    assert int(w[0]) == 0
    devices.cleanup()
    _, wc = linux_cmp(devices, 512)
    kcovx.trace_pc(5)
    kcovx.trace_pcs(np.array([6, 7], dtype=np.uint64))
    assert int(wc[0]) == 0
    assert np.count_nonzero(wc) == 0


# ---------------------------------------------------------------------------------------------
# trace_cmp / append_cmp validation


@pytest.mark.parametrize("ty", [8, 9, 255, 2**63])
def test_cmp_type_above_seven_is_value_error(devices: Devices, ty: int) -> None:
    _, w = linux_cmp(devices, 512)
    with pytest.raises(ValueError, match="type"):
        kcovx.trace_cmp(ty, 1, 2, 3)
    with pytest.raises(ValueError, match="type"):
        Area(512).append_cmp(ty, 1, 2, 3)
    assert int(w[0]) == 0


@pytest.mark.parametrize(
    ("n", "ok", "bad"),
    [(0, 255, 256), (1, 65535, 65536), (2, 2**32 - 1, 2**32)],
)
def test_cmp_operand_wider_than_type_is_value_error(
    devices: Devices, n: int, ok: int, bad: int
) -> None:
    _, w = linux_cmp(devices, 512)
    a = Area(512)
    for ty in (KCOV_CMP_SIZE(n), KCOV_CMP_SIZE(n) | KCOV_CMP_CONST):
        kcovx.trace_cmp(ty, ok, ok, 1)
        assert a.append_cmp(ty, ok, 0, 1)
        with pytest.raises(ValueError):
            kcovx.trace_cmp(ty, bad, 0, 1)
        with pytest.raises(ValueError):
            kcovx.trace_cmp(ty, 0, bad, 1)
        with pytest.raises(ValueError):
            a.append_cmp(ty, bad, 0, 1)
        with pytest.raises(ValueError):
            a.append_cmp(ty, 0, bad, 1)
    assert int(w[0]) == 2  # only the two valid records
    assert a.count == 2


def test_cmp_size8_takes_full_u64(devices: Devices) -> None:
    _, w = linux_cmp(devices, 512)
    kcovx.trace_cmp(KCOV_CMP_SIZE(3), U64_MAX, U64_MAX, U64_MAX)
    assert w[1:5].tolist() == [6, U64_MAX, U64_MAX, U64_MAX]


# ---------------------------------------------------------------------------------------------
# gvisor: task work


def gvisor_on(devices: Devices, size: int = 512) -> tuple[kcovx.Device, np.ndarray]:
    dev, view = devices.enabled("gvisor", size)
    return dev, view


def test_gvisor_pcs_arrive_only_with_task_work(devices: Devices) -> None:
    dev, v = gvisor_on(devices)
    kcovx.trace_pc(11)
    assert int(v[0]) == 0
    dev.flush()
    assert v[:2].tolist() == [1, 11]


def test_gvisor_batch_dedup_first_covered_order(devices: Devices) -> None:
    dev, v = gvisor_on(devices)
    for pc in (5, 3, 5, 9, 3, 9, 5):
        kcovx.trace_pc(pc)
    kcovx.trace_pcs(np.array([9, 3, 12, 5], dtype=np.uint64))
    dev.flush()
    assert v[:5].tolist() == [4, 5, 3, 9, 12]
    kcovx.trace_pc(3)  # a new batch: covered again, recorded again
    kcovx.trace_pc(5)
    dev.flush()
    assert v[:7].tolist() == [6, 5, 3, 9, 12, 3, 5]


def test_gvisor_batch_clipped_at_end_rest_lost(devices: Devices) -> None:
    dev, v = gvisor_on(devices, 512)
    v[0] = 505
    v[506:] = SENTINEL
    kcovx.trace_pcs(np.arange(1, 21, dtype=np.uint64))
    dev.flush()
    assert int(v[0]) == 511
    assert v[506:].tolist() == [1, 2, 3, 4, 5, 6]
    v[0] = 0  # the 14 PCs that did not fit are not kept for the next flush
    dev.flush()
    assert int(v[0]) == 0
    kcovx.trace_pc(99)
    dev.flush()
    assert v[:3].tolist() == [1, 99, 0]


@pytest.mark.parametrize("count", [511, 512, 100_000])
def test_gvisor_no_room_writes_nothing_and_loses_batch(devices: Devices, count: int) -> None:
    dev, v = gvisor_on(devices, 512)
    v[0] = count
    kcovx.trace_pcs(np.array([1, 2, 3], dtype=np.uint64))
    dev.flush()
    assert int(v[0]) == count
    assert np.count_nonzero(v[1:]) == 0
    v[0] = 0
    dev.flush()
    assert int(v[0]) == 0
    assert np.count_nonzero(v[1:]) == 0


def test_gvisor_count_written_back_after_batch(devices: Devices) -> None:
    dev, v = gvisor_on(devices, 512)
    v[0] = 40
    kcovx.trace_pcs(np.array([7, 8], dtype=np.uint64))
    dev.flush()
    assert int(v[0]) == 42
    assert v[41:43].tolist() == [7, 8]
    assert np.count_nonzero(v[1:41]) == 0


def test_gvisor_task_work_offset_wraps_like_u64(devices: Devices) -> None:
    # off = 8*(1+count) mod 2**64: count = 2**61-1 puts the batch at byte 0 (word 0), and
    # the count written back is count + n.
    dev, v = gvisor_on(devices, 512)
    v[0] = 2**61 - 1
    kcovx.trace_pcs(np.array([0x77, 0x88], dtype=np.uint64))
    dev.flush()
    assert int(v[0]) == 2**61 + 1
    assert int(v[1]) == 0x88


def test_gvisor_coverage_is_global(devices: Devices) -> None:
    dev, v = gvisor_on(devices)
    in_thread(kcovx.trace_pc, 0x1234)
    in_thread(kcovx.trace_pcs, np.array([0x99], dtype=np.uint64))
    kcovx.trace_pc(0x42)
    dev.flush()
    assert v[:4].tolist() == [3, 0x1234, 0x99, 0x42]


def test_gvisor_flush_from_another_thread_runs_owner_work(devices: Devices) -> None:
    w = devices.worker()
    dev = devices.open("gvisor")
    dev.init_trace(512)
    v = dev.mmap()
    w.call(dev.enable)
    kcovx.trace_pc(3)
    assert int(v[0]) == 0
    dev.flush()  # called by a non-owner: runs the owner's task work
    assert v[:2].tolist() == [1, 3]


def test_gvisor_enable_clears_earlier_pending(devices: Devices) -> None:
    w = devices.worker()
    d1 = devices.open("gvisor")
    d1.init_trace(512)
    v1 = d1.mmap()
    w.call(d1.enable)  # keeps the pending set collecting
    kcovx.trace_pc(1)
    d1.flush()
    assert v1[:2].tolist() == [1, 1]  # control: pending PCs do reach the area
    kcovx.trace_pc(2)
    kcovx.trace_pc(3)
    d2 = devices.open("gvisor")
    d2.init_trace(512)
    v2 = d2.mmap()
    d2.enable()  # ClearCoverageData: 2 and 3 are forgotten
    d1.flush()
    d2.flush()
    kcovx.trace_pc(4)
    d2.flush()
    assert v1[:2].tolist() == [1, 1]
    assert v2[:2].tolist() == [1, 4]
    assert 2 not in v1.tolist() + v2.tolist()
    assert 3 not in v1.tolist() + v2.tolist()


def test_gvisor_probe_marks_and_trace_pc_share_one_pending_set(devices: Devices) -> None:
    """Probes deduplicate by their blocks' dense marks, trace_pc by the PC table: a PC that
    both a probe and trace_pc record, and two probes with the same PCs, are pending once per
    flush, in first-covered order, and each flush starts afresh."""
    p1 = _area.Probe([0x71, 0x72, 0x73])
    p2 = _area.Probe([0x73, 0x74])  # its block 0 has p1's block 2's PC
    dev = devices.open("gvisor")
    dev.init_trace(512)
    v = dev.mmap()
    dev.enable()
    for _ in range(2):
        v[0] = 0
        kcovx.trace_pc(0x72)
        for _ in range(3):
            p1[2]
            p1[1]
            p2[0]
            p2[1]
            kcovx.trace_pc(0x74)
        dev.flush()
        assert v[: 1 + 3].tolist() == [3, 0x72, 0x73, 0x74]
    v[0] = 0
    p2[0]
    dev.flush()
    assert v[:2].tolist() == [1, 0x73]
    dev.disable()


def test_gvisor_nothing_collected_while_no_device_traces(devices: Devices) -> None:
    kcovx.trace_pc(0x5)  # no gvisor device is tracing: not pending anywhere
    dev = devices.open("gvisor")
    dev.init_trace(512)
    v = dev.mmap()
    kcovx.trace_pc(0x6)  # INIT, not tracing
    dev.enable()
    kcovx.trace_pc(0x7)
    dev.flush()
    assert v[:3].tolist() == [1, 7, 0]


def test_gvisor_capacity_is_size_minus_one(devices: Devices) -> None:
    dev, v = gvisor_on(devices, 1024)
    kcovx.trace_pcs(np.arange(1, 2000, dtype=np.uint64))
    dev.flush()
    assert int(v[0]) == 1023
    assert np.array_equal(v[1:], np.arange(1, 1024, dtype=np.uint64))


def test_gvisor_consume_on_owner_device_call(devices: Devices) -> None:
    # any device call by the owner is a return to user space: its task work runs
    _, v = gvisor_on(devices)
    other = devices.open("gvisor")
    kcovx.trace_pc(0x31)
    with pytest.raises(OSError):
        other.mmap()  # fails (not inited), but still returns to user space
    assert v[:2].tolist() == [1, 0x31]


def test_linux_records_immediately_with_duplicates_in_order(devices: Devices) -> None:
    _, w = linux_pc(devices, 512)
    seq = [5, 3, 5, 5, 9, 3]
    for pc in seq:
        kcovx.trace_pc(pc)
    assert w[: len(seq) + 1].tolist() == [len(seq), *seq]


def test_linux_enable_does_not_reset_count(devices: Devices) -> None:
    dev, w = linux_pc(devices, 512)
    kcovx.trace_pcs(np.array([1, 2], dtype=np.uint64))
    dev.disable()
    dev.enable()
    kcovx.trace_pc(3)
    assert w[:4].tolist() == [3, 1, 2, 3]
    dev.disable()
    w[0] = 100  # a count written while disabled is honoured by the next session
    dev.enable()
    kcovx.trace_pc(4)
    assert int(w[0]) == 101
    assert int(w[101]) == 4
