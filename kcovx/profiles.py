"""The two profiles of the kcov device: their rules and the state they act on.

Owns: ``DeviceState`` (one device as the rules see it: mode, size, area, owner, closed, path),
``make_area`` (an area in memory or in a ``path=`` file) and the rules of each profile, with
the per-task bookkeeping each profile keeps (which device a task enabled):

- ``gvisor`` (default): gVisor's ``pkg/sentry/kernel/kcov.go``, errno for errno.  The area is
  allocated by the first mmap in INIT and dropped by DISABLE and close; coverage is global and
  reaches the area only through task work, which runs when the owner's device calls return
  (and on ``flush()``); as in gVisor, while the device traces, its work stays registered on
  every task that enabled it, even one that no longer owns it (see ``_collects``).  ``t.kcov``
  (the device a task enabled last, kept after DISABLE) is ``_GVisorRules.kcov``.
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

Threading: every rule runs under ``tasks.lock()``, called by ``Device`` (device.py), which
knows nothing of the profiles beyond the ``Rules`` interface.  Nothing here runs per PC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import weakref
from typing import Final

from kcovx import _area, tasks
from kcovx.abi import KCOV_TRACE_CMP, KCOV_TRACE_PC, PAGE_SIZE, Mode
from kcovx.errors import fail

PROFILES: Final = ("gvisor", "linux")

GVISOR_MAX_WORDS: Final = 10 * 1024 * 1024  # kcovAreaSizeMax
LINUX_MAX_WORDS: Final = (2**31 - 1) // 8  # INT_MAX / 8

# Looking an enum member up on its class costs hundreds of ns on 3.11; task work runs per input.
_TRACE_PC: Final = Mode.TRACE_PC


class DeviceState:
    """What one device is, as the profile rules see it.  Read and written under the lock."""

    __slots__ = ("__weakref__", "area", "bitmap_words", "closed", "mode", "owner", "path", "size")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mode = Mode.DISABLED
        self.size = 0  # area size in words, 0 before init_trace
        self.bitmap_words = 0  # unique mode's bitmap at the area's start; 0 in other modes
        self.area: _area.Area | None = None  # what the device writes to now
        self.owner: tasks.Task | None = None  # the task that enabled it
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"DeviceState(mode={self.mode.name}, size={self.size}, "
            f"bitmap_words={self.bitmap_words}, area={self.area!r}, "
            f"owner={self.owner!r}, closed={self.closed}, path={self.path!r})"
        )


def make_area(size: int, path: str | None) -> _area.Area:
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


class Rules:
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

    def unique_enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        raise NotImplementedError

    def reset_trace(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
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


class _GVisorRules(Rules):
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
            st.area = make_area(st.size, st.path)
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
        work = _CoverageWork(st)
        had_work = work in task.work
        try:
            # Registered work and a collecting pending set do nothing until the commit.
            tasks.add_work(task, work)
            _area._set_collecting(True)
            _area._clear_pending()  # ClearCoverageData: only coverage from now on
            st.mode, st.owner, self.kcov[task], self.tracing[st] = Mode.TRACE_PC, task, st, None
        except BaseException:
            if st.owner is not task and not had_work:
                # Not enabled: gVisor registers no work.  Left registered, it would run if
                # another task enabled the device later, without this task being a holder
                # that sync_collecting knows of.
                tasks.remove_work(task, work)
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

    def unique_enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        fail(errno.ENOTTY)  # not a gVisor command

    def reset_trace(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        fail(errno.ENOTTY)

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
        # The devices whose task work some live task still has registered.  Only enable
        # registers it, so every such task is a key of t.kcov (until it exits).
        held = {
            work.state
            for task in self.kcov
            if tasks.is_live(task)
            for work in task.work
            if isinstance(work, _CoverageWork)
        }
        self.tracing = {st: None for st in self.tracing if _collects(st, held)}
        _area._set_collecting(bool(self.tracing))


def _collects(st: DeviceState, held: set[DeviceState]) -> bool:
    # A device collects while it traces and some live task will run its task work: not only
    # its owner.  gVisor registers the work on the task that enables the device and the work
    # re-registers itself while the device traces, whoever owns it by then: a task that
    # enabled the device before a hand-over, and made no call since, still moves the pending
    # PCs into it, even after the new owner exited still owning it (its exit reset only the
    # device it enabled last).  With no live task holding the work, nothing can move pending
    # PCs into the device, and the next enable clears them anyway: the set need not collect
    # for it.  Once False, False for good: only enable registers work, and it also makes the
    # device tracing again.
    return st.mode is _TRACE_PC and not st.closed and st in held


class _LinuxRules(Rules):
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
            area = make_area(size, st.path)
        except MemoryError:
            fail(errno.ENOMEM)
        st.area, st.size, st.mode = area, size, Mode.INIT

    def mmap(self, st: DeviceState, task: tasks.Task, length: int, offset: int) -> _area.Area:
        if st.area is None or offset != 0 or page_round(length) != st.size * 8:
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

    def unique_enable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        # KCOV_UNIQUE_ENABLE: checked as KCOV_ENABLE, the argument being the bitmap's words,
        # which must leave the trace at least its count and one PC.
        if st.mode != Mode.INIT or st.area is None:
            fail(errno.EINVAL)
        if st.owner is not None or self.kcov.get(task) is not None:
            fail(errno.EBUSY)
        if arg == 0 or arg > st.size - 2:
            fail(errno.EINVAL)
        try:
            st.mode, st.bitmap_words, st.owner, self.kcov[task] = Mode.UNIQUE_PC, arg, task, st
            self.sync_target(task)
        except BaseException:
            self.sync_target(task)
            raise

    def reset_trace(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        # KCOV_RESET_TRACE: the owner zeroes the bitmap and the trace's count.
        if arg != 0 or self.kcov.get(task) is not st:
            fail(errno.EINVAL)
        if st.mode < Mode.TRACE_PC or st.area is None:
            fail(errno.EINVAL)
        _area._reset_trace(st.area, st.bitmap_words)

    def disable(self, st: DeviceState, task: tasks.Task, arg: int) -> None:
        if arg != 0 or self.kcov.get(task) is not st:
            fail(errno.EINVAL)
        area = None if st.closed else st.area
        try:
            st.mode, st.owner, st.area, st.bitmap_words, self.kcov[task] = (
                Mode.INIT,
                None,
                area,
                0,
                None,
            )
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
            st.mode, st.owner, st.area, st.bitmap_words, self.kcov[task] = (
                Mode.INIT,
                None,
                area,
                0,
                None,
            )
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
        elif st.mode == Mode.UNIQUE_PC and st.area is not None:
            tasks.set_unique_target(task, st.area, st.bitmap_words)
        else:
            tasks.set_target(task, st.area, int(st.mode))


_GVISOR: Final = _GVisorRules()
RULES: Final[dict[str, Rules]] = {"gvisor": _GVISOR, "linux": _LinuxRules()}
for _rules in RULES.values():
    tasks.register(_rules)


def page_round(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


__all__ = [
    "GVISOR_MAX_WORDS",
    "LINUX_MAX_WORDS",
    "PROFILES",
    "RULES",
    "DeviceState",
    "Rules",
    "make_area",
    "page_round",
]
