"""Threads as tasks: identity, exit, fork, task work and the lock.  Knows nothing of devices.

Owns:
- ``Task``: the kernel's task for one Python thread in one process: its ident and name, whether
  it has exited, its C recording target (the per-thread pointer of the core) and its task work.
- Exit detection without the user's help: each task's thread holds two sentinels in a
  ``threading.local``; CPython drops them when the thread's state is cleared, which happens in
  the exiting thread before ``Thread.join()`` returns, and each sentinel's ``__del__`` runs
  every client's ``on_task_exit`` (twice: see ``_ExitSentinel``).
- Fork: the lock is held across ``os.fork`` so the child sees a consistent state; in the child
  every task starts afresh (new generation), the calling thread's recording target is cleared
  and every client's ``on_fork_child`` runs.  The thread states of the parent's other threads,
  which CPython drops in the child before the after-fork hooks, are not task exits.
- ``lock()``: the one lock of the state machine (the kernel's per-device mutexes folded into
  one), the same object for the life of the process, fork children included.  Every device
  call, every task-work run and every exit handler holds it.  It is never taken on a per-event
  path: ``trace_pc`` and friends read only C state.

Clients (the device profiles) plug in through two small protocols: ``TaskClient`` (exit and
fork notifications) and ``TaskWork`` (work a task runs on its way back to user space).

Asynchronous exceptions: task work stays registered until it says it is done, so an exception
that interrupts it loses nothing; a task's exit is run again if interrupted (exit handlers
must be idempotent), and the exception is re-raised once it is done.

Threading contract: ``current()`` is called by the thread it describes.  Everything else that
reads or writes tasks holds ``lock()``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Protocol

from kcovx import _area

_LOCK = threading.RLock()

# Bumped in every fork child: tasks of an older generation belong to the parent.
_generation = 0

_local = threading.local()

# How many times a task exit is run when asynchronous exceptions keep interrupting it.  A
# thread sent exceptions in a loop while it exits (a signal storm, PyThreadState_SetAsyncExc
# from another thread) is interrupted many times; an exit given up leaves its devices traced
# for a dead owner for good, so only an exit that fails by itself every time (a bug, then
# reported) may exhaust this.  Each run is a few microseconds.
_EXIT_ATTEMPTS = 1000


class TaskWork(Protocol):
    """Work registered on a task, run under ``lock()`` each time the task returns to user
    space; it stays registered while it returns True."""

    def run_task_work(self, task: Task) -> bool: ...


class TaskClient(Protocol):
    """What a client learns about tasks.  Both hooks run under ``lock()``."""

    def on_task_exit(self, task: Task) -> None:
        """task's thread has exited.  Must be idempotent: it is re-run if interrupted."""

    def on_fork_child(self) -> None:
        """In a fork child, before any other kcovx call: every task so far is the parent's."""


_clients: list[TaskClient] = []


class Task:
    """The task of one Python thread (in one process)."""

    __slots__ = ("__weakref__", "exited", "generation", "ident", "name", "pid", "target", "work")

    def __init__(self, thread: threading.Thread) -> None:
        self.ident: int = threading.get_ident()
        self.name: str = thread.name
        self.generation = _generation
        self.pid = os.getpid()
        self.exited = False
        # The Area the C per-thread target points into; held so it outlives the pointer.
        self.target: _area.Area | None = None
        self.work: list[TaskWork] = []

    def __repr__(self) -> str:
        return f"<kcovx task {self.name!r} ident={self.ident}>"


def _run_exit(task: Task) -> None:
    """Run task's exit whole.  It is retried if an asynchronous exception interrupts it (every
    step is idempotent); the exception is re-raised afterwards, which CPython reports as
    unraisable ("Exception ignored in ...")."""
    interrupted: BaseException | None = None
    for _ in range(_EXIT_ATTEMPTS):
        try:
            _task_exit(task)
            break
        except BaseException as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


