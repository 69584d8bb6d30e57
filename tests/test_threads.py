"""Owner threads (README: the profiles and "Threads"): who records, who may enable and disable,
what a thread's exit does, and what close does while a device is enabled.

Each kcov task is a Python thread.  Threads are ``Worker``s (see _kcovx_support) so a test
decides when each one exits; its exit handler must have run by the time ``join`` returns,
without the test calling anything.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import threading

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices

import kcovx
from kcovx import Mode


def raises_errno(err: int, fn: object, *args: object) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno == err, info.value


# ---------------------------------------------------------------------------------------------
# Thread exit, detected without the user's help


def test_linux_thread_exit_resets_device_keeps_area(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()

    def record() -> None:
        dev.enable()
        kcovx.trace_pc(0x10)
        kcovx.trace_pc(0x11)

    w.call(record)
    assert dev.mode == Mode.TRACE_PC
    assert dev.owner == w.ident
    w.stop()
    assert dev.mode == Mode.INIT
    assert dev.owner is None
    assert dev.area is not None
    assert view[:3].tolist() == [2, 0x10, 0x11]  # area and mapping kept
    view2 = dev.mmap()
    assert view2[:3].tolist() == [2, 0x10, 0x11]  # same buffer
    dev.enable()  # another thread (main) may now enable
    kcovx.trace_pc(0x12)
    assert view[:4].tolist() == [3, 0x10, 0x11, 0x12]
    dev.disable()


def test_gvisor_thread_exit_resets_device_keeps_mapping(devices: Devices) -> None:
    dev = devices.open("gvisor")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()

    def record() -> None:
        dev.enable()
        kcovx.trace_pc(0x20)
        dev.flush()

    w.call(record)
    assert dev.mode == Mode.TRACE_PC
    assert dev.owner == w.ident
    w.stop()
    assert dev.mode == Mode.INIT
    assert dev.owner is None
    assert view[:2].tolist() == [1, 0x20]
    # the mapping is kept: another thread enables without a new mmap, into the same area
    w2 = devices.worker()

    def record2() -> None:
        dev.enable()
        kcovx.trace_pc(0x21)
        dev.flush()

    w2.call(record2)
    assert view[:3].tolist() == [2, 0x20, 0x21]
    w2.stop()
    assert dev.mode == Mode.INIT


def test_plain_thread_exit_detected_at_join(devices: Devices) -> None:
    # a plain threading.Thread whose target just returns: join, then look
    dev = devices.open("linux")
    dev.init_trace(512)
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append((dev.enable(), dev.owner)))
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert seen[0] == (0, t.ident)
    assert dev.mode == Mode.INIT
    assert dev.owner is None


def test_gvisor_exit_quirk_resets_other_tasks_session(devices: Devices) -> None:
    # thread A enables and disables dev1; thread B mmaps and enables dev1; A exits: gVisor's
    # OnTaskExit runs on A's t.kcov (dev1) and resets B's session.
    dev = devices.open("gvisor")
    dev.init_trace(512)
    dev.mmap()
    a = devices.worker("A")
    b = devices.worker("B")
    a.call(dev.enable)
    a.call(dev.disable)
    assert dev.mode == Mode.INIT
    b.call(dev.mmap)  # DISABLE dropped the mapping: a new one is needed
    b.call(dev.enable)
    assert dev.mode == Mode.TRACE_PC
    assert dev.owner == b.ident
    a.stop()
    assert dev.mode == Mode.INIT
    assert dev.owner is None
    assert b.alive
    raises_errno(errno.EINVAL, b.call, dev.disable)  # B no longer owns it


def test_gvisor_exit_resets_only_last_enabled_device(devices: Devices) -> None:
    # gVisor keeps one t.kcov per task: the last device it enabled.  Its exit resets that one;
    # an earlier device the task still traces stays TRACE_PC with nobody able to disable it.
    d1 = devices.open("gvisor")
    d2 = devices.open("gvisor")
    for d in (d1, d2):
        d.init_trace(512)
        d.mmap()
    a = devices.worker("A")
    a.call(d1.enable)
    a.call(d2.enable)
    a_ident = a.ident
    a.stop()
    assert d2.mode == Mode.INIT
    assert d2.owner is None
    assert d1.mode == Mode.TRACE_PC
    assert d1.owner == a_ident
    raises_errno(errno.EINVAL, d1.enable)
    raises_errno(errno.EINVAL, d1.disable)
    # Nobody can ever consume for d1 again, so PCs must not pile up in the pending set.
    kcovx.trace_pcs(np.arange(1, 1001, dtype=np.uint64))
    assert kcovx._area._pending_len() == 0
    d1.close()


def test_gvisor_work_of_earlier_enabler_outlives_dead_owner(devices: Devices) -> None:
    # The minimal sequence of test_state_machine's test_gvisor_pc_lost_after_owner_exits.
    # gVisor registers a device's task work on the task that enables it, and the work stays
    # registered while the device traces, whoever owns it.  B enables dev after A disabled it;
    # A's exit resets dev (A's t.kcov); C enables dev again, then another device, and exits,
    # which resets only that other one: dev traces with a dead owner.  B, which made no call
    # since its enable, still has dev's work: its next call moves what it covered into dev.
    dev = devices.open("gvisor")
    other = devices.open("gvisor")
    dev.init_trace(512)
    dev.mmap()
    other.init_trace(512)
    other.mmap()
    a = devices.worker("A")
    b = devices.worker("B")
    c = devices.worker("C")
    a.call(dev.enable)
    a.call(dev.disable)
    view = b.call(dev.mmap)  # a fresh area: DISABLE dropped the first one
    b.call(dev.enable)
    a.stop()
    assert (dev.mode, dev.owner) == (Mode.INIT, None)  # the mapping is kept
    c.call(dev.enable)
    c.call(other.enable)
    c_ident = c.ident
    c.stop()
    assert (other.mode, other.owner) == (Mode.INIT, None)
    assert (dev.mode, dev.owner) == (Mode.TRACE_PC, c_ident)
    b.call(kcovx.trace_pc, 0x71)
    b.call(dev.flush)
    assert view[:3].tolist() == [1, 0x71, 0]
    # Once B exits nobody holds dev's work: PCs must not pile up in the pending set.
    b.stop()
    kcovx.trace_pcs(np.arange(1, 1001, dtype=np.uint64))
    assert kcovx._area._pending_len() == 0


def test_gvisor_pending_at_owner_exit_not_delivered(devices: Devices) -> None:
    dev = devices.open("gvisor")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()
    w.call(dev.enable)
    w.call(kcovx.trace_pc, 0x61)  # pending: the owner never returns to user space again
    w.stop()
    assert int(view[0]) == 0
    dev.enable()  # the mapping is kept; ENABLE clears what was pending
    dev.flush()
    assert int(view[0]) == 0
    kcovx.trace_pc(0x62)
    dev.flush()
    assert view[:3].tolist() == [1, 0x62, 0]


def test_linux_exit_of_former_owner_leaves_new_owner(devices: Devices) -> None:
    # the gVisor quirk does not exist in Linux: current->kcov is cleared by DISABLE
    dev = devices.open("linux")
    dev.init_trace(512)
    a = devices.worker("A")
    b = devices.worker("B")
    a.call(dev.enable)
    a.call(dev.disable)
    b.call(dev.enable)
    a.stop()
    assert dev.mode == Mode.TRACE_PC
    assert dev.owner == b.ident
    b.call(dev.disable)


# ---------------------------------------------------------------------------------------------
# Linux: per-thread recording


def test_linux_non_owner_threads_not_recorded(devices: Devices) -> None:
    _dev, view = devices.enabled("linux", 512)
    other = devices.worker()
    other.call(kcovx.trace_pc, 0x5)
    other.call(kcovx.trace_pcs, np.array([0x6, 0x7], dtype=np.uint64))
    other.call(kcovx.trace_cmp, 0, 1, 2, 3)
    kcovx.trace_pc(0x8)
    assert view[:3].tolist() == [1, 0x8, 0]


def test_two_linux_devices_two_threads_record_separately(devices: Devices) -> None:
    d1 = devices.open("linux")
    d2 = devices.open("linux")
    d1.init_trace(4096)
    d2.init_trace(4096)
    v1 = d1.mmap()
    v2 = d2.mmap()
    seq1 = [1, 2, 1, 1, 3] * 200
    seq2 = [7, 7, 8, 9, 8] * 200
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def run(dev: kcovx.Device, seq: list[int]) -> None:
        dev.enable()
        barrier.wait()
        for i, pc in enumerate(seq):
            kcovx.trace_pc(pc)
            if i % 100 == 0:
                kcovx.trace_pcs(np.array([pc, pc], dtype=np.uint64))

    expected = []
    for seq in (seq1, seq2):
        e: list[int] = []
        for i, pc in enumerate(seq):
            e.append(pc)
            if i % 100 == 0:
                e += [pc, pc]
        expected.append(e)
    errors: list[BaseException] = []

    def target(dev: kcovx.Device, seq: list[int]) -> None:
        try:
            run(dev, seq)
        except BaseException as exc:
            errors.append(exc)

    ts = [
        threading.Thread(target=target, args=(d1, seq1)),
        threading.Thread(target=target, args=(d2, seq2)),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    assert not errors
    assert int(v1[0]) == len(expected[0])
    assert v1[1 : 1 + len(expected[0])].tolist() == expected[0]
    assert int(v2[0]) == len(expected[1])
    assert v2[1 : 1 + len(expected[1])].tolist() == expected[1]
    assert d1.mode == Mode.INIT  # both threads exited
    assert d2.mode == Mode.INIT


def test_linux_same_thread_second_device_ebusy(devices: Devices) -> None:
    d1 = devices.open("linux")
    d2 = devices.open("linux")
    d1.init_trace(512)
    d2.init_trace(512)
    v2 = d2.mmap()
    d1.enable()
    raises_errno(errno.EBUSY, d2.enable)
    assert d2.mode == Mode.INIT
    assert d2.owner is None
    kcovx.trace_pc(3)
    assert int(v2[0]) == 0
    d1.disable()
    d2.enable()  # free again after disabling the first
    d2.disable()


def test_linux_enable_by_second_thread_while_owned(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    dev.enable()
    other = devices.worker()
    raises_errno(errno.EINVAL, other.call, dev.enable)  # mode != INIT comes first
    raises_errno(errno.EINVAL, other.call, dev.disable)
    assert dev.owner == threading.get_ident()


def test_gvisor_same_thread_may_enable_second_device(devices: Devices) -> None:
    d1 = devices.open("gvisor")
    d2 = devices.open("gvisor")
    for d in (d1, d2):
        d.init_trace(512)
    v1 = d1.mmap()
    v2 = d2.mmap()
    d1.enable()
    d2.enable()
    me = threading.get_ident()
    assert d1.owner == me and d2.owner == me
    assert d1.mode == d2.mode == Mode.TRACE_PC
    kcovx.trace_pc(0x44)
    d1.flush()
    d2.flush()
    # one global batch: whichever device's task work runs first takes it
    assert int(v1[0]) + int(v2[0]) == 1
    assert 0x44 in (int(v1[1]), int(v2[1]))


def test_gvisor_disable_from_other_thread_einval(devices: Devices) -> None:
    dev, _ = devices.enabled("gvisor", 512)
    other = devices.worker()
    raises_errno(errno.EINVAL, other.call, dev.disable)
    assert dev.mode == Mode.TRACE_PC


# ---------------------------------------------------------------------------------------------
# close while enabled


def test_gvisor_close_while_enabled_stops_coverage(devices: Devices) -> None:
    dev, view = devices.enabled("gvisor", 512)
    kcovx.trace_pc(0x1)
    dev.flush()
    assert view[:2].tolist() == [1, 0x1]
    kcovx.trace_pc(0x2)  # pending at close: never delivered
    dev.close()
    assert dev.mode == Mode.INIT
    assert dev.owner is None
    assert dev.area is None
    kcovx.trace_pc(0x3)
    for call in (dev.flush, dev.disable, dev.close, dev.enable, dev.mmap):
        raises_errno(errno.EBADF, call)
    other = devices.open("gvisor")  # a device call of the former owner: task work would run
    other.init_trace(512)
    kcovx.trace_pc(0x4)
    with pytest.raises(OSError):
        other.enable()
    assert view[:4].tolist() == [1, 0x1, 0, 0]


def test_gvisor_close_by_other_thread_stops_owner(devices: Devices) -> None:
    dev = devices.open("gvisor")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()
    w.call(dev.enable)
    dev.close()
    w.call(kcovx.trace_pc, 0x9)
    other = devices.open("gvisor")
    raises_errno(errno.EINVAL, w.call, other.mmap)  # the owner returns to user space
    w.stop()
    assert int(view[0]) == 0


def test_linux_close_while_enabled_keeps_recording_until_exit(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()
    w.call(dev.enable)
    w.call(kcovx.trace_pc, 0x1)
    w.call(dev.close)
    for call in (dev.flush, dev.disable, dev.close, dev.enable, dev.mmap):
        raises_errno(errno.EBADF, w.call, call)
        raises_errno(errno.EBADF, call)
    w.call(kcovx.trace_pc, 0x2)  # the enabled task still holds the kcov
    w.call(kcovx.trace_pcs, np.array([0x3], dtype=np.uint64))
    kcovx.trace_pc(0x99)  # not the owner
    assert view[:4].tolist() == [3, 0x1, 0x2, 0x3]
    w.stop()
    assert dev.area is None  # released with the owner's exit
    assert view[:5].tolist() == [3, 0x1, 0x2, 0x3, 0]  # the mapping stays valid


def test_linux_close_by_non_owner_keeps_owner_recording(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    view = dev.mmap()
    w = devices.worker()
    w.call(dev.enable)
    dev.close()
    w.call(kcovx.trace_pc, 0x7)
    assert view[:2].tolist() == [1, 0x7]
    w.stop()
    assert dev.mode == Mode.INIT
    assert dev.owner is None


def test_linux_flush_from_other_thread_runs_no_gvisor_work(devices: Devices) -> None:
    # Thread A traces a gvisor device and owns a linux one.  Another thread flushing the LINUX
    # device must not run A's (gvisor) task work: only A's own device calls deliver coverage.
    g = devices.open("gvisor")
    lin = devices.open("linux")
    a = devices.worker("A")
    g.init_trace(512)
    view = g.mmap()
    a.call(g.enable)
    lin.init_trace(512)
    a.call(lin.enable)
    a.call(kcovx.trace_pc, 7)
    devices.worker("B").call(lin.flush)
    assert view[:2].tolist() == [0, 0]
    a.call(g.flush)  # A's own call: the PC arrives
    assert view[:2].tolist() == [1, 7]
    a.call(lin.disable)
    a.call(g.disable)


EXIT_WHILE_ENABLED = """
import threading, time
import kcovx
g = kcovx.open(); g.init_trace(512); g.mmap(); g.enable()
lin = kcovx.open("linux"); lin.init_trace(512); lin.enable()
started = threading.Event()
def worker():
    d = kcovx.open("linux"); d.init_trace(512); d.enable(); kcovx.trace_pc(3)
    started.set()
    while True:  # device calls, so the state lock is often held when the interpreter stops
        d.flush()
threading.Thread(target=worker, daemon=True).start()
started.wait(5)
print("exiting")
"""


def test_interpreter_exits_with_devices_enabled_and_daemon_threads() -> None:
    # Devices still enabled in the main thread and in a daemon thread at exit: the exit
    # handlers must not run (nor wait for the state lock, which a daemon thread frozen by the
    # shutdown may hold) while the interpreter finalises.
    # The race is the daemon thread's: repeat so a regression shows up on almost every run.
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_ENABLED],
            check=False,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "exiting\n"
        assert proc.stderr == ""
