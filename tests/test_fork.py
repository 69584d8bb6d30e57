"""Fork (README "Threads" and "Fork"): the child shares the open devices and
the MAP_SHARED areas, owns nothing, and cannot touch a device the parent has enabled; the
kernel documentation's pattern (parent inits and mmaps, child enables) works in both profiles.

Each child runs one function, sends its JSON result through a pipe and leaves with os._exit;
the parent waits for it with a deadline and kills it if it is late.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices, in_child

import kcovx
from kcovx import Mode


def errno_of(fn: Callable[[], Any]) -> int | None:
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_child_keeps_devices_and_shared_mapping(devices: Devices, profile: str) -> None:
    dev = devices.open(profile)
    dev.init_trace(512)
    view = dev.mmap()
    area = dev.area
    assert area is not None

    def child() -> Any:
        view[0] = 0
        assert area.append_pc(0xC0FFEE)
        view[5] = 0x55  # a plain store into the mapping is shared too
        return {"closed": dev.closed, "mode": int(dev.mode), "size": dev.size}

    got = in_child(child)
    assert got == {"closed": False, "mode": int(Mode.INIT), "size": 512}
    assert view[:2].tolist() == [1, 0xC0FFEE]
    assert int(view[5]) == 0x55


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_no_thread_owns_a_device_in_child(devices: Devices, profile: str) -> None:
    enabled = devices.open(profile)
    idle = devices.open(profile)
    for d in (enabled, idle):
        d.init_trace(512)
        d.mmap()
    enabled.enable()
    assert enabled.owner == threading.get_ident()

    def child() -> Any:
        return [enabled.owner, idle.owner, int(enabled.mode), int(idle.mode)]

    assert in_child(child) == [None, None, int(Mode.TRACE_PC), int(Mode.INIT)]
    assert enabled.owner == threading.get_ident()  # the parent's state is untouched


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_child_cannot_enable_or_disable_parent_enabled_device(
    devices: Devices, profile: str
) -> None:
    dev, view = devices.enabled(profile, 512)

    def child() -> Any:
        return [errno_of(dev.enable), errno_of(dev.disable), errno_of(dev.disable), int(dev.mode)]

    assert in_child(child) == [errno.EINVAL, errno.EINVAL, errno.EINVAL, int(Mode.TRACE_PC)]
    assert dev.mode == Mode.TRACE_PC
    kcovx.trace_pc(0x31)  # the parent still records
    dev.flush()
    assert view[:2].tolist() == [1, 0x31]


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_kcov_rst_pattern_child_enables(devices: Devices, profile: str) -> None:
    dev = devices.open(profile)
    dev.init_trace(512)
    view = dev.mmap()

    def child() -> Any:
        dev.enable()
        owner_ok = dev.owner == threading.get_ident()
        kcovx.trace_pc(0xA1)
        kcovx.trace_pcs(np.array([0xA2, 0xA3], dtype=np.uint64))
        dev.flush()  # gvisor: task work; linux: no-op
        dev.disable()
        return owner_ok

    assert in_child(child) is True
    assert view[:4].tolist() == [3, 0xA1, 0xA2, 0xA3]
    assert dev.mode == Mode.INIT  # the child's enable is not the parent's
    assert dev.owner is None


def test_kcov_rst_pattern_child_exit_without_disable(devices: Devices) -> None:
    dev = devices.open("linux")
    dev.init_trace(512)
    view = dev.mmap()

    def child() -> Any:
        dev.enable()
        kcovx.trace_pc(0xB1)
        return int(dev.mode)

    assert in_child(child) == int(Mode.TRACE_PC)
    assert view[:2].tolist() == [1, 0xB1]
    assert dev.mode == Mode.INIT
    dev.enable()  # the parent can enable it afterwards
    kcovx.trace_pc(0xB2)
    assert view[:3].tolist() == [2, 0xB1, 0xB2]
    dev.disable()


def test_child_trace_pc_does_not_write_parent_linux_area(devices: Devices) -> None:
    _dev, view = devices.enabled("linux", 512)
    kcovx.trace_pc(0x1)

    def child() -> Any:
        kcovx.trace_pc(0xBAD)
        kcovx.trace_pcs(np.array([0xBAD1, 0xBAD2], dtype=np.uint64))
        kcovx.trace_cmp(0, 1, 2, 3)
        return int(view[0])

    assert in_child(child) == 1
    assert view[:3].tolist() == [1, 0x1, 0]
    kcovx.trace_pc(0x2)  # the parent's thread still records
    assert view[:3].tolist() == [2, 0x1, 0x2]


def test_child_trace_pc_not_delivered_to_parent_gvisor_area(devices: Devices) -> None:
    dev, view = devices.enabled("gvisor", 512)

    def child() -> Any:
        kcovx.trace_pc(0xBAD)
        dev.flush()  # nobody owns it in the child: no task work to run
        return int(view[0])

    assert in_child(child) == 0
    dev.flush()
    assert int(view[0]) == 0


def test_child_can_use_linux_device_of_its_own(devices: Devices) -> None:
    # the parent's main thread has a linux device enabled; the child's main thread has none
    dev = devices.open("linux")
    dev.init_trace(512)
    dev.enable()

    def child() -> Any:
        mine = kcovx.open("linux")
        mine.init_trace(512)
        v = mine.mmap()
        mine.enable()  # no EBUSY: the child's task has no kcov
        kcovx.trace_pc(0x77)
        mine.disable()
        return v[:2].tolist()

    assert in_child(child) == [1, 0x77]


CLOSED_ENABLED_CHILD = r"""
import json, os, threading
import kcovx
d = kcovx.open("linux")
d.init_trace(512)
v = d.mmap()
d.enable()
d.close()  # the main thread keeps the kcov enabled (and keeps recording) after close
assert d.owner == threading.get_ident()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    kcovx.trace_pc(5)
    os.write(w, json.dumps({"owner": d.owner, "count": int(v[0])}).encode())
    os._exit(0)
