"""Asynchronous exceptions inside device operations leave the state machine valid.

A signal handler that raises (KeyboardInterrupt on SIGINT) runs where CPython checks for
pending calls: at a function's entry, after a C function returns, and on a loop's back-edge.
``Injector`` raises KeyboardInterrupt at the n-th such point inside kcovx's device.py,
profiles.py and tasks.py -- every 'call' event there and every line event that jumps backwards
(sys.settrace), and every 'c_return' from a C call made there (sys.setprofile) -- and each
test runs one operation for n = 1, 2, ... until it completes without reaching the n-th point.
(Not at every line: between two lines without a call CPython runs no handler, and injecting
there would, for one, leave a lock held by a ``with`` whose body has not started.)  Signal
handlers run only in the main thread, so operations run there; a thread's exit runs in the
exiting thread, where only PyThreadState_SetAsyncExc can interrupt it, and is injected there
the same way (except at the sentinel finaliser's own entry, where CPython reports the
exception and skips the finaliser: a test of its own further down).
Device calls that a handler makes in the middle of another device call are nested calls
(refused with EDEADLK, close deferred), checked at the same points further down.

Invariants checked after every injection:
1. Atomic: the device's (mode, owner, size, closed, has area) is either what it was before the
   operation or what the same operation gives when not interrupted; a thread exit is never
   half done (its devices are back in INIT with no owner).
2. The KeyboardInterrupt reaches the caller (it is not swallowed) whenever it was raised.
3. Bookkeeping matches the state: a linux device is TRACE_PC/TRACE_CMP exactly when some task
   has it as its enabled device, and that task is its owner; a gvisor device tracing for a
   live owner has its task work registered on that owner and the pending set collecting; no
   gvisor device collecting means the pending set is off.
4. Recording works: this thread records into the device it enabled and nowhere else; after
   the documented recovery (init_trace / mmap / enable as the mode requires) trace_pc + flush
   delivers the PC exactly once, a PC made pending before the operation is not lost, and
   disable then returns the device to INIT with no owner (no wedged EINVAL).
"""

from __future__ import annotations

import errno
import gc
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from _kcovx_support import Worker, in_thread

import kcovx
from kcovx import Mode, _area, device, profiles, tasks

FILES = {device.__file__, profiles.__file__, tasks.__file__}
MAX_POINTS = 2000  # more injection points than any operation has
_fresh_pcs = itertools.count(0xC0000000)  # PCs never seen before: each one grows the pending set


