"""The kcov device: kcov's ioctl-style state machine, in two profiles.

Owns: ``Device`` (one open kcov file), ``DeviceState`` (what the rules act on: mode, size,
area, owner, closed, path) and the rules of each profile, with the per-task bookkeeping each
profile keeps (which device a task enabled):

- ``gvisor`` (default): gVisor's ``pkg/sentry/kernel/kcov.go``, errno for errno.  The area is
  allocated by the first mmap in INIT and dropped by DISABLE and close; coverage is global and
  reaches the area only through task work, which runs when the owner's device calls return
  (and on ``flush()``).  ``t.kcov`` (the device a task enabled last, kept after DISABLE) is
  ``_GVisorRules.kcov``.
- ``linux``: Linux >= 5.18.  The area is allocated by INIT and lives as long as the device;
  ``trace_pc``/``trace_cmp`` append at once, for the enabling thread only.
  ``current->kcov`` (the device a task has enabled now) is ``_LinuxRules.kcov``.

Checks run in the order the kernel runs them and the first failure wins, which is why each
profile's rules are written as ordered code rather than as a table: the order differs between
the profiles (gVisor checks EBUSY before the size, Linux after).  The mode transitions both
profiles allow are these (every other (mode, event) pair fails with the errno in README.md):

    DISABLED --init_trace--> INIT --enable--> TRACE_PC | TRACE_CMP (linux only)
    TRACE_*  --disable / owner exit--> INIT;   close: gvisor -> INIT, linux -> unchanged

Asynchronous exceptions (a signal handler raising, KeyboardInterrupt) may land wherever CPython
checks for them: at a function's entry and after a C call returns.  Each rule therefore checks
first and commits last, in one statement of plain attribute and dict stores, where no check
can happen.  The C state derived from the Python state (the calling thread's recording target,
the gvisor pending set switch) is set from the committed state and set again if that is
interrupted, so a call interrupted this way either happened whole or not at all.

Threading: every public method converts its arguments, then holds ``tasks.lock()`` for the
state change and, on the way out, runs the calling thread's task work, as a return to user
space would.  Nothing here runs per recorded PC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from kcovx import _area, tasks
from kcovx.abi import (
    KCOV_DISABLE,
    KCOV_ENABLE,
    KCOV_INIT_TRACE,
    KCOV_TRACE_CMP,
    KCOV_TRACE_PC,
    KCOV_WORDS_PER_CMP,
    PAGE_SIZE,
    Mode,
)
from kcovx.errors import as_u64, fail

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    AreaView = npt.NDArray[np.uint64]

PROFILES: Final = ("gvisor", "linux")

GVISOR_MAX_WORDS: Final = 10 * 1024 * 1024  # kcovAreaSizeMax
LINUX_MAX_WORDS: Final = (2**31 - 1) // 8  # INT_MAX / 8

_U64_MASK: Final = (1 << 64) - 1

# The lock object never changes (tasks.lock()), so it is bound once: flush() is per-input hot.
_LOCK: Final = tasks.lock()
# Looking an enum member up on its class costs hundreds of ns on 3.11; task work runs per input.
_TRACE_PC: Final = Mode.TRACE_PC

_T = TypeVar("_T")

# True while some thread is inside a device call's locked section.  Only the lock's holder
# reads or writes it, so when a call finds it set after taking the (reentrant) lock, the
# calling thread is already inside a device call: a signal handler or a finaliser runs this
# call in the middle of that one.  Such a nested call is refused with EDEADLK (see _enter).
_busy = False

# Devices closed by such a nested call: the close is deferred, not refused, and happens when
# the interrupted call returns, as the kernel releases a file when the last system call in
# flight on it ends.  (A finaliser that closes its device may be run by the garbage collector
# in the middle of any device call.)  Read and written under the lock.
_deferred_closes: list[Device] = []


def _close_deferred(task: tasks.Task) -> None:
    """Close the devices whose close was deferred.  Under the lock, not busy."""
    while _deferred_closes:
        dev = _deferred_closes[-1]
        dev._rules.close(dev._state, task)  # idempotent: safe to redo if interrupted
        _deferred_closes.pop()


class DeviceState:
    """What one device is, as the profile rules see it.  Read and written under the lock."""

    __slots__ = ("__weakref__", "area", "closed", "mode", "owner", "path", "size")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mode = Mode.DISABLED
        self.size = 0  # area size in words, 0 before init_trace
        self.area: _area.Area | None = None  # what the device writes to now
        self.owner: tasks.Task | None = None  # the task that enabled it
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"DeviceState(mode={self.mode.name}, size={self.size}, area={self.area!r}, "
            f"owner={self.owner!r}, closed={self.closed}, path={self.path!r})"
        )


def _make_area(size: int, path: str | None) -> _area.Area:
    """A fresh zeroed area of size words, in anonymous shared memory or in a new file at path.

    An existing regular file (or symlink) at path is unlinked first, so mappings of an older
    area keep their own pages (as gVisor's detached mappings do) while the path names the new
    one.  Anything else there (a FIFO, a socket, a device node such as /dev/null) is not ours
    to replace: FileExistsError; a directory: IsADirectoryError.
    """
    if path is None:
        return _area.Area(size)
    try:
        kind = stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        pass
    else:
        if kind == stat.S_IFDIR:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if kind not in (stat.S_IFREG, stat.S_IFLNK):
            raise FileExistsError(
                errno.EEXIST, f"{os.strerror(errno.EEXIST)} (not a regular file)", path
            )
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
    """One profile's checks and effects, and its per-task bookkeeping (a tasks.TaskClient).

    Every method is called under the lock.
    """

    name: str
    has_task_work: bool  # coverage reaches the area through the owner's task work

    def __init__(self) -> None:
        # Every state of this profile, for the fork child.
        self.states: weakref.WeakSet[DeviceState] = weakref.WeakSet()

    def init_trace(self, st: DeviceState, task: tasks.Task, size: int) -> None:
        raise NotImplementedError

    def mmap(self, st: DeviceState, task: tasks.Task, length: int, offset: int) -> _area.Area:
        raise NotImplementedError

    def enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        raise NotImplementedError

    def disable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        raise NotImplementedError

    def close(self, st: DeviceState, task: tasks.Task) -> None:
        raise NotImplementedError

    def on_task_exit(self, task: tasks.Task) -> None:
        raise NotImplementedError

    def on_fork_child(self) -> None:
        # The owners are tasks of the parent: in the child nobody owns a device.  The mode is
        # kept, so (as with the kernel's shared kcov) the child can neither enable nor disable
        # a device the parent had enabled.
        for st in self.states:
            st.owner = None


class _CoverageWork:
    """gVisor's kcov TaskWork for one device: move the pending coverage into its area; stays
    registered while the device traces."""

    __slots__ = ("state",)

    def __init__(self, state: DeviceState) -> None:
        self.state = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CoverageWork) and other.state is self.state

    def __hash__(self) -> int:
        return id(self.state)

    def run_task_work(self, task: tasks.Task) -> bool:
        st = self.state
        area = st.area
        if st.mode is not _TRACE_PC or area is None:
            return False
        area.consume_pending()
        return True


class _GVisorRules(_Rules):
    """gVisor (kcov.go and fsimpl/sys/kcov.go)."""

    name = "gvisor"
    has_task_work = True

    def __init__(self) -> None:
        super().__init__()
        self.kcov: dict[tasks.Task, DeviceState] = {}  # t.kcov
        # The devices that collect, and some that stopped (a dict: a store into it needs no
        # call, see the module doc).
        self.tracing: dict[DeviceState, None] = {}

    def init_trace(self, st: DeviceState, task: tasks.Task, size: int) -> None:
        if st.mode != Mode.DISABLED:
            fail(errno.EBUSY)
        if (8 * size) & (PAGE_SIZE - 1):  # the area must be whole pages (uint64 wrap is moot)
            fail(errno.EINVAL)
        if size < 2 or size > GVISOR_MAX_WORDS:
            fail(errno.EINVAL)
        st.size, st.mode = size, Mode.INIT

    def mmap(self, st: DeviceState, task: tasks.Task, length: int, offset: int) -> _area.Area:
        if st.mode != Mode.INIT:
            fail(errno.EINVAL)
        if st.area is None:
            st.area = _make_area(st.size, st.path)
        return st.area

    def enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        if st.mode != Mode.INIT or st.area is None:
            fail(errno.EINVAL)
        kind = arg & 0xFF  # EnableTrace(ctx, uint8(arg))
        if kind == KCOV_TRACE_CMP:
            fail(errno.EOPNOTSUPP)
        if kind != KCOV_TRACE_PC:
            fail(errno.EINVAL)
        # gVisor also checks for another owner here (EBUSY); in INIT there never is one.
        try:
            # Registered work and a collecting pending set do nothing until the commit.
            tasks.add_work(task, _CoverageWork(st))
            _area._set_collecting(True)
            _area._clear_pending()  # ClearCoverageData: only coverage from now on
            st.mode, st.owner, self.kcov[task], self.tracing[st] = Mode.TRACE_PC, task, st, None
        except BaseException:
            self.sync_collecting()
            raise

    def disable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        if arg != 0:
            fail(errno.EINVAL)
        if st.owner is not task:
            fail(errno.EINVAL)
        try:
            # The next enable needs a new mmap, which gets a fresh area.
            st.mode, st.owner, st.area = Mode.INIT, None, None
            self.sync_collecting()
        except BaseException:
            self.sync_collecting()
            raise

    def close(self, st: DeviceState, task: tasks.Task) -> None:
        try:
            st.closed, st.mode, st.owner, st.area = True, Mode.INIT, None, None  # Clear: INIT
            self.sync_collecting()
        except BaseException:
            self.sync_collecting()
            raise

    def on_task_exit(self, task: tasks.Task) -> None:
        # OnTaskExit on t.kcov: the device this task enabled last, even if it has since been
        # disabled and enabled by another task (gVisor resets that task's session too).
        st = self.kcov.get(task)
        if st is not None:
            st.mode, st.owner = Mode.INIT, None  # the mapping stays: no new mmap needed
            del self.kcov[task]
        self.sync_collecting()

    def on_fork_child(self) -> None:
        super().on_fork_child()
        self.kcov.clear()
        self.tracing.clear()
        _area._set_collecting(False)

    def sync_collecting(self) -> None:
        """Turn the pending set on exactly while some device of this profile collects, and
        forget the devices that no longer do (none can again: see _collects).  Idempotent."""
        self.tracing = {st: None for st in self.tracing if _collects(st)}
        _area._set_collecting(bool(self.tracing))


def _collects(st: DeviceState) -> bool:
    # A device whose owner exited while owning it (gVisor resets only the device the task
    # enabled last) can never run task work again: it must not keep the set collecting.  Once
    # False, False for good: only enable turns it on, and only from INIT.
    owner = st.owner
    return st.mode is _TRACE_PC and owner is not None and tasks.is_live(owner) and not st.closed


class _LinuxRules(_Rules):
    """Linux >= 5.18 (kernel/kcov.c)."""

    name = "linux"
    has_task_work = False

    def __init__(self) -> None:
        super().__init__()
        # current->kcov; None once disabled (the entry goes when the task exits).
        self.kcov: dict[tasks.Task, DeviceState | None] = {}

    def init_trace(self, st: DeviceState, task: tasks.Task, size: int) -> None:
        if size < 2 or size > LINUX_MAX_WORDS:
            fail(errno.EINVAL)
        # Linux allocates before its EBUSY check; allocating first here would replace the
        # area file of a busy device, so EBUSY is checked first.  The two orders differ only
        # when allocation fails on a device that is already initialised.
        if st.mode != Mode.DISABLED:
            fail(errno.EBUSY)
        try:
            area = _make_area(size, st.path)
        except MemoryError:
            fail(errno.ENOMEM)
        st.area, st.size, st.mode = area, size, Mode.INIT

    def mmap(self, st: DeviceState, task: tasks.Task, length: int, offset: int) -> _area.Area:
        if st.area is None or offset != 0 or _page_round(length) != st.size * 8:
            fail(errno.EINVAL)
        return st.area

    def enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        if st.mode != Mode.INIT or st.area is None:
            fail(errno.EINVAL)
        if st.owner is not None or self.kcov.get(task) is not None:
            fail(errno.EBUSY)
        if arg not in (KCOV_TRACE_PC, KCOV_TRACE_CMP):
            fail(errno.EINVAL)
        mode = Mode.TRACE_PC if arg == KCOV_TRACE_PC else Mode.TRACE_CMP
        try:
            st.mode, st.owner, self.kcov[task] = mode, task, st
            self.sync_target(task)
        except BaseException:
            self.sync_target(task)
            raise

    def disable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        if arg != 0 or self.kcov.get(task) is not st:
            fail(errno.EINVAL)
        area = None if st.closed else st.area
        try:
            st.mode, st.owner, st.area, self.kcov[task] = Mode.INIT, None, area, None
            self.sync_target(task)
        except BaseException:
            self.sync_target(task)
            raise

    def close(self, st: DeviceState, task: tasks.Task) -> None:
        # The enabled task holds a reference: coverage keeps flowing until it disables (it
        # cannot, the fd is gone) or exits.  Otherwise the area goes with the device.
        area = None if st.owner is None else st.area
        st.closed, st.area = True, area

    def on_task_exit(self, task: tasks.Task) -> None:
        # tasks clears the exiting thread's recording target itself.
        st = self.kcov.get(task)
        if st is not None:
            area = None if st.closed else st.area
            st.mode, st.owner, st.area, self.kcov[task] = Mode.INIT, None, area, None
        self.kcov.pop(task, None)

    def on_fork_child(self) -> None:
        super().on_fork_child()
        self.kcov.clear()

    def sync_target(self, task: tasks.Task) -> None:
        """Point the calling thread's recording target at the area of the device it has
        enabled, or at nothing.  Idempotent."""
        st = self.kcov.get(task)
        if st is None:
            tasks.set_target(task, None, 0)
        else:
            tasks.set_target(task, st.area, int(st.mode))


_GVISOR: Final = _GVisorRules()
_RULES: Final[dict[str, _Rules]] = {"gvisor": _GVISOR, "linux": _LinuxRules()}
for _rules in _RULES.values():
    tasks.register(_rules)


def _page_round(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _view(area: _area.Area, length: int, offset: int) -> AreaView:
    """The part of the mapping [offset, offset + page-rounded length) that lies in the area."""
    import numpy as np  # on first use: `import kcovx` does not pay for numpy

    words: AreaView = np.frombuffer(memoryview(area), dtype=np.uint64)
    lo = min(offset // 8, area.size)
    hi = min((offset + _page_round(length)) // 8, area.size)
    return words[lo:hi]


class Device:
    """One open kcov device.  Create with ``kcovx.open()``."""

    __slots__ = ("__weakref__", "_rules", "_state")

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
        self._state = DeviceState(path)
        with _LOCK:
            rules.states.add(self._state)

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

    def map_area(self, length: int | None = None, offset: int = 0) -> _area.Area:
        """``mmap`` without numpy: the same call, checks and errors, returning the ``Area`` (the
        whole area: a writable buffer of uint64 words, ``area.count``) instead of a numpy view
        of the mapped part.  For programs that record but never need numpy loaded."""
        n = None if length is None else as_u64(length, "length")
        return self._syscall(self._map, n, as_u64(offset, "offset"))[0]

    def flush(self) -> None:
        """Run the owner's pending task work now (gvisor profile; a no-op for linux)."""
        # _syscall spelt out: flush runs once per input in a fuzz loop, and the indirection
        # would add a third to its cost.
        global _busy
        task = tasks.current()
        with _LOCK:
            if _busy:
                fail(errno.EDEADLK)
            _busy = True  # no check point between this store and the try
            try:
                try:
                    st = self._state
                    if st.closed:
                        fail(errno.EBADF)
                    owner = st.owner
                    if self._rules.has_task_work and owner is not None and owner is not task:
                        tasks.return_to_user(owner)
                finally:
                    tasks.return_to_user(task)
            finally:
                try:
                    if _deferred_closes:
                        _close_deferred(task)
                finally:
                    _busy = False

    def close(self) -> None:
        """Close the device (gvisor: coverage stops, the area is detached).

        Called in the middle of another device call of this thread (a signal handler, a
        finaliser), the close happens when that call returns.
        """
        try:
            self._syscall(self._close)
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                raise
            with _LOCK:
                _deferred_closes.append(self)

    # -- the kernel side of each call (under the lock, device open) ---------------------------

    def _syscall(self, op: Callable[..., _T], *args: Any) -> _T:
        """Run op(task, *args) as a system call of the calling thread: under the lock, EBADF on
        a closed device, and the thread's task work on the way out, whatever op did.

        A call made while the calling thread is already inside one (from a signal handler or
        a finaliser that interrupted it) fails with EDEADLK and changes nothing: the other
        call is between its checks and its commit, and a state change in between would
        invalidate its checks.  The kernel never sees this case (signal handlers run after
        the system call returns); EDEADLK is what an error-checking mutex says to its owner.
        """
        global _busy
        task = tasks.current()
        with _LOCK:
            if _busy:
                fail(errno.EDEADLK)
            _busy = True  # no check point between this store and the try
            try:
                try:
                    if self._state.closed:
                        fail(errno.EBADF)
                    return op(task, *args)
                finally:
                    tasks.return_to_user(task)
            finally:
                try:
                    if _deferred_closes:
                        _close_deferred(task)
                finally:
                    _busy = False

    def _ioctl(self, task: tasks.Task, cmd: int, arg: int) -> None:
        if cmd == KCOV_INIT_TRACE:
            self._rules.init_trace(self._state, task, arg)
        elif cmd == KCOV_ENABLE:
            self._rules.enable(self._state, task, arg)
        elif cmd == KCOV_DISABLE:
            self._rules.disable(self._state, task, arg)
        else:  # KCOV_REMOTE_ENABLE included: no remote coverage (see README)
            fail(errno.ENOTTY)

    def _map(self, task: tasks.Task, length: int | None, offset: int) -> tuple[_area.Area, int]:
        n = self._state.size * 8 if length is None else length
        # The generic mmap checks come before the device's.
        if offset & (PAGE_SIZE - 1) or n == 0:
            fail(errno.EINVAL)
        if n > _U64_MASK - PAGE_SIZE + 1 or offset + _page_round(n) > _U64_MASK:
            fail(errno.ENOMEM)
        return self._rules.mmap(self._state, task, n, offset), n

    def _mmap(self, task: tasks.Task, length: int | None, offset: int) -> AreaView:
        area, n = self._map(task, length, offset)
        return _view(area, n, offset)

    def _close(self, task: tasks.Task) -> None:
        self._rules.close(self._state, task)

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._state.closed:
            self.close()

    # -- state, read-only ---------------------------------------------------------------------

    @property
    def profile(self) -> str:
        return self._rules.name

    @property
    def mode(self) -> Mode:
        return self._state.mode

    @property
    def size(self) -> int:
        """Area size in words (0 before init_trace)."""
        return self._state.size

    @property
    def path(self) -> str | None:
        return self._state.path

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def owner(self) -> int | None:
        """``threading.get_ident()`` of the owning thread, or None."""
        owner = self._state.owner
        # A task of the parent, seen in a fork child, owns nothing here.  A task that exited
        # still owning the device (see on_task_exit in _GVisorRules) is still its owner.
        return owner.ident if owner is not None and tasks.in_this_process(owner) else None

    @property
    def area(self) -> _area.Area | None:
        """The area this device writes to now (None when it has none), for the C API."""
        return self._state.area

    def __repr__(self) -> str:
        st = self._state
        owner = st.owner
        who = "none" if owner is None else f"{owner.name}({owner.ident})"
        area = st.area
        if area is None:
            fill = "unmapped"
        elif st.mode == Mode.TRACE_CMP:
            fill = f"{area.count}/{(area.size - 1) // KCOV_WORDS_PER_CMP} records"
        else:
            fill = f"{area.count}/{area.size - 1} PCs"
        state = "closed" if st.closed else "open"
        return (
            f"<kcovx.Device profile={self.profile} {state} mode={st.mode.name} "
            f"size={st.size} owner={who} fill={fill}>"
        )


def open(profile: str = "gvisor", path: str | os.PathLike[str] | None = None) -> Device:
    """Open a kcov device.  profile: "gvisor" (default) or "linux"; path: file for the area."""
    return Device(profile, path)


__all__ = ["PROFILES", "Device", "DeviceState", "open"]