os.close(w)
print(os.read(r, 1000).decode())
os.waitpid(pid, 0)
"""


def test_closed_but_enabled_device_has_no_owner_in_child() -> None:
    # Runs in its own interpreter: closing an enabled linux device leaves the closing thread
    # recording into it for good, which this process's main thread must not be left doing.
    root = str(Path(kcovx.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", CLOSED_ENABLED_CHILD],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["count"] == 0  # the child's thread does not record into it
    assert got["owner"] is None  # nobody owns it in the child


FORK_WITH_THREAD = r"""
import errno, json, os, sys, threading
import kcovx

profile, owner_is = sys.argv[1], sys.argv[2]
dev = kcovx.open(profile)
dev.init_trace(512)
view = dev.mmap()
calls, done = [], threading.Event()
wake = threading.Event()


def errno_of(fn):
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def worker():
    while True:
        wake.wait()
        wake.clear()
        fn = calls.pop()
        if fn is None:
            return
        fn()
        done.set()


def in_worker(fn):
    calls.append(fn)
    wake.set()
    assert done.wait(10)
    done.clear()


t = threading.Thread(target=worker)
t.start()
owner_call = in_worker if owner_is == "worker" else (lambda fn: fn())
owner_call(dev.enable)
r, w = os.pipe()
pid = os.fork()  # from the main thread, whichever thread owns the device
if pid == 0:
    out = {"owner": dev.owner, "mode": int(dev.mode), "enable": errno_of(dev.enable)}
    kcovx.trace_pc(0xBAD)
    dev.flush()
    out["disable"] = errno_of(dev.disable)
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
got = json.loads(os.read(r, 1000).decode())
os.waitpid(pid, 0)


def record():
    kcovx.trace_pc(0x600D)
    dev.flush()


owner_call(record)
got["parent"] = view[: int(view[0]) + 1].tolist()
got["parent_mode"] = int(dev.mode)
owner_call(dev.disable)
calls.append(None)
wake.set()
t.join()
print(json.dumps(got))
"""


@pytest.mark.parametrize("owner_is", ["worker", "main"])
@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_fork_by_any_thread_child_cannot_touch_enabled_device(profile: str, owner_is: str) -> None:
    # A device enabled in the parent has no owner in the child whichever thread forks: when a
    # thread other than the owner forks, CPython drops the owner's thread state in the child
    # before the after-fork hooks run, which must not count as the owner's exit.  A
    # subprocess, because forking with a thread alive warns on 3.12+.
    args = [profile, owner_is]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORK_WITH_THREAD, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["owner"] is None
    assert got["mode"] == int(Mode.TRACE_PC)
    assert got["enable"] == errno.EINVAL
    assert got["disable"] == errno.EINVAL
    assert got["parent"] == [1, 0x600D]  # nothing from the child; the owner still records
    assert got["parent_mode"] == int(Mode.TRACE_PC)


# A signal handler runs where CPython checks for one, which includes the entry of any Python
# function: the fork hooks too.  One that raises there (KeyboardInterrupt on Ctrl-C during a
# fork) makes CPython report the hook's exception and go on, so a hook that takes or releases
# the state machine's lock must not be a Python function (the parent kept the lock and every
# other thread's device call hung).  Each trial raises at the entry of every Python function
# of kcovx.tasks with the given name (in the parent, and in the child, which inherits the trace
# function), then checks that the lock is free and that another thread's device call
# completes, in the parent and in the child.
FORK_HOOK_INTERRUPTED = r"""
import os, sys, threading
import kcovx
from kcovx import tasks

def device_call_in_thread():
    t = threading.Thread(target=lambda: kcovx.open().init_trace(512), daemon=True)
    t.start()
    t.join(5)
    return not t.is_alive()

def trace(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_filename == tasks.__file__ and code.co_name == sys.argv[1]:
        raise KeyboardInterrupt(frame.f_code.co_name)
    return None

sys.unraisablehook = lambda u: None  # CPython reports the hooks' exceptions: expected
kcovx.open().init_trace(512)
sys.settrace(trace)
pid = os.fork()
sys.settrace(None)
if pid == 0:
    os._exit(0 if device_call_in_thread() else 3)
_, status = os.waitpid(pid, 0)
owned = tasks.lock()._is_owned()
print(f"held={owned} thread_done={device_call_in_thread()} child_status={status}")
"""


@pytest.mark.parametrize("hook", ["_before_fork", "_after_fork_parent", "_after_fork_child"])
def test_fork_hook_interrupted_at_entry_leaves_lock_free(hook: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORK_HOOK_INTERRUPTED, hook],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "held=False thread_done=True child_status=0"