class Injector:
    """Raises KeyboardInterrupt at the n-th injection point in kcovx device/tasks code, in the
    thread that installed it.  n = 0 only counts."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.fired = False
        self._lines: dict[int, int] = {}

    def _point(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.fired = True
            raise KeyboardInterrupt(f"injected at point {self.n}")

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in FILES:
            return None
        if event == "call" and frame.f_code.co_qualname != "_ExitSentinel.__del__":
            self._point()
        return self._trace_lines

    def _trace_lines(self, frame: FrameType, event: str, arg: Any) -> Any:
        # A loop's back-edge: a line event at an earlier instruction than the last one seen
        # in its frame (not an earlier line: a with's exit code carries the with's line).
        if event == "line":
            last = self._lines.get(id(frame), -1)
            self._lines[id(frame)] = frame.f_lasti
            if frame.f_lasti <= last:
                self._point()
        return self._trace_lines

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_return" and frame.f_code.co_filename in FILES:
            self._point()

    def run(self, op: Callable[[], Any]) -> BaseException | None:
        """op() under injection; the exception it raised, if any."""
        sys.settrace(self._trace)
        sys.setprofile(self._profile)
        try:
            op()
        except BaseException as exc:
            return exc
        finally:
            sys.settrace(None)
            sys.setprofile(None)
        return None


def snapshot(dev: kcovx.Device) -> tuple[Any, ...]:
    owner = dev.owner
    who = None if owner is None else "me" if owner == threading.get_ident() else owner
    return (dev.mode, who, dev.size, dev.closed, dev.area is not None)


def collects(st: profiles.DeviceState) -> bool:
    owner = st.owner
    return st.mode == Mode.TRACE_PC and owner is not None and tasks.is_live(owner) and not st.closed


def check_bookkeeping(dev: kcovx.Device) -> None:
    st: profiles.DeviceState = dev._state
    linux = profiles.RULES["linux"]
    assert isinstance(linux, profiles._LinuxRules)
    gvisor = profiles._GVISOR
    if dev.profile == "linux":
        holders = [t for t, s in linux.kcov.items() if s is st]
        if st.mode in (Mode.TRACE_PC, Mode.TRACE_CMP):
            assert holders == [st.owner]
        else:
            assert holders == [] and st.owner is None
    else:
        assert st.owner is None or st.mode == Mode.TRACE_PC
        if collects(st):
            assert st.owner is not None
            assert profiles._CoverageWork(st) in st.owner.work
    # This thread records into the area of the linux device it has enabled, or nowhere.
    me = tasks.current()
    mine = linux.kcov.get(me)
    assert me.target is (None if mine is None else mine.area)
    # The pending set collects exactly while some gvisor device collects.
    want = any(collects(s) for s in gvisor.states)
    before = _area._pending_len()
    kcovx.trace_pc(next(_fresh_pcs))
    assert _area._pending_len() == (before + 1 if want else 0)


def words(dev: kcovx.Device) -> list[int]:
    area = dev.area
    assert area is not None
    view = memoryview(area)
    return [int(view[i]) for i in range(1, min(int(view[0]), area.size - 1) + 1)]


def exited_after_one_interruption(dev: kcovx.Device, unraisable: list[Any]) -> None:
    """The owner's exit was interrupted once (reported as unraisable) and still ran whole:
    the device is back in INIT, unowned, consistent, and records again after re-enabling."""
    assert [type(u.exc_value) for u in unraisable] == [KeyboardInterrupt]
    assert dev.mode == Mode.INIT and dev.owner is None
    check_bookkeeping(dev)
    recover_and_record(dev, None)
    dev.close()


def recover_and_record(dev: kcovx.Device, pending: int | None) -> None:
    """Bring dev to 'enabled by this thread' the documented way; check one PC arrives."""
    me = threading.get_ident()
    if dev.closed:
        return
    if dev.mode == Mode.DISABLED:
        dev.init_trace(512)
    if dev.mode == Mode.INIT:
        if dev.profile == "gvisor" and dev.area is None:
            dev.mmap()
        dev.enable()
        pending = None  # enable forgets what was covered before it (gvisor)
    assert dev.owner == me
    area = dev.area
    assert area is not None
    memoryview(area)[0] = 0
    kcovx.trace_pc(0x5EC0)
    dev.flush()
    got = words(dev)
    assert got.count(0x5EC0) == 1, got
    if pending is not None:
        assert got.count(pending) == 1, got
    dev.disable()
    assert dev.mode == Mode.INIT and dev.owner is None


def finish(dev: kcovx.Device) -> None:
    if not dev.closed and dev.owner == threading.get_ident():
        dev.disable()
    if not dev.closed:
        dev.close()


# -- the operations: (setup to the state before, the operation) -------------------------------

PC_PENDING = 0xFEED


def _inited(dev: kcovx.Device) -> None:
    dev.init_trace(512)


def _mapped(dev: kcovx.Device) -> None:
    dev.init_trace(512)
    dev.mmap()


def _enabled(dev: kcovx.Device) -> None:
    _mapped(dev)
    dev.enable()


def _enabled_pending(dev: kcovx.Device) -> None:
    _enabled(dev)
    kcovx.trace_pc(PC_PENDING)
    if dev.profile == "linux":
        dev.disable()  # linux records at once: the PC is in the area, nothing pending
        dev.enable()


def _refused(call: Callable[[], Any]) -> None:
    """call() must fail with the kernel's errno (an interruption may come first)."""
    with pytest.raises(OSError):
        call()


