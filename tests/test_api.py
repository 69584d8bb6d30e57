"""The public surface: kcov constants with the values of <linux/kcov.h> on x86-64, the files a
typed, cimport-able package ships (kcovx.h, py.typed, .pyi stubs), and ``open()`` as a context
manager.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from _kcovx_support import Devices

import kcovx
from kcovx import Mode

PKG = Path(kcovx.__file__).resolve().parent


def test_ioctl_numbers() -> None:
    assert kcovx.KCOV_INIT_TRACE == 0x80086301
    assert kcovx.KCOV_ENABLE == 0x6364
    assert kcovx.KCOV_DISABLE == 0x6365
    assert kcovx.KCOV_REMOTE_ENABLE == 0x40186366


def ioc(direction: int, typ: str, nr: int, size: int) -> int:
    """Linux _IOC on x86-64: dir << 30 | size << 16 | type << 8 | nr."""
    return direction << 30 | size << 16 | ord(typ) << 8 | nr


def test_ioctl_numbers_follow_ioc_encoding() -> None:
    assert ioc(2, "c", 1, 8) == kcovx.KCOV_INIT_TRACE  # _IOR('c', 1, unsigned long)
    assert ioc(0, "c", 100, 0) == kcovx.KCOV_ENABLE  # _IO('c', 100)
    assert ioc(0, "c", 101, 0) == kcovx.KCOV_DISABLE  # _IO('c', 101)
    assert ioc(1, "c", 102, 24) == kcovx.KCOV_REMOTE_ENABLE  # _IOW, struct kcov_remote_arg


def test_trace_modes_and_cmp_bits() -> None:
    assert kcovx.KCOV_TRACE_PC == 0
    assert kcovx.KCOV_TRACE_CMP == 1
    assert kcovx.KCOV_CMP_CONST == 1
    assert kcovx.KCOV_CMP_MASK == 6
    for n in range(4):
        assert kcovx.KCOV_CMP_SIZE(n) == n << 1
    assert kcovx.KCOV_CMP_SIZE(3) == kcovx.KCOV_CMP_MASK
    assert kcovx.KCOV_WORDS_PER_CMP == 4
    assert kcovx.ENOTSUPP == 524
    assert kcovx.ENOTSUPP != errno.EOPNOTSUPP


def test_device_modes() -> None:
    assert [int(m) for m in (Mode.DISABLED, Mode.INIT, Mode.TRACE_PC, Mode.TRACE_CMP)] == [
        0,
        1,
        2,
        3,
    ]


def test_all_names_exist() -> None:
    for name in kcovx.__all__:
        assert hasattr(kcovx, name), name
    assert kcovx.PROFILES == ("gvisor", "linux")


def test_get_include_has_header() -> None:
    inc = kcovx.get_include()
    assert os.path.isabs(inc)
    header = Path(inc) / "kcovx.h"
    assert header.is_file()
    text = header.read_text()
    assert "kcovx_append_pc" in text
    assert "KCOVX_CAPSULE_NAME" in text


def test_typing_files_shipped() -> None:
    assert (PKG / "py.typed").is_file()
    stubs = sorted(p.name for p in PKG.glob("*.pyi"))
    assert stubs, f"no .pyi stub in {PKG}"
    assert "_area.pyi" in stubs  # the compiled core needs a hand-written stub


def test_cimport_surface_shipped() -> None:
    assert (PKG / "_area.pxd").is_file()
    assert (PKG / "__init__.pxd").is_file()


def test_c_api_capsule_named() -> None:
    from kcovx import _area

    cap = _area._C_API
    assert type(cap).__name__ == "PyCapsule"
    assert "kcovx._area._C_API" in repr(cap)
    assert kcovx.ABI_VERSION >= 1


def test_open_is_context_manager_closing_on_exit() -> None:
    with kcovx.open("linux") as dev:
        assert isinstance(dev, kcovx.Device)
        assert not dev.closed
        dev.init_trace(512)
        view = dev.mmap()
    assert dev.closed
    with pytest.raises(OSError) as info:
        dev.mmap()
    assert info.value.errno == errno.EBADF
    assert view.shape == (512,)


def test_context_manager_closes_on_exception() -> None:
    with pytest.raises(RuntimeError), kcovx.open() as dev:
        raise RuntimeError("boom")
    assert dev.closed


def test_context_manager_gvisor_close_stops_tracing() -> None:
    with kcovx.open("gvisor") as dev:
        dev.init_trace(512)
        view = dev.mmap()
        dev.enable()
        kcovx.trace_pc(3)
        dev.flush()
    assert dev.closed
    assert dev.mode == Mode.INIT
    assert dev.owner is None
    kcovx.trace_pc(4)
    assert view[:3].tolist() == [1, 3, 0]


def test_device_repr_shows_state(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    dev.enable()
    kcovx.trace_pc(1)
    r = repr(dev)
    assert "linux" in r and "TRACE_PC" in r and "1/511" in r
    dev.disable()
    assert "owner=none" in repr(dev)


def test_device_properties(devices: Devices, tmp_path: Path) -> None:
    dev = devices.open("gvisor", path=tmp_path / "f")
    assert dev.profile == "gvisor"
    assert dev.mode == Mode.DISABLED
    assert dev.size == 0
    assert dev.area is None
    assert dev.owner is None
    dev.init_trace(1024)
    assert dev.size == 1024
    dev.mmap()
    assert dev.area is not None
    assert dev.area.size == 1024
    assert dev.area.path == str(tmp_path / "f")
