"""Owner-task bookkeeping: which thread is which task, what it owns, what runs when it leaves.

Owns:
- ``Task``: the kernel's task for one Python thread in one process.  ``gvisor_kcov`` is gVisor's
  ``t.kcov`` (the device this thread enabled last, kept after DISABLE), ``linux_kcov`` is Linux's
  ``current->kcov`` (the device it has enabled now), ``work`` is its registered task work.
- Thread-exit detection without the user's help: each task's thread holds a sentinel in a
  ``threading.local``; CPython drops it when the thread's state is cleared, which happens in the
  exiting thread before ``Thread.join()`` returns, and the sentinel's ``__del__`` runs the exit
  handlers (gVisor ``OnTaskExit``, Linux ``kcov_task_exit``).
- ``LOCK``: the one lock of the state machine (the kernel's per-device mutexes folded into one).
  Every device call, every task-work run and every exit handler holds it.  It is never taken on
  a per-event path: ``trace_pc`` and friends read only C state.
- Fork: before ``os.fork`` the lock is taken so the child sees a consistent state; in the child
  every task starts afresh (new generation), no device keeps an owner, and the per-thread
  recording targets and the pending set are cleared.

Threading contract: ``current()`` is called by the thread it describes.  Everything else that
reads or writes tasks or devices holds ``LOCK``.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from kcovx import _area

if TYPE_CHECKING:
    from kcovx.device import Device

LOCK = threading.RLock()

# Bumped in every fork child: tasks of an older generation belong to the parent.
_generation = 0

_local = threading.local()

# Every open device, for the fork handler and for the gvisor collecting switch.
DEVICES: weakref.WeakSet[Device] = weakref.WeakSet()


class Task:
    """The task of one Python thread (in one process)."""

    __slots__ = (
        "__weakref__",
        "exited",
        "generation",
        "gvisor_kcov",
        "ident",
        "linux_kcov",
        "name",
        "target",
        "work",
    )

    def __init__(self, thread: threading.Thread) -> None:
        self.ident: int = threading.get_ident()
        self.name: str = thread.name
        self.generation = _generation
        self.exited = False
        self.gvisor_kcov: Device | None = None
        self.linux_kcov: Device | None = None
        # The Area the C per-thread target points into; held so it outlives the pointer.
        self.target: _area.Area | None = None
        self.work: list[Device] = []

    def __repr__(self) -> str:
        return f"<kcovx task {self.name!r} ident={self.ident}>"


class _ExitSentinel:
    """Dropped with its thread's locals; its finaliser runs the task's exit handlers."""

    __slots__ = ("task",)

    def __init__(self, task: Task) -> None:
        self.task = task

    def __del__(self) -> None:
        task = self.task
        if task.generation != _generation:
            return  # a parent's thread seen from a fork child: the fork handler dealt with it
        if sys.is_finalizing():
            # The interpreter is going away: nothing will read the devices again, and a daemon
            # thread frozen at shutdown may hold LOCK forever, so taking it could hang the exit.
            return
        # An error here is reported by CPython as unraisable ("Exception ignored in ...").
        _task_exit(task)


def in_this_process(task: Task) -> bool:
    """False for a task of the parent process, seen from a fork child."""
    return task.generation == _generation


def is_live(task: Task) -> bool:
    """True while task's thread runs in this process (not exited, not a parent's before fork)."""
    return not task.exited and task.generation == _generation


def current() -> Task:
    """The calling thread's task, created on first use."""
    task: Task | None = getattr(_local, "task", None)
    if task is None or task.generation != _generation:
        task = Task(threading.current_thread())
        _local.task = task
        _local.sentinel = _ExitSentinel(task)
    return task


# Exit handlers, one per profile, installed by device.py: (task) -> None, called under LOCK.
exit_handlers: list[Callable[[Task], None]] = []


def _task_exit(task: Task) -> None:
    with LOCK:
        task.exited = True
        for handler in exit_handlers:
            handler(task)
        task.work.clear()
        update_collecting()
        if task.target is not None and task.ident == threading.get_ident():
            _area._set_thread_target(None, 0)
        task.target = None


def set_target(task: Task, area: _area.Area | None, mode: int) -> None:
    """Point (or, with None, stop pointing) the calling thread's C recording target at area."""
    if task.ident != threading.get_ident():
        raise RuntimeError("a thread's recording target can only be set by that thread")
    _area._set_thread_target(area, mode)
    task.target = area


def return_to_user(task: Task) -> None:
    """What the kernel does on the way back to user space: run the task's registered work.

    Each work item re-registers itself while it still has work to do.  Called under LOCK.
    """
    if task.work:
        work, task.work = task.work, []
        for device in work:
            device._task_work(task)


def update_collecting() -> None:
    """Turn the pending set on exactly while some gvisor device is tracing.  Under LOCK."""
    on = any(d._collects() for d in DEVICES)
    _area._set_collecting(on)


def _before_fork() -> None:
    LOCK.acquire()


def _after_fork_parent() -> None:
    LOCK.release()


def _after_fork_child() -> None:
    global LOCK, _generation
    _generation += 1
    LOCK = threading.RLock()
    _area._set_thread_target(None, 0)
    for device in list(DEVICES):
        device._after_fork_child()
    _area._set_collecting(False)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
)