OPERATIONS: dict[str, tuple[Callable[[kcovx.Device], None], Callable[[kcovx.Device], Any]]] = {
    "init_trace": (lambda dev: None, lambda dev: dev.init_trace(512)),
    "mmap": (_inited, lambda dev: dev.mmap()),
    "mmap_again": (_mapped, lambda dev: dev.mmap()),
    "enable": (_mapped, lambda dev: dev.enable()),
    "disable": (_enabled, lambda dev: dev.disable()),
    "flush": (_enabled_pending, lambda dev: dev.flush()),
    "close_enabled": (_enabled, lambda dev: dev.close()),
    "close_init": (_mapped, lambda dev: dev.close()),
    "bad_enable": (_enabled, lambda dev: _refused(dev.enable)),
    "bad_ioctl": (_mapped, lambda dev: _refused(lambda: dev.ioctl(0x1234, 0))),
    "bad_disable": (_mapped, lambda dev: _refused(dev.disable)),
}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    yield
    me = tasks.current()
    assert me.target is None, "the main thread still records somewhere"
    assert _area._pending_len() == 0


def one_trial(profile: str, op_name: str, n: int, after: tuple[Any, ...]) -> bool:
    """Interrupt op_name at point n on a fresh device and check the invariants.  Returns
    whether the n-th point was reached."""
    setup, op = OPERATIONS[op_name]
    # Not kept by `devices`: every live device adds points to the collecting switch.
    dev = kcovx.open(profile)
    setup(dev)
    before = snapshot(dev)
    inj = Injector(n)
    exc = inj.run(lambda: op(dev))
    if not inj.fired:
        assert exc is None, exc
        assert snapshot(dev) == after
        finish(dev)
        return False
    assert isinstance(exc, KeyboardInterrupt), (n, exc)
    now = snapshot(dev)
    assert now in (before, after), (n, before, after, now)
    check_bookkeeping(dev)
    pending = PC_PENDING if op_name == "flush" and profile == "gvisor" else None
    if pending is not None and now[0] == Mode.TRACE_PC and PC_PENDING in words(dev):
        pending = None  # the interrupted flush delivered it already
        assert words(dev).count(PC_PENDING) == 1
    recover_and_record(dev, pending)
    check_bookkeeping(dev)
    finish(dev)
    return True


def reference_after(profile: str, op_name: str) -> tuple[Any, ...]:
    setup, op = OPERATIONS[op_name]
    reference = kcovx.open(profile)
    setup(reference)
    op(reference)
    after = snapshot(reference)
    finish(reference)
    return after


@pytest.mark.parametrize("op_name", list(OPERATIONS))
@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_interrupted_operation_leaves_valid_state(
    no_leftovers: None, profile: str, op_name: str
) -> None:
    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    if profile == "linux" and op_name == "close_enabled":
        # Closing its enabled linux device leaves a thread recording until it exits: each
        # trial runs in a thread of its own (and its owner is that thread, not the main one).
        run = in_thread
    after = run(reference_after, profile, op_name)
    for n in range(1, MAX_POINTS):
        if not run(one_trial, profile, op_name, n, after):
            assert n > 1
            return
    pytest.fail("the operation never completed")


def _exit_scenario(profile: str, n: int) -> tuple[kcovx.Device, Injector, list[Any]]:
    dev = kcovx.open(profile)  # not kept by `devices`: see one_trial
    _mapped(dev)
    w = Worker()
    w.call(dev.enable)
    inj = Injector(n)
    unraisable: list[Any] = []

    def leave() -> None:
        # What CPython does when the thread's state is cleared: drop its locals.
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        try:
            inj.run(lambda: delattr(tasks._local, "sentinel"))
        finally:
            sys.unraisablehook = old_hook

    w.call(leave)
    w.stop()
    return dev, inj, unraisable


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_interrupted_task_exit_completes(no_leftovers: None, profile: str) -> None:
    for n in range(1, MAX_POINTS):
        gc.collect()  # earlier trials' devices, held by their tracebacks' frames
        dev, inj, unraisable = _exit_scenario(profile, n)
        if inj.fired:
            # CPython reports an exception from a finaliser as unraisable; it is re-raised
            # only after the exit is done.
            assert [type(u.exc_value) for u in unraisable] == [KeyboardInterrupt]
        else:
            assert unraisable == []
        assert dev.mode == Mode.INIT and dev.owner is None, n
        check_bookkeeping(dev)
        recover_and_record(dev, None)
        dev.close()
        if not inj.fired:
            assert n > 1
            return
    pytest.fail("the exit never completed")


