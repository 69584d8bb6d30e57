"""Bad input: every wrong type, out-of-range value, closed device and unknown command gives a
clear exception (TypeError/OverflowError/ValueError for Python mistakes, OSError with the
kernel's errno for kcov refusals, exactly as ``os.*`` raises them) and the interpreter lives on.

The last test runs a batch of such abuse in a fresh interpreter and checks that it exits 0.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices

import kcovx
from kcovx import KCOV_DISABLE, KCOV_ENABLE, KCOV_INIT_TRACE, KCOV_REMOTE_ENABLE, Area, Mode

PROFILES = ["gvisor", "linux"]


def subprocess_env() -> dict[str, str]:
    """The environment for a child interpreter that imports this kcovx."""
    root = str(Path(kcovx.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def check_oserror(exc: BaseException, err: int) -> None:
    assert type(exc) is OSError
    assert exc.errno == err
    assert exc.strerror == os.strerror(err)
    assert exc.args == (err, os.strerror(err))
    assert exc.filename is None
    assert str(exc) == f"[Errno {err}] {os.strerror(err)}"


def raises_errno(err: int, fn: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    check_oserror(info.value, err)


# ---------------------------------------------------------------------------------------------
# open()


def test_open_unknown_profile_value_error() -> None:
    with pytest.raises(ValueError, match="bogus") as info:
        kcovx.open(profile="bogus")
    assert "gvisor" in str(info.value) and "linux" in str(info.value)
    with pytest.raises(ValueError):
        kcovx.open(profile="")
    with pytest.raises(ValueError):
        kcovx.open(profile="Linux")


@pytest.mark.parametrize("profile", [1, None, b"linux", 1.0, ["linux"]])
def test_open_profile_wrong_type(profile: Any) -> None:
    with pytest.raises(TypeError, match="profile"):
        kcovx.open(profile=profile)


@pytest.mark.parametrize("path", [3, 1.5, ["a"], object()])
def test_open_path_wrong_type(path: Any) -> None:
    with pytest.raises(TypeError, match="path"):
        kcovx.open(path=path)


@pytest.mark.parametrize("path", ["", "a\0b"])
def test_open_path_bad_value(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        kcovx.open(path=path)


def test_open_path_accepts_pathlike(devices: Devices, tmp_path: Path) -> None:
    dev = devices.open("linux", path=tmp_path / "a")
    assert dev.path == str(tmp_path / "a")
    dev2 = devices.open("linux", path=os.fsencode(tmp_path / "b"))
    assert dev2.path == str(tmp_path / "b")


# ---------------------------------------------------------------------------------------------
# integer arguments of the device calls

BAD_TYPES = [1.5, 1.0, "1", "0x6364", None, b"\x01", [1], np.float64(2.0)]


def int_calls(dev: kcovx.Device) -> dict[str, Callable[[Any], Any]]:
    return {
        "ioctl-cmd": lambda x: dev.ioctl(x, 0),
        "ioctl-arg": lambda x: dev.ioctl(KCOV_INIT_TRACE, x),
        "init_trace": dev.init_trace,
        "enable": dev.enable,
        "mmap-length": lambda x: dev.mmap(x) if x is not None else dev.mmap(4096, None),
        "mmap-offset": lambda x: dev.mmap(4096, x),
    }


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bad", BAD_TYPES, ids=repr)
def test_non_integer_arguments_type_error(devices: Devices, profile: str, bad: Any) -> None:
    dev = devices.open(profile)
    for name, call in int_calls(dev).items():
        with pytest.raises(TypeError, match="int"):
            call(bad)
        assert dev.mode == Mode.DISABLED, name


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bad", [-1, -(2**63), 2**64, 2**64 + 512, 2**100])
def test_out_of_range_arguments_overflow_error(devices: Devices, profile: str, bad: int) -> None:
    dev = devices.open(profile)
    for name, call in int_calls(dev).items():
        with pytest.raises(OverflowError):
            call(bad)
        assert dev.mode == Mode.DISABLED, name


def test_integer_like_arguments_accepted(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(np.uint64(512))
    dev.ioctl(np.int32(KCOV_ENABLE), np.uint8(0))
    dev.disable()
    assert dev.mmap(np.int64(4096), np.uint16(0)).shape == (512,)


def test_mmap_length_none_means_whole_area(devices: Devices) -> None:
    # None is the documented default of length (the whole area), not a bad value
    dev = devices.open("linux")
    dev.init_trace(1024)
    assert dev.mmap(None).shape == (1024,)


# ---------------------------------------------------------------------------------------------
# trace_pc / trace_pcs / trace_cmp arguments


@pytest.mark.parametrize("bad", [1.5, "x", None, b"1", [1], np.float32(1)], ids=repr)
def test_trace_pc_wrong_type(bad: Any) -> None:
    with pytest.raises(TypeError):
        kcovx.trace_pc(bad)
    with pytest.raises(TypeError):
        Area(512).append_pc(bad)


@pytest.mark.parametrize("bad", [-1, 2**64, -(2**64), 2**200])
def test_trace_pc_out_of_range(bad: int) -> None:
    with pytest.raises(OverflowError):
        kcovx.trace_pc(bad)
    with pytest.raises(OverflowError):
        Area(512).append_pc(bad)


def test_trace_pc_extremes_accepted(devices: Devices) -> None:
    _dev, v = devices.enabled("linux", 512)
    kcovx.trace_pc(0)
    kcovx.trace_pc(2**64 - 1)
    kcovx.trace_pc(np.uint64(2**64 - 2))
    kcovx.trace_pc(True)
    assert v[:5].tolist() == [4, 0, 2**64 - 1, 2**64 - 2, 1]


def bad_buffers() -> list[Any]:
    u = np.arange(8, dtype=np.uint64)
    return [
        [1, 2, 3],
        (1, 2),
        np.arange(4, dtype=np.int64),
        np.arange(4, dtype=np.float64),
        np.arange(4, dtype=np.uint32),
        np.arange(4, dtype=">u8"),
        u[::2],
        u.reshape(2, 4).T,
        b"\x00" * 16,
        bytearray(16),
        memoryview(b"\x00" * 16),
        "abcdefgh",
        7,
        1.5,
        None,
    ]


@pytest.mark.parametrize("bad", bad_buffers(), ids=lambda b: type(b).__name__)
def test_trace_pcs_bad_buffers(devices: Devices, bad: Any) -> None:
    _dev, v = devices.enabled("linux", 512)
    a = Area(512)
    for fn in (kcovx.trace_pcs, a.append_pcs):
        with pytest.raises((TypeError, ValueError)) as info:
            fn(bad)
        msg = str(info.value)
        assert "uint64" in msg or "contiguous" in msg, msg
    assert int(v[0]) == 0
    assert a.count == 0


def test_trace_pcs_non_contiguous_value_error() -> None:
    u = np.arange(8, dtype=np.uint64)
    with pytest.raises(ValueError, match="contiguous"):
        kcovx.trace_pcs(u[::2])


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.int32, np.uint8])
def test_trace_pcs_wrong_dtype_type_error(dtype: Any) -> None:
    with pytest.raises(TypeError, match="uint64"):
        kcovx.trace_pcs(np.zeros(4, dtype=dtype))


def test_trace_pcs_empty_and_2d_contiguous_ok(devices: Devices) -> None:
    _dev, v = devices.enabled("linux", 512)
    kcovx.trace_pcs(np.zeros(0, dtype=np.uint64))
    kcovx.trace_pcs(np.array([[1, 2], [3, 4]], dtype=np.uint64))
    assert v[:5].tolist() == [4, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "args",
    [(1.5, 0, 0, 0), (0, "1", 0, 0), (0, 0, None, 0), (0, 0, 0, 1.0)],
)
def test_trace_cmp_wrong_type(args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        kcovx.trace_cmp(*args)
    with pytest.raises(TypeError):
        Area(512).append_cmp(*args)


@pytest.mark.parametrize("args", [(-1, 0, 0, 0), (0, 2**64, 0, 0), (6, 0, -5, 0), (0, 0, 0, -1)])
def test_trace_cmp_out_of_range(args: tuple[int, ...]) -> None:
    with pytest.raises(OverflowError):
        kcovx.trace_cmp(*args)


# ---------------------------------------------------------------------------------------------
# closed devices


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("state", ["fresh", "init", "mapped"])
def test_every_call_on_closed_device_ebadf(devices: Devices, profile: str, state: str) -> None:
    dev = devices.open(profile)
    if state != "fresh":
        dev.init_trace(512)
    if state == "mapped":
        dev.mmap()
    dev.close()
    assert dev.closed
    calls: list[Callable[[], Any]] = [
        lambda: dev.ioctl(KCOV_INIT_TRACE, 512),
        lambda: dev.ioctl(KCOV_ENABLE, 0),
        lambda: dev.ioctl(KCOV_DISABLE, 0),
        lambda: dev.ioctl(0x1234, 0),
        lambda: dev.init_trace(512),
        dev.enable,
        dev.disable,
        dev.mmap,
        lambda: dev.mmap(4096, 0),
        dev.flush,
        dev.close,
    ]
    for call in calls:
        raises_errno(errno.EBADF, call)


def test_context_manager_after_explicit_close_is_quiet(devices: Devices) -> None:
    with kcovx.open() as dev:
        dev.close()
    assert dev.closed


# ---------------------------------------------------------------------------------------------
# errno values


@pytest.mark.parametrize(
    ("profile", "steps", "err"),
    [
        ("linux", [("init", 1)], errno.EINVAL),
        ("linux", [("init", 268435456)], errno.EINVAL),
        ("linux", [("init", 2**64 - 1)], errno.EINVAL),
        ("linux", [("init", 512), ("init", 512)], errno.EBUSY),
        ("linux", [("enable", 0)], errno.EINVAL),
        ("linux", [("init", 512), ("enable", 2)], errno.EINVAL),
        ("linux", [("init", 512), ("enable", 256)], errno.EINVAL),
        ("linux", [("init", 512), ("disable", 0)], errno.EINVAL),
        ("linux", [("init", 7), ("mmap", 56)], errno.EINVAL),
        ("linux", [("mmap", 4096)], errno.EINVAL),
        ("gvisor", [("init", 10 * 1024 * 1024 + 512)], errno.EINVAL),
        ("gvisor", [("init", 511)], errno.EINVAL),
        ("gvisor", [("init", 0)], errno.EINVAL),
        ("gvisor", [("init", 512), ("init", 1)], errno.EBUSY),
        ("gvisor", [("init", 512), ("enable", 0)], errno.EINVAL),
        ("gvisor", [("init", 512), ("mmap", 4096), ("enable", 1)], errno.EOPNOTSUPP),
        ("gvisor", [("init", 512), ("mmap", 4096), ("enable", 2)], errno.EINVAL),
        ("gvisor", [("mmap", 4096)], errno.EINVAL),
    ],
)
def test_kcov_errno_values(
    devices: Devices, profile: str, steps: list[tuple[str, int]], err: int
) -> None:
    dev = devices.open(profile)
    *setup, (last, arg) = steps
    ops: dict[str, Callable[[int], Any]] = {
        "init": dev.init_trace,
        "enable": dev.enable,
        "disable": lambda a: dev.ioctl(KCOV_DISABLE, a),
        "mmap": dev.mmap,
    }
    for op, a in setup:
        ops[op](a)
    raises_errno(err, ops[last], arg)


def test_disable_nonzero_arg_einval(devices: Devices) -> None:
    for profile in PROFILES:
        dev, _ = devices.enabled(profile, 512)
        raises_errno(errno.EINVAL, dev.ioctl, KCOV_DISABLE, 1)
        assert dev.mode == Mode.TRACE_PC
        dev.disable()


def test_linux_max_size_allowed_without_touching(devices: Devices) -> None:
    dev = devices.open("linux")
    assert dev.init_trace(268435455) == 0  # INT_MAX / 8 words: 2 GiB, never touched
    assert dev.size == 268435455
    assert dev.mode == Mode.INIT
    dev.close()


def test_gvisor_max_size_allowed(devices: Devices) -> None:
    dev = devices.open("gvisor")
    assert dev.init_trace(10 * 1024 * 1024) == 0  # nothing is allocated before mmap
    assert dev.size == 10 * 1024 * 1024


@pytest.mark.parametrize("size", [0, -1, 2**57, 2**64 - 1])
def test_area_bad_size(size: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        Area(size)


def test_area_zero_value_error() -> None:
    with pytest.raises(ValueError, match="size"):
        Area(0)


@pytest.mark.parametrize("bad", [1.5, "8", None])
def test_area_size_wrong_type(bad: Any) -> None:
    with pytest.raises(TypeError):
        Area(bad)


def test_path_in_missing_directory_gvisor_mmap(devices: Devices, tmp_path: Path) -> None:
    dev = devices.open("gvisor", path=tmp_path / "missing" / "area")
    dev.init_trace(512)  # nothing is created before the first mmap
    with pytest.raises(FileNotFoundError):
        dev.mmap()
    assert dev.mode == Mode.INIT
    assert dev.area is None
    raises_errno(errno.EINVAL, dev.enable)  # no area was mapped


def test_path_in_missing_directory_linux_first_init(devices: Devices, tmp_path: Path) -> None:
    dev = devices.open("linux", path=tmp_path / "missing" / "area")
    for _ in range(2):  # a retry fails the same way: no EBUSY from a half-done INIT
        with pytest.raises(FileNotFoundError):
            dev.init_trace(512)
        assert dev.mode == Mode.DISABLED
        assert dev.area is None


SHORT_FILE_AREA = r"""
import os, sys, tempfile
from kcovx import Area
fd, path = tempfile.mkstemp()
try:
    try:
        a = Area(512, fd, path)  # the file is 0 bytes long, not 512*8
    except (ValueError, OSError) as exc:
        print("refused", type(exc).__name__)
    else:
        a.append_pc(1)
        print("appended", a.count)
