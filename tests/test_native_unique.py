"""Native code in KCOV_UNIQUE_ENABLE's unique mode (linux profile), and the dense indices that
native call sites share with Python blocks.

Covers: the first hit of each native call site appended once, repeats after RESET_TRACE, a
bitmap too small for the sites' indices appending every hit, Python blocks and native sites
interleaved in one unique trace with distinct indices, and clang's trace-pc-guard numbering
(guards get dense indices; a guard's block is recorded once).  Builds tests/native/nativecov.c
once per module (tests/_native_support.py).

Devices are enabled by the calling thread and disabled by the ``devices`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _kcovx_support import Devices
from _native_support import NATIVECOV, build_extension, load

import kcovx
from kcovx import _area


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    root = build_extension(tmp_path_factory.mktemp("native_unique"), "nativecov", [NATIVECOV])
    return load("nativecov", Path(root))


def unique(
    devices: Devices, bitmap_words: int, size: int = 1 << 16
) -> tuple[kcovx.Device, np.ndarray]:
    dev = devices.open("linux")
    dev.init_trace(size)
    view = dev.mmap()
    dev.unique_enable(bitmap_words)
    return dev, view


def trace(view: np.ndarray, bw: int) -> list[int]:
    return view[bw + 1 : bw + 1 + int(view[bw])].tolist()


def plain_trace(devices: Devices, fn: object) -> list[int]:
    dev = devices.open("linux")
    dev.init_trace(1 << 12)
    view = dev.mmap()
    dev.enable()
    fn()  # type: ignore[operator]
    out = view[1 : 1 + int(view[0])].tolist()
    dev.disable()
    return out


def test_each_native_site_once_until_reset(devices: Devices, ext: ModuleType) -> None:
    everything = plain_trace(devices, lambda: ext.loop(5))
    assert len(everything) > len(set(everything))  # the loop body repeats in the plain trace
    bw = 8192  # 524,288 indices: every site of this process numbered so far fits
    dev, view = unique(devices, bw)
    ext.loop(5)
    ext.loop(5)
    first = trace(view, bw)
    assert first == list(dict.fromkeys(everything))  # each site once, in first-hit order
    assert all(kcovx.sancov.is_native(pc) for pc in first)
    view[bw] = 0  # the count alone: the bitmap still has every site
    ext.loop(7)
    assert trace(view, bw) == []
    dev.reset_trace()
    ext.loop(5)
    assert trace(view, bw) == first


def test_bitmap_too_small_appends_every_hit(devices: Devices, ext: ModuleType) -> None:
    # classify's sites are numbered on their first hit in unique mode, which is here (no
    # other test of this module runs classify in unique mode): after the indices taken below.
    everything = plain_trace(devices, lambda: (ext.classify(3), ext.classify(3)))
    assert len(everything) > len(set(everything))
    _area.Probe(range(1, 64 * 8))  # indices past a one-word bitmap
    _, view = unique(devices, 1)  # 64 bits
    ext.classify(3)
    ext.classify(3)
    assert trace(view, 1) == everything


def test_python_and_native_share_the_index_space(devices: Devices, ext: ModuleType) -> None:
    probe = _area.Probe([0x51, 0x52])
    bw = (probe.base + 2) // 64 + 4096
    _, view = unique(devices, bw, size=1 << 17)

    def run() -> None:
        probe[0]
        ext.branch(20)
        probe[1]
        ext.branch(20)
        probe[0]

    run()
    got = trace(view, bw)
    native = [pc for pc in got if kcovx.sancov.is_native(pc)]
    assert got[0] == 0x51 and 0x52 in got and got.count(0x51) == 1
    assert len(native) == len(set(native)) > 0
    bitmap = view[:bw]
    set_bits = int(sum(bin(int(w)).count("1") for w in bitmap))
    assert set_bits == len(got)  # one bit per recorded block: no index shared by two blocks
