"""Shared helpers for the kcovx tests: threads that run steps on request, device cleanup.

Owns no kcovx state.  ``Worker`` is one thread that runs the callables it is given, one at a
time and in order, so a test can keep a thread (a kcov task) alive across several steps and
decide exactly when it exits.  ``Devices`` opens devices for a test and, at teardown, disables
the ones the calling thread still owns and closes the rest, so no test leaves the main thread
recording into an area or a gvisor device collecting (each test module wraps it in a
``devices`` fixture); ``Devices.enabled`` is the usual open/init/mmap/enable preamble.
Every wait is bounded.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import kcovx

TIMEOUT = 10.0  # seconds; any single wait in these tests is far shorter than this


class Worker:
    """A thread that runs submitted callables in order until stopped."""

    def __init__(self, name: str = "kcovx-worker") -> None:
        self._jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.ident = self.call(threading.get_ident)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._results.put((True, job()))
            except BaseException as exc:
                self._results.put((False, exc))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) in the worker thread; return its result or raise its exception."""
        self._jobs.put(lambda: fn(*args))
        ok, value = self._results.get(timeout=TIMEOUT)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        """Let the thread exit and wait for it (its kcov task exit runs before join returns)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(TIMEOUT)
            assert not self._thread.is_alive(), "worker thread did not exit"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a fresh thread that then exits; return its result or raise."""
    w = Worker("kcovx-oneshot")
    try:
        return w.call(fn, *args)
    finally:
        w.stop()


class Devices:
    """Opens devices for one test; cleans them up afterwards."""

    def __init__(self) -> None:
        self._devs: list[kcovx.Device] = []
        self._workers: list[Worker] = []

    def open(self, profile: str = "gvisor", path: Any = None) -> kcovx.Device:
        dev = kcovx.open(profile, path)
        self._devs.append(dev)
        return dev

    def enabled(
        self,
        profile: str = "gvisor",
        size: int = 512,
        mode: int = kcovx.KCOV_TRACE_PC,
        path: Any = None,
    ) -> tuple[kcovx.Device, Any]:
        """The usual preamble: open, init_trace(size), mmap, enable(mode) by the calling
        thread.  Returns the device and the view of its whole area."""
        dev = self.open(profile, path)
        dev.init_trace(size)
        view = dev.mmap()
        dev.enable(mode)
        return dev, view

    def worker(self, name: str = "kcovx-worker") -> Worker:
        w = Worker(name)
        self._workers.append(w)
        return w

    def cleanup(self) -> None:
        me = threading.get_ident()
        for dev in self._devs:
            if not dev.closed and dev.owner == me:
                dev.disable()
        for w in self._workers:
            w.stop()
        for dev in self._devs:
            if not dev.closed:
                dev.close()


def python(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with args in a subprocess (text, output captured, bounded, no
    check: the caller asserts on the status); kwargs go to subprocess.run (cwd, env, ...)."""
    kwargs.setdefault("timeout", 120)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, **kwargs
    )