finally:
    os.close(fd)
    os.unlink(path)
"""


def test_area_on_too_short_file_does_not_crash() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_FILE_AREA],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=subprocess_env(),
        check=False,
    )
    assert proc.returncode == 0, f"interpreter died: returncode {proc.returncode} {proc.stderr}"


# ---------------------------------------------------------------------------------------------
# ioctl commands


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "cmd",
    [
        KCOV_REMOTE_ENABLE,
        0x80046301,  # KCOV_INIT_TRACE of a 32-bit build
        0x40146366,  # KCOV_REMOTE_ENABLE with i386 alignment
        0,
        0x6366,
        0xFFFFFFFF,
        2**64 - 1,
        KCOV_ENABLE << 32,
    ],
)
def test_unknown_commands_enotty(devices: Devices, profile: str, cmd: int) -> None:
    dev = devices.open(profile)
    raises_errno(errno.ENOTTY, dev.ioctl, cmd, 0)
    dev.init_trace(512)
    dev.mmap()
    raises_errno(errno.ENOTTY, dev.ioctl, cmd, 0)
    assert dev.mode == Mode.INIT


@pytest.mark.parametrize("cmd", [0x40086367, 0x6368])  # KCOV_UNIQUE_ENABLE, KCOV_RESET_TRACE
def test_unique_commands_enotty_in_gvisor_linux_knows_them(devices: Devices, cmd: int) -> None:
    # The 2025 proposal's commands: unknown to gVisor; the linux profile implements them
    # (tests/test_unique.py), so there they fail for the device's state, not as unknown.
    dev = devices.open("gvisor")
    raises_errno(errno.ENOTTY, dev.ioctl, cmd, 0)
    dev.init_trace(512)
    dev.mmap()
    raises_errno(errno.ENOTTY, dev.ioctl, cmd, 0)
    assert dev.mode == Mode.INIT
    dev = devices.open("linux")
    raises_errno(errno.EINVAL, dev.ioctl, cmd, 0)  # not initialised / not enabled
    assert dev.mode == Mode.DISABLED


@pytest.mark.parametrize("profile", PROFILES)
def test_remote_enable_enotty_when_ready(devices: Devices, profile: str) -> None:
    dev = devices.open(profile)
    dev.init_trace(512)
    dev.mmap()
    raises_errno(errno.ENOTTY, dev.ioctl, KCOV_REMOTE_ENABLE, 0x1000)
    assert dev.mode == Mode.INIT
    assert dev.owner is None


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("high", [1 << 32, 0xFFFFFFFF << 32])
def test_cmd_compared_as_32_bits(devices: Devices, profile: str, high: int) -> None:
    dev = devices.open(profile)
    assert dev.ioctl(KCOV_INIT_TRACE | high, 512) == 0
    assert dev.mode == Mode.INIT
    assert dev.size == 512
    view = dev.mmap()
    assert dev.ioctl(KCOV_ENABLE | high, 0) == 0
    assert dev.mode == Mode.TRACE_PC
    kcovx.trace_pc(5)
    dev.flush()
    assert view[:2].tolist() == [1, 5]
    assert dev.ioctl(KCOV_DISABLE | high, 0) == 0
    assert dev.mode == Mode.INIT
    raises_errno(errno.ENOTTY, dev.ioctl, KCOV_REMOTE_ENABLE | high, 0)


# ---------------------------------------------------------------------------------------------
# the interpreter survives a batch of abuse

ABUSE = r"""
import errno, gc, threading
import numpy as np
import kcovx
from kcovx import Area

