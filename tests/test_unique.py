"""KCOV_UNIQUE_ENABLE and KCOV_RESET_TRACE (linux profile), and read-only mappings.

Covers: the unique-mode layout (bitmap words first, then the trace's count and PCs), first-hit
recording of instrumented blocks through their dense indices (Probes), every hit of a block
whose index lies beyond the bitmap and of PCs without an index (trace_pc/trace_pcs), clipping
of the trace at the area's end, RESET_TRACE (bitmap and count zeroed, owner only, argument 0),
the errno of each illegal call (README's table), ENOTTY for both commands in the gvisor
profile, per-thread isolation, and ``mmap(writable=False)``.  The state machine
(test_state_machine.py) drives the same commands against its model.

Devices are enabled by the calling thread and disabled by the ``devices`` fixture.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from _kcovx_support import Devices, in_thread

import kcovx
from kcovx import KCOV_RESET_TRACE, KCOV_UNIQUE_ENABLE, Mode, _area


def unique(
    devices: Devices, size: int = 512, bitmap_words: int = 2
) -> tuple[kcovx.Device, np.ndarray]:
    dev = devices.open("linux")
    dev.init_trace(size)
    view = dev.mmap()
    dev.unique_enable(bitmap_words)
    return dev, view


def covering(probe: _area.Probe) -> tuple[int, int]:
    """(area size, bitmap words) whose bitmap has a bit for each of probe's blocks: indices
    are process-wide, so a probe made late in a test session has large ones."""
    bw = (probe.base + len(probe)) // 64 + 1
    return 512 * ((bw + 2) // 512 + 1), bw


def trace(view: np.ndarray, bitmap_words: int) -> list[int]:
    n = int(view[bitmap_words])
    return view[bitmap_words + 1 : bitmap_words + 1 + n].tolist()


def bits(view: np.ndarray, bitmap_words: int) -> set[int]:
    out = set()
    for w in range(bitmap_words):
        word = int(view[w])
        out |= {64 * w + b for b in range(64) if word >> b & 1}
    return out


def test_abi_values() -> None:
    # _IOW('c', 103, unsigned long) and _IO('c', 104) on LP64
    ioc_write, size_shift, type_shift = 1 << 30, 16, 8  # _IOC on x86-64
    want_unique = ioc_write | (8 << size_shift) | (ord("c") << type_shift) | 103
    want_reset = (ord("c") << type_shift) | 104
    assert (want_unique, want_reset) == (KCOV_UNIQUE_ENABLE, KCOV_RESET_TRACE)


def test_first_hit_only_then_reset(devices: Devices) -> None:
    probe = _area.Probe([0xA1, 0xA2, 0xA3])
    size, bw = covering(probe)
    dev, view = unique(devices, size=size, bitmap_words=bw)
    assert dev.mode == Mode.UNIQUE_PC
    for _ in range(3):
        probe[1]
        probe[0]
        probe[1]
    assert trace(view, bw) == [0xA2, 0xA1]
    assert bits(view, bw) == {probe.base + 1, probe.base}  # the blocks' dense indices
    dev.reset_trace()
    assert trace(view, bw) == [] and bits(view, bw) == set()
    assert view[bw + 1 : bw + 3].tolist() == [0xA2, 0xA1]  # the PCs stay; the count is reset
    probe[2]
    probe[0]
    probe[2]
    assert trace(view, bw) == [0xA3, 0xA1]
    assert bits(view, bw) == {probe.base + 2, probe.base}


def test_user_cleared_bitmap_records_again(devices: Devices) -> None:
    probe = _area.Probe([0xB1])
    size, bw = covering(probe)
    _, view = unique(devices, size=size, bitmap_words=bw)
    probe[0]
    probe[0]
    assert trace(view, bw) == [0xB1]
    view[:bw] = 0  # the bitmap is the user's too
    probe[0]
    assert trace(view, bw) == [0xB1, 0xB1]


def test_index_beyond_the_bitmap_appends_every_hit(devices: Devices) -> None:
    probe = _area.Probe([0xC1, 0xC2])
    assert _area.Probe([0xC3]).base == probe.base + 2  # dense: the next probe follows
    # Take indices until a two-block probe straddles a multiple of 64, then make the bitmap
    # end exactly between its blocks.
    _area.Probe(range(1, (63 - (probe.base + 3)) % 64 + 1))  # the next base is 63 mod 64
    probe = _area.Probe([0xC1, 0xC2])
    assert (probe.base + 1) % 64 == 0
    bw = (probe.base + 1) // 64
    size = 512 * ((bw + 2) // 512 + 1)
    _, view = unique(devices, size=size, bitmap_words=bw)
    for _ in range(3):
        probe[0]
        probe[1]
    # block 0's index is the bitmap's last bit: first hit only; block 1's is past it
    assert trace(view, bw) == [0xC1, 0xC2, 0xC2, 0xC2]
    assert bits(view, bw) == {probe.base}


def test_trace_pc_without_index_appends_every_hit(devices: Devices) -> None:
    _, view = unique(devices, bitmap_words=1)
    kcovx.trace_pc(7)
    kcovx.trace_pc(7)
    kcovx.trace_pcs(np.array([8, 8], dtype=np.uint64))
    assert trace(view, 1) == [7, 7, 8, 8]
    assert bits(view, 1) == set()


def test_trace_clips_at_the_area_end(devices: Devices) -> None:
    probe = _area.Probe(range(100, 1200))
    size, bw = 512, 8
    _, view = unique(devices, size=size, bitmap_words=bw)
    for i in range(1100):
        probe[i]
    got = trace(view, bw)
    assert len(got) == size - bw - 1
    assert got == list(range(100, 100 + size - bw - 1))


def test_other_threads_and_other_modes_record_nothing(devices: Devices) -> None:
    probe = _area.Probe([0xD1, 0xD2])
    _, view = unique(devices, bitmap_words=1)
    in_thread(lambda: (probe[0], kcovx.trace_pc(3)))
    assert trace(view, 1) == []
    probe[1]
    assert trace(view, 1) == [0xD2]


def test_errors(devices: Devices) -> None:
    dev = devices.open("linux")
    with pytest.raises(OSError) as exc:
        dev.unique_enable(1)  # before init_trace
    assert exc.value.errno == errno.EINVAL
    dev.init_trace(512)
    for bad in (0, 511, 512, 2**64 - 1):  # no bitmap, or fewer than 2 words for the trace
        with pytest.raises(OSError) as exc:
            dev.unique_enable(bad)
        assert exc.value.errno == errno.EINVAL, bad
    with pytest.raises(OSError) as exc:
        dev.reset_trace()  # not enabled: this thread does not own it
    assert exc.value.errno == errno.EINVAL
    dev.unique_enable(510)  # the largest bitmap: count + one PC left
    with pytest.raises(OSError) as exc:
        dev.unique_enable(1)  # already enabled
    assert exc.value.errno == errno.EINVAL
    other = devices.open("linux")
    other.init_trace(512)
    with pytest.raises(OSError) as exc:
        other.unique_enable(1)  # this thread has a device enabled
    assert exc.value.errno == errno.EBUSY
    with pytest.raises(OSError) as exc:
        dev.ioctl(KCOV_RESET_TRACE, 1)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        in_thread(dev.reset_trace)  # not the owner
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        dev.unique_enable(1.5)  # type: ignore[arg-type]
    dev.disable()
    assert dev.mode == Mode.INIT
    dev.enable()  # after disable the device takes any enable again
    assert dev.mode == Mode.TRACE_PC


def test_reset_trace_in_trace_pc_mode_zeroes_word_0(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    view = dev.mmap()
    dev.enable()
    kcovx.trace_pc(5)
    assert view[:2].tolist() == [1, 5]
    dev.reset_trace()
    assert view[:2].tolist() == [0, 5]


def test_gvisor_does_not_know_the_commands(devices: Devices) -> None:
    dev = devices.open("gvisor")
    dev.init_trace(512)
    dev.mmap()
    for call in (lambda: dev.unique_enable(1), dev.reset_trace):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.ENOTTY
    dev.enable()
    with pytest.raises(OSError) as exc:
        dev.reset_trace()
    assert exc.value.errno == errno.ENOTTY


@pytest.mark.parametrize("profile", kcovx.PROFILES)
def test_read_only_mapping(devices: Devices, profile: str) -> None:
    dev = devices.open(profile)
    dev.init_trace(512)
    ro = dev.mmap(writable=False)
    rw = dev.mmap() if profile == "linux" else None
    assert not ro.flags.writeable
    with pytest.raises(ValueError):
        ro[0] = 1
    with pytest.raises(ValueError):
        ro.setflags(write=True)  # the buffer itself is read-only
    dev.enable()
    kcovx.trace_pc(9)
    dev.flush()
    assert ro[:2].tolist() == [1, 9]  # it sees what the device writes
    if rw is not None:
        rw[0] = 0
        assert int(ro[0]) == 0
    with pytest.raises(TypeError):
        dev.mmap(writable=1)  # type: ignore[arg-type]
