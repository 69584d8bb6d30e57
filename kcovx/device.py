"""The kcov device: kcov's ioctl-style state machine, in two profiles.

Owns: ``Device`` (one open kcov file) and the rules of each profile:

- ``gvisor`` (default): gVisor's ``pkg/sentry/kernel/kcov.go``, errno for errno.  The area is
  allocated by the first mmap in INIT and dropped by DISABLE and close; coverage is global and
  reaches the area only through task work, which runs when the owner's device calls return
  (and on ``flush()``).
- ``linux``: Linux >= 5.18.  The area is allocated by INIT and lives as long as the device;
  ``trace_pc``/``trace_cmp`` append at once, for the enabling thread only.

Checks run in the order the kernel runs them and the first failure wins, which is why each
profile's rules are written as ordered code rather than as a table: the order differs between
the profiles (gVisor checks EBUSY before the size, Linux after).  The mode transitions both
profiles allow are these (every other (mode, event) pair fails with the errno in README.md):

    DISABLED --init_trace--> INIT --enable--> TRACE_PC | TRACE_CMP (linux only)
    TRACE_*  --disable / owner exit--> INIT;   close: gvisor -> INIT, linux -> unchanged

Threading: every public method converts its arguments, then holds ``tasks.LOCK`` for the state
change and, on the way out, runs the calling thread's task work, as a return to user space
would.  Nothing here runs per recorded PC.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from kcovx import _area, tasks
from kcovx.abi import (
    KCOV_DISABLE,
    KCOV_ENABLE,
    KCOV_INIT_TRACE,
    KCOV_TRACE_CMP,
    KCOV_TRACE_PC,
    PAGE_SIZE,
    Mode,
)
from kcovx.errors import as_u64, fail

PROFILES: Final = ("gvisor", "linux")

GVISOR_MAX_WORDS: Final = 10 * 1024 * 1024  # kcovAreaSizeMax
LINUX_MAX_WORDS: Final = (2**31 - 1) // 8  # INT_MAX / 8

_U64_MASK: Final = (1 << 64) - 1

AreaView = npt.NDArray[np.uint64]
_T = TypeVar("_T")


def _make_area(size: int, path: str | None) -> _area.Area:
    """A fresh zeroed area of size words, in anonymous shared memory or in a new file at path.

    An existing file at path is unlinked first, so mappings of an older area keep their own
    pages (as gVisor's detached mappings do) while the path names the new one.
    """
    if path is None:
        return _area.Area(size)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size * 8)
        return _area.Area(size, fd, path)
    finally:
        os.close(fd)


class _Rules:
    """One profile's checks and effects.  Every method is called under tasks.LOCK."""

    name: str
    has_task_work: bool  # coverage reaches the area through the owner's task work

    def init_trace(self, dev: Device, task: tasks.Task, size: int) -> None:
        raise NotImplementedError

    def mmap(self, dev: Device, task: tasks.Task, length: int, offset: int) -> _area.Area:
        raise NotImplementedError

    def enable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        raise NotImplementedError

    def disable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        raise NotImplementedError

    def close(self, dev: Device, task: tasks.Task) -> None:
        raise NotImplementedError

    def task_exit(self, task: tasks.Task) -> None:
        raise NotImplementedError


class _GVisorRules(_Rules):
    """gVisor, as in the seed (kcov.go) and fsimpl/sys/kcov.go."""

    name = "gvisor"
    has_task_work = True

    def init_trace(self, dev: Device, task: tasks.Task, size: int) -> None:
        if dev._mode != Mode.DISABLED:
            fail(errno.EBUSY)
        if (8 * size) & (PAGE_SIZE - 1):  # the area must be whole pages (uint64 wrap is moot)
            fail(errno.EINVAL)
        if size < 2 or size > GVISOR_MAX_WORDS:
            fail(errno.EINVAL)
        dev._size = size
        dev._mode = Mode.INIT

    def mmap(self, dev: Device, task: tasks.Task, length: int, offset: int) -> _area.Area:
        if dev._mode != Mode.INIT:
            fail(errno.EINVAL)
        if dev._area is None:
            dev._area = _make_area(dev._size, dev._path)
        return dev._area

    def enable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        if dev._mode != Mode.INIT or dev._area is None:
            fail(errno.EINVAL)
        kind = arg & 0xFF  # EnableTrace(ctx, uint8(arg))
        if kind == KCOV_TRACE_CMP:
            fail(errno.EOPNOTSUPP)
        if kind != KCOV_TRACE_PC:
            fail(errno.EINVAL)
        if dev._owner is not None and dev._owner is not task:
            fail(errno.EBUSY)  # unreachable in INIT, kept because the seed has it
        dev._mode = Mode.TRACE_PC
        dev._owner = task
        task.gvisor_kcov = dev
        task.work.append(dev)
        tasks.update_collecting()
        _area._clear_pending()  # ClearCoverageData: only coverage from now on

    def disable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        if arg != 0:
            fail(errno.EINVAL)
        if dev._owner is not task:
            fail(errno.EINVAL)
        dev._mode = Mode.INIT
        dev._owner = None
        dev._area = None  # the next enable needs a new mmap, which gets a fresh area
        tasks.update_collecting()

    def close(self, dev: Device, task: tasks.Task) -> None:
        dev._mode = Mode.INIT  # Clear: INIT, not DISABLED
        dev._owner = None
        dev._area = None
        tasks.update_collecting()

    def task_exit(self, task: tasks.Task) -> None:
        # OnTaskExit on t.kcov: the device this task enabled last, even if it has since been
        # disabled and enabled by another task (gVisor resets that task's session too).
        dev = task.gvisor_kcov
        if dev is None:
            return
        task.gvisor_kcov = None
        dev._mode = Mode.INIT
        dev._owner = None  # the mapping stays: a later enable needs no new mmap
        tasks.update_collecting()


class _LinuxRules(_Rules):
    """Linux >= 5.18 (kernel/kcov.c)."""

    name = "linux"
    has_task_work = False

    def init_trace(self, dev: Device, task: tasks.Task, size: int) -> None:
        if size < 2 or size > LINUX_MAX_WORDS:
            fail(errno.EINVAL)
        # Linux allocates before its EBUSY check; allocating first here would replace the
        # area file of a busy device, so EBUSY is checked first.  The two orders differ only
        # when allocation fails on a device that is already initialised.
        if dev._mode != Mode.DISABLED:
            fail(errno.EBUSY)
        try:
            area = _make_area(size, dev._path)
        except MemoryError:
            fail(errno.ENOMEM)
        dev._area = area
        dev._size = size
        dev._mode = Mode.INIT

    def mmap(self, dev: Device, task: tasks.Task, length: int, offset: int) -> _area.Area:
        if dev._area is None or offset != 0 or _page_round(length) != dev._size * 8:
            fail(errno.EINVAL)
        return dev._area

    def enable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        if dev._mode != Mode.INIT or dev._area is None:
            fail(errno.EINVAL)
        if dev._owner is not None or task.linux_kcov is not None:
            fail(errno.EBUSY)
        if arg not in (KCOV_TRACE_PC, KCOV_TRACE_CMP):
            fail(errno.EINVAL)
        mode = Mode.TRACE_PC if arg == KCOV_TRACE_PC else Mode.TRACE_CMP
        tasks.set_target(task, dev._area, int(mode))
        dev._mode = mode
        dev._owner = task
        task.linux_kcov = dev

    def disable(self, dev: Device, task: tasks.Task, arg: int) -> None:
        if arg != 0 or task.linux_kcov is not dev:
            fail(errno.EINVAL)
        tasks.set_target(task, None, 0)
        task.linux_kcov = None
        self._reset(dev)

    def close(self, dev: Device, task: tasks.Task) -> None:
        # The enabled task holds a reference: coverage keeps flowing until it disables (it
        # cannot, the fd is gone) or exits.  Otherwise the area goes with the device.
        if dev._owner is None:
            dev._area = None

    def task_exit(self, task: tasks.Task) -> None:
        dev = task.linux_kcov
        if dev is None:
            return
        task.linux_kcov = None
        self._reset(dev)

    @staticmethod
    def _reset(dev: Device) -> None:
        dev._mode = Mode.INIT
        dev._owner = None
        if dev._closed:
            dev._area = None


_RULES: Final[dict[str, _Rules]] = {"gvisor": _GVisorRules(), "linux": _LinuxRules()}
tasks.exit_handlers.extend(rules.task_exit for rules in _RULES.values())


def _page_round(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _view(area: _area.Area, length: int, offset: int) -> AreaView:
    """The part of the mapping [offset, offset + page-rounded length) that lies in the area."""
    words: AreaView = np.frombuffer(memoryview(area), dtype=np.uint64)
    lo = min(offset // 8, area.size)
    hi = min((offset + _page_round(length)) // 8, area.size)
    return words[lo:hi]


class Device:
    """One open kcov device.  Create with ``kcovx.open()``."""

    __slots__ = ("__weakref__", "_area", "_closed", "_mode", "_owner", "_path", "_rules", "_size")

    def __init__(self, profile: str = "gvisor", path: str | os.PathLike[str] | None = None):
        if not isinstance(profile, str):
            raise TypeError(f"profile must be a str, got {type(profile).__name__}")
        rules = _RULES.get(profile)
        if rules is None:
            raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
        if path is not None:
            if not isinstance(path, (str, bytes, os.PathLike)):
                raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
            path = os.fsdecode(os.fspath(path))
            if not path or "\0" in path:
                raise ValueError(f"path must be a non-empty file name without NUL, got {path!r}")
        self._rules: _Rules = rules
        self._path: str | None = path
        self._mode = Mode.DISABLED
        self._size = 0
        self._area: _area.Area | None = None
        self._owner: tasks.Task | None = None
        self._closed = False
        with tasks.LOCK:
            tasks.DEVICES.add(self)

    # -- the system calls ---------------------------------------------------------------------

    def ioctl(self, cmd: int, arg: int = 0) -> int:
        """Perform a kcov ioctl.  Returns 0; raises OSError with the kernel's errno."""
        c = as_u64(cmd, "cmd") & 0xFFFFFFFF  # the kernels compare the command as 32 bits
        a = as_u64(arg, "arg")
        self._syscall(self._ioctl, c, a)
        return 0

    def init_trace(self, size: int) -> int:
        """``ioctl(KCOV_INIT_TRACE, size)``: size the area, in 64-bit words."""
        return self.ioctl(KCOV_INIT_TRACE, as_u64(size, "size"))

    def enable(self, mode: int = KCOV_TRACE_PC) -> int:
        """``ioctl(KCOV_ENABLE, mode)``: start recording for the calling thread."""
        return self.ioctl(KCOV_ENABLE, as_u64(mode, "mode"))

    def disable(self) -> int:
        """``ioctl(KCOV_DISABLE, 0)``: stop recording (owner thread only)."""
        return self.ioctl(KCOV_DISABLE, 0)

    def mmap(self, length: int | None = None, offset: int = 0) -> AreaView:
        """Map the area: a writable numpy uint64 view of the shared words.

        length is in bytes (default: the whole area); offset must be page-aligned.  The view
        covers the part of the page-rounded mapping that lies inside the area.
        """
        n = None if length is None else as_u64(length, "length")
        return self._syscall(self._mmap, n, as_u64(offset, "offset"))

    def flush(self) -> None:
        """Run the owner's pending task work now (gvisor profile; a no-op for linux)."""
        # _syscall spelt out: flush runs once per input in a fuzz loop, and the indirection
        # would add ~180 ns (a third) to it.
        task = tasks.current()
        with tasks.LOCK:
            try:
                self._check_open()
                owner = self._owner
                if self._rules.has_task_work and owner is not None and owner is not task:
                    tasks.return_to_user(owner)
            finally:
                tasks.return_to_user(task)

    def close(self) -> None:
        """Close the device (gvisor: coverage stops, the area is detached)."""
        self._syscall(self._close)

    # -- the kernel side of each call (under tasks.LOCK, device open) -------------------------

    def _syscall(self, op: Callable[..., _T], *args: Any) -> _T:
        """Run op(task, *args) as a system call of the calling thread: under the lock, EBADF on
        a closed device, and the thread's task work on the way out, whatever op did."""
        task = tasks.current()
        with tasks.LOCK:
            try:
                self._check_open()
                return op(task, *args)
            finally:
                tasks.return_to_user(task)

    def _ioctl(self, task: tasks.Task, cmd: int, arg: int) -> None:
        if cmd == KCOV_INIT_TRACE:
            self._rules.init_trace(self, task, arg)
        elif cmd == KCOV_ENABLE:
            self._rules.enable(self, task, arg)
        elif cmd == KCOV_DISABLE:
            self._rules.disable(self, task, arg)
        else:  # KCOV_REMOTE_ENABLE included: no remote coverage (see README)
            fail(errno.ENOTTY)

    def _mmap(self, task: tasks.Task, length: int | None, offset: int) -> AreaView:
        n = self._size * 8 if length is None else length
        # The generic mmap checks come before the device's.
        if offset & (PAGE_SIZE - 1) or n == 0:
            fail(errno.EINVAL)
        if n > _U64_MASK - PAGE_SIZE + 1 or offset + _page_round(n) > _U64_MASK:
            fail(errno.ENOMEM)
        return _view(self._rules.mmap(self, task, n, offset), n, offset)

    def _close(self, task: tasks.Task) -> None:
        self._closed = True
        tasks.DEVICES.discard(self)
        self._rules.close(self, task)

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.close()

    # -- state, read-only ---------------------------------------------------------------------

    @property
    def profile(self) -> str:
        return self._rules.name

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def size(self) -> int:
        """Area size in words (0 before init_trace)."""
        return self._size

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def owner(self) -> int | None:
        """``threading.get_ident()`` of the owning thread, or None."""
        owner = self._owner
        # A task of the parent, seen in a fork child, owns nothing here.  A task that exited
        # still owning the device (see task_exit in _GVisorRules) is still its owner.
        return owner.ident if owner is not None and tasks.in_this_process(owner) else None

    @property
    def area(self) -> _area.Area | None:
        """The area this device writes to now (None when it has none), for the C API."""
        return self._area

    def __repr__(self) -> str:
        owner = self._owner
        who = "none" if owner is None else f"{owner.name}({owner.ident})"
        area = self._area
        if area is None:
            fill = "unmapped"
        elif self._mode == Mode.TRACE_CMP:
            fill = f"{area.count}/{(area.size - 1) // 4} records"
        else:
            fill = f"{area.count}/{area.size - 1} PCs"
        state = "closed" if self._closed else "open"
        return (
            f"<kcovx.Device profile={self.profile} {state} mode={self._mode.name} "
            f"size={self._size} owner={who} fill={fill}>"
        )

    # -- kernel-side hooks (under tasks.LOCK) -------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            fail(errno.EBADF)

    def _task_work(self, task: tasks.Task) -> None:
        """gVisor TaskWork: move the pending coverage into the area; re-register while tracing."""
        if self._mode != Mode.TRACE_PC or self._area is None:
            return
        self._area.consume_pending()
        task.work.append(self)

    def _collects(self) -> bool:
        # A device whose owner exited while owning it (gVisor resets only the device the task
        # enabled last) can never run task work again: it must not keep the set collecting.
        return (
            self._rules.has_task_work
            and self._mode == Mode.TRACE_PC
            and self._owner is not None
            and tasks.is_live(self._owner)
            and not self._closed
        )

    def _after_fork_child(self) -> None:
        # The owner is a task of the parent: in the child nobody owns the device.  Its mode is
        # kept, so (as with the kernel's shared kcov) the child can neither enable nor disable
        # a device the parent had enabled.
        self._owner = None


def open(profile: str = "gvisor", path: str | os.PathLike[str] | None = None) -> Device:
    """Open a kcov device.  profile: "gvisor" (default) or "linux"; path: file for the area."""
    return Device(profile, path)


__all__ = ["PROFILES", "Device", "open"]