def expect(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise SystemExit(f"no {exc.__name__} from {fn!r}{args!r}")

for profile in ("gvisor", "linux"):
    d = kcovx.open(profile)
    for bad in (1.5, "x", None, b"", [], object(), float("nan"), float("inf")):
        expect(TypeError, d.init_trace, bad)
        expect(TypeError, d.enable, bad)
        expect(TypeError, d.ioctl, bad, 0)
        expect(TypeError, d.ioctl, 0x6364, bad)
        expect(TypeError, kcovx.trace_pc, bad)
        expect(TypeError, kcovx.trace_cmp, bad, 0, 0, 0)
    for bad in (-1, 2**64, -(2**200), 2**200):
        expect(OverflowError, d.init_trace, bad)
        expect(OverflowError, d.mmap, bad)
        expect(OverflowError, d.mmap, 4096, bad)
        expect(OverflowError, kcovx.trace_pc, bad)
    for cmd in range(0, 0x10000, 97):
        expect(OSError, d.ioctl, cmd, 0)
    d.init_trace(512)
    v = d.mmap()
    expect(OSError, d.mmap, 2**64 - 1)
    expect(OSError, d.mmap, 4096, 2**64 - 4096)
    expect(OSError, d.mmap, 4096, 1)
    d.enable()
    for junk in ([1, 2], np.arange(3, dtype=np.int8), np.arange(9, dtype=np.uint64)[::3], "s"):
        expect((TypeError, ValueError), kcovx.trace_pcs, junk)
    for count in (2**64 - 1, 2**63, 2**62, 511, 10**18):
        v[0] = count
        kcovx.trace_pc(7)
        kcovx.trace_pcs(np.arange(100, dtype=np.uint64))
        d.flush()
    v[0] = 0
    kcovx.trace_pcs(np.arange(10**6, dtype=np.uint64))
    d.flush()
    if profile == "linux":
        d.disable()
    d.close()
    for call in (d.flush, d.close, d.disable, d.enable, d.mmap):
        try:
            call()
        except OSError as e:
            assert e.errno == errno.EBADF
        else:
            raise SystemExit("closed device call succeeded")
    del d
    gc.collect()
    v[:] = 1  # the view keeps its pages after the device is gone
    assert int(v.sum()) == 512

a = Area(1)
assert not a.append_pc(1)
assert not a.append_cmp(0, 0, 0, 0)
assert a.append_pcs(np.arange(5, dtype=np.uint64)) == 0
expect(ValueError, Area, 0)
expect(ValueError, a.append_cmp, 8, 0, 0, 0)
expect(ValueError, kcovx.trace_cmp, 0, 256, 0, 0)
a = Area(512)
w = np.frombuffer(a, dtype=np.uint64)
del a
gc.collect()
w[:] = 3
assert int(w.sum()) == 3 * 512

# a linux device closed while enabled by a thread that then exits
d = kcovx.open("linux")
d.init_trace(512)
v = d.mmap()
def run():
    d.enable()
    d.close()
    kcovx.trace_pc(1)
t = threading.Thread(target=run)
t.start()
t.join(10)
kcovx.trace_pc(2)
del d
gc.collect()
assert v[:2].tolist() == [1, 1]
print("survived")
"""


def test_interpreter_survives_abuse() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", ABUSE],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        env=subprocess_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "survived"
