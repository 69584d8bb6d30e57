"""The kcov device: ``Device``, one open kcov file, and its system calls.

Owns: the calls (ioctl, init_trace, enable, disable, mmap/map_area, flush, close) and what
they share: argument conversion, EBADF on a closed device, the lock, the calling thread's task
work on the way out (as a return to user space), EDEADLK for a call made in the middle of
another of the same thread (a signal handler, a finaliser), closes deferred to the end of the
interrupted call, and the numpy view of the mapping.  What each call does to the device is
the profile's (profiles.py: the rules, the per-task bookkeeping, the state they act on).

Threading: every public method converts its arguments, then holds ``tasks.lock()`` for the
state change and, on the way out, runs the calling thread's task work.  Nothing here runs per
recorded PC.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from kcovx import _area, tasks
from kcovx.abi import (
    KCOV_DISABLE,
    KCOV_ENABLE,
    KCOV_INIT_TRACE,
    KCOV_RESET_TRACE,
    KCOV_TRACE_PC,
    KCOV_UNIQUE_ENABLE,
    KCOV_WORDS_PER_CMP,
    PAGE_SIZE,
    Mode,
)
from kcovx.errors import as_u64, fail
from kcovx.profiles import PROFILES, RULES, DeviceState, Rules, page_round

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    AreaView = npt.NDArray[np.uint64]

_U64_MASK: Final = (1 << 64) - 1

# The lock object never changes (tasks.lock()), so it is bound once: flush() is per-input hot.
_LOCK: Final = tasks.lock()
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


def _view(area: _area.Area, length: int, offset: int, writable: bool = True) -> AreaView:
    """The part of the mapping [offset, offset + page-rounded length) that lies in the area."""
    import numpy as np  # on first use: `import kcovx` does not pay for numpy

    mem = memoryview(area) if writable else memoryview(area).toreadonly()
    words: AreaView = np.frombuffer(mem, dtype=np.uint64)
    lo = min(offset // 8, area.size)
    hi = min((offset + page_round(length)) // 8, area.size)
    return words[lo:hi]


class Device:
    """One open kcov device.  Create with ``kcovx.open()``."""

    __slots__ = ("__weakref__", "_rules", "_state")

    def __init__(self, profile: str = "gvisor", path: str | os.PathLike[str] | None = None):
        if not isinstance(profile, str):
            raise TypeError(f"profile must be a str, got {type(profile).__name__}")
        rules = RULES.get(profile)
        if rules is None:
            raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
        if path is not None:
            if not isinstance(path, (str, bytes, os.PathLike)):
                raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
            path = os.fsdecode(os.fspath(path))
            if not path or "\0" in path:
                raise ValueError(f"path must be a non-empty file name without NUL, got {path!r}")
        self._rules: Rules = rules
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

    def unique_enable(self, bitmap_words: int) -> int:
        """``ioctl(KCOV_UNIQUE_ENABLE, bitmap_words)`` (linux profile): record each block's
        first hit only.  The area's first bitmap_words words are the bitmap (one bit per block
        index), the trace (count, then PCs) follows them."""
        return self.ioctl(KCOV_UNIQUE_ENABLE, as_u64(bitmap_words, "bitmap_words"))

    def reset_trace(self) -> int:
        """``ioctl(KCOV_RESET_TRACE, 0)`` (linux profile, owner only): zero the unique-mode
        bitmap and the trace's count (word 0 in the other modes)."""
        return self.ioctl(KCOV_RESET_TRACE, 0)

    def mmap(self, length: int | None = None, offset: int = 0, writable: bool = True) -> AreaView:
        """Map the area: a numpy uint64 view of the shared words.

        length is in bytes (default: the whole area); offset must be page-aligned.  The view
        covers the part of the page-rounded mapping that lies inside the area.  With
        ``writable=False`` the view is read-only for good (its buffer is; numpy refuses to make
        it writable), so a consumer can read an area it cannot corrupt.
        """
        if not isinstance(writable, bool):
            raise TypeError(f"writable must be a bool, got {type(writable).__name__}")
        n = None if length is None else as_u64(length, "length")
        return self._syscall(self._mmap, n, as_u64(offset, "offset"), writable)

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
        elif cmd == KCOV_UNIQUE_ENABLE:
            self._rules.unique_enable(self._state, task, arg)
        elif cmd == KCOV_RESET_TRACE:
            self._rules.reset_trace(self._state, task, arg)
        else:  # KCOV_REMOTE_ENABLE included: no remote coverage (see README)
            fail(errno.ENOTTY)

    def _map(self, task: tasks.Task, length: int | None, offset: int) -> tuple[_area.Area, int]:
        n = self._state.size * 8 if length is None else length
        # The generic mmap checks come before the device's.
        if offset & (PAGE_SIZE - 1) or n == 0:
            fail(errno.EINVAL)
        if n > _U64_MASK - PAGE_SIZE + 1 or offset + page_round(n) > _U64_MASK:
            fail(errno.ENOMEM)
        return self._rules.mmap(self._state, task, n, offset), n

    def _mmap(self, task: tasks.Task, length: int | None, offset: int, writable: bool) -> AreaView:
        area, n = self._map(task, length, offset)
        return _view(area, n, offset, writable)

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


__all__ = ["PROFILES", "Device", "open"]