class _ExitSentinel:
    """Dropped with its thread's locals; its finaliser runs the task's exit handlers.

    Each task has two (``_local.sentinel`` is a pair), so the exit runs twice: an exception
    at a Python function's entry (a signal handler, an asynchronous exception) makes CPython
    report it and skip the whole function, so one finaliser can be skipped, and the report
    may even keep that sentinel alive (its traceback holds the finaliser's frame); the other
    one then runs the exit.  After a complete run, a second one changes nothing.
    """

    __slots__ = ("task",)

    def __init__(self, task: Task) -> None:
        self.task = task

    def __del__(self) -> None:
        _run_exit(self.task)


def lock() -> threading.RLock:
    """The state machine's lock (one object for the life of the process)."""
    return _LOCK


def register(client: TaskClient) -> None:
    """Tell client about every task exit and every fork child from now on."""
    with _LOCK:
        _clients.append(client)


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
        sentinels = (_ExitSentinel(task), _ExitSentinel(task))
        _local.sentinel, _local.task = sentinels, task  # both or neither: no call in between
    return task


def _task_exit(task: Task) -> None:
    if task.generation != _generation:
        return  # a parent's thread seen from a fork child: the fork handler dealt with it
    if sys.is_finalizing():
        # The interpreter is going away: nothing will read the devices again, and a daemon
        # thread frozen at shutdown may hold the lock forever, so taking it could hang.
        return
    if task.pid != os.getpid():
        # A fork child dropping the parent's other threads before the after-fork hooks have
        # run: those threads live on in the parent, their devices stay theirs.
        return
    with _LOCK:
        task.exited = True
        for client in _clients:
            client.on_task_exit(task)
        task.work.clear()
        if task.target is not None and task.ident == threading.get_ident():
            _area._set_thread_target(None, 0)
        task.target = None


def add_work(task: Task, work: TaskWork) -> None:
    """Register work on task (once: registering it again changes nothing).  Under lock()."""
    if work not in task.work:
        task.work.append(work)


def remove_work(task: Task, work: TaskWork) -> None:
    """Unregister work from task, if registered.  Under lock()."""
    if work in task.work:
        task.work.remove(work)


def set_unique_target(task: Task, area: _area.Area, bitmap_words: int) -> None:
    """Make area, in unique mode (its first bitmap_words words the bitmap), the calling
    thread's only C recording target."""
    if task.ident != threading.get_ident():
        raise RuntimeError("a thread's recording target can only be set by that thread")
    _area._set_thread_unique(area, bitmap_words)
    task.target = area


def set_target(task: Task, area: _area.Area | None, mode: int) -> None:
    """Point (or, with None, stop pointing) the calling thread's C recording target at area."""
    if task.ident != threading.get_ident():
        raise RuntimeError("a thread's recording target can only be set by that thread")
    _area._set_thread_target(area, mode)
    task.target = area


def return_to_user(task: Task) -> None:
    """What the kernel does on the way back to user space: run the task's registered work.

    Work is dropped only once it returns False, so an exception in the middle keeps it
    registered for the next return.  Called under lock().
    """
    work = task.work
    if work:
        for item in work[:]:
            if not item.run_task_work(task):
                work.remove(item)


def _after_fork_child() -> None:
    # Runs first of this module's child hooks, while the forking thread still holds _LOCK
    # (taken before the fork): it is this process's only thread, with the same ident, so
    # the lock stays valid and is released by the hook registered after this one.
    global _generation
    _generation += 1
    _area._set_thread_target(None, 0)
    for client in _clients:
        client.on_fork_child()


# The lock is taken and released by its own C methods, not from a Python function: a signal
# handler can run at the entry of any Python function, CPython reports a fork hook's exception
# and carries on, and a hook interrupted that way would leave the lock held for good.  The
# child's work above runs in Python (an interruption there skips it, and is reported); the
# release after it runs whatever happened to it.  Child hooks run in registration order.
os.register_at_fork(after_in_child=_after_fork_child)
os.register_at_fork(
    before=_LOCK.acquire, after_in_parent=_LOCK.release, after_in_child=_LOCK.release
)