# -- device calls nested inside device calls ---------------------------------------------------
# A signal handler (or a finaliser the garbage collector runs) may itself make device calls,
# at any point where it can run: in the middle of another device call of the same thread.  A
# nested call that lands inside the other call's locked section would act on a half-checked
# state (a second enable between the other enable's checks and its commit, a close while the
# collecting set is being rebuilt), so it is refused with EDEADLK and changes nothing; one that
# lands outside runs normally.


class Nester(Injector):
    """Runs nested() at the n-th injection point instead of raising; keeps what it raised."""

    def __init__(self, n: int, nested: Callable[[], Any]) -> None:
        super().__init__(n)
        self.nested = nested
        self.nested_exc: BaseException | None = None

    def _point(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.fired = True
            try:
                self.nested()
            except BaseException as exc:
                self.nested_exc = exc


NESTED: dict[str, Callable[[kcovx.Device, kcovx.Device], Any]] = {
    "enable_other": lambda dev, other: other.enable(),
    "close_other": lambda dev, other: other.close(),
    "close_same": lambda dev, other: dev.close(),
    "enable_same": lambda dev, other: dev.enable(),
    "disable_same": lambda dev, other: dev.disable(),
    "flush_same": lambda dev, other: dev.flush(),
}


def nested_trial(profile: str, op_name: str, nested_name: str, n: int) -> bool:
    setup, op = OPERATIONS[op_name]
    dev, other = kcovx.open(profile), kcovx.open(profile)
    setup(dev)
    _mapped(other)
    nest = Nester(n, lambda: NESTED[nested_name](dev, other))
    exc = nest.run(lambda: op(dev))
    # Whatever ran first, each call failed only as a kcov call fails.
    assert exc is None or isinstance(exc, OSError), (n, exc)
    nexc = nest.nested_exc
    assert nexc is None or isinstance(nexc, OSError), (n, nexc)
    for d in (dev, other):
        check_bookkeeping(d)
    linux = profiles.RULES["linux"]
    assert isinstance(linux, profiles._LinuxRules)
    stuck = linux.kcov.get(tasks.current())
    if stuck is not None and stuck.closed:
        # A nested close after the enable returned: this thread records into the closed
        # device until it exits (Linux), so it can enable nothing else; the exit cleans up.
        assert stuck is dev._state
        finish(other)
        return nest.fired
    # One at a time: a gvisor task may have both enabled, and then either one's task work
    # takes the pending PCs.
    for d in (dev, other):
        if not d.closed and d.owner == threading.get_ident():
            d.disable()
    for d in (dev, other):
        recover_and_record(d, None)
        finish(d)
    return nest.fired


@pytest.mark.parametrize("nested_name", list(NESTED))
@pytest.mark.parametrize("op_name", ["enable", "disable", "flush", "close_enabled", "mmap"])
@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_nested_device_call_is_refused_or_whole(
    no_leftovers: None, profile: str, op_name: str, nested_name: str
) -> None:
    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    if profile == "linux":
        run = in_thread  # a closed enabled device records for its thread until that exits
    for n in range(1, MAX_POINTS):
        if not run(nested_trial, profile, op_name, nested_name, n):
            assert n > 1
            return
    pytest.fail("the operation never completed")


def test_nested_device_call_inside_a_call_is_edeadlk(no_leftovers: None) -> None:
    dev, other = kcovx.open("linux"), kcovx.open("linux")
    _mapped(dev)
    _mapped(other)
    seen: list[BaseException | None] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        # The first C call the linux enable rule makes: it has checked nothing yet.
        if event == "c_return" and frame.f_code.co_qualname == "_LinuxRules.enable" and not seen:
            try:
                other.enable()
                seen.append(None)
            except OSError as exc:
                seen.append(exc)

    sys.setprofile(profile)
    try:
        dev.enable()
    finally:
        sys.setprofile(None)
    assert len(seen) == 1 and isinstance(seen[0], OSError)
    assert seen[0].errno == errno.EDEADLK
    assert other.mode == Mode.INIT and other.owner is None
    assert dev.owner == threading.get_ident()
    finish(dev)
    finish(other)


@pytest.mark.parametrize("storm", [3, 10, 50])
@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_task_exit_interrupted_again_and_again_completes(
    no_leftovers: None, monkeypatch: pytest.MonkeyPatch, profile: str, storm: int
) -> None:
    # A thread that keeps being sent exceptions while it exits (PyThreadState_SetAsyncExc in
    # a loop, a signal storm): each run of the exit is interrupted at the entry of the
    # profile's exit handler, storm times in a row.  (Not with Injector: CPython removes a
    # trace function that raises, so it can interrupt only once.)  The exit must still end
    # with the thread's device back in INIT; it used to give up after three runs, leaving
    # the device tracing for a dead owner, EINVAL for every caller, for good.
    rules = profiles.RULES[profile]
    handler = rules.on_task_exit
    left = [storm]

    def interrupted(task: tasks.Task) -> None:
        if left[0]:
            left[0] -= 1
            raise KeyboardInterrupt("exception storm")
        handler(task)

    monkeypatch.setattr(rules, "on_task_exit", interrupted)
    dev = kcovx.open(profile)
    _mapped(dev)
    w = Worker()
    w.call(dev.enable)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    w.stop()
    monkeypatch.undo()
    assert left == [0]
    exited_after_one_interruption(dev, unraisable)


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_task_exit_runs_when_the_finaliser_is_interrupted_at_entry(
    no_leftovers: None, profile: str
) -> None:
    # An exception at the entry of the exit sentinel's finaliser: CPython reports it and
    # runs none of the finaliser's code.  The exit must run all the same (it did not: the
    # device stayed tracing for the dead thread, EINVAL for every caller, for good).
    dev = kcovx.open(profile)
    _mapped(dev)
    w = Worker()
    w.call(dev.enable)
    unraisable: list[Any] = []

    def trace(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_qualname == "_ExitSentinel.__del__":
            raise KeyboardInterrupt("at the finaliser's entry")

    def leave() -> None:
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        sys.settrace(trace)
        try:
            delattr(tasks._local, "sentinel")
        finally:
            sys.settrace(None)
            sys.unraisablehook = old_hook

    w.call(leave)
    w.stop()
    exited_after_one_interruption(dev, unraisable)


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_nested_close_happens_when_the_interrupted_call_returns(
    no_leftovers: None, profile: str
) -> None:
    # A finaliser that closes its device, run by the garbage collector in the middle of
    # another device call: the close is not refused (the device would stay open for good)
    # but deferred to the end of that call, as the kernel releases a file when the last
    # system call in flight on it ends.
    dev, other = kcovx.open(profile), kcovx.open(profile)
    _mapped(dev)
    _enabled(other) if profile == "gvisor" else _mapped(other)
    during: list[bool] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        # The enable rule's entry: inside the enable's locked section.
        if event == "call" and frame.f_code.co_qualname.endswith("Rules.enable") and not during:
            other.close()  # returns normally
            during.append(other.closed)

    sys.setprofile(hook)
    try:
        dev.enable()
    finally:
        sys.setprofile(None)
    assert during == [False]  # not yet: the enable was between its checks and its commit
    assert other.closed and other.mode in (Mode.INIT, Mode.DISABLED) and other.owner is None
    assert dev.owner == threading.get_ident()
    check_bookkeeping(dev)
    check_bookkeeping(other)
    with pytest.raises(OSError) as err:
        other.close()
    assert err.value.errno == errno.EBADF
    finish(dev)
