"""Shared helpers for the kcovx tests: threads that run steps on request, device cleanup.

Owns no kcovx state.  ``Worker`` is one thread that runs the callables it is given, one at a
time and in order, so a test can keep a thread (a kcov task) alive across several steps and
decide exactly when it exits.  ``Devices`` opens devices for a test and, at teardown, disables
the ones the calling thread still owns and closes the rest, so no test leaves the main thread
recording into an area or a gvisor device collecting (each test module wraps it in a
``devices`` fixture); ``Devices.enabled`` is the usual open/init/mmap/enable preamble.
``in_child`` runs a function in a fork child and returns its JSON-able result;
``run_build`` runs a build command and ``load_extension`` imports what it built.
Every wait is bounded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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


def in_child(fn: Callable[[], Any], timeout: float = 3 * TIMEOUT) -> Any:
    """Run fn in a fork child; return its JSON-able result, or fail with the child's error.
    The child leaves with os._exit; a late child is killed."""
    assert threading.active_count() == 1, "fork with threads alive"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            try:
                out: dict[str, Any] = {"ok": fn()}
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
                status = 1
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("fork child timed out")
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks) or b"{}")
    if "error" in out or "ok" not in out:
        pytest.fail(f"fork child failed: {out}")
    return out["ok"]


def run_build(what: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a build command in a subprocess; its stdout, or fail the test with its output (a
    compiler failure or a hang is a test failure, never a crash of the session)."""
    try:
        proc = subprocess.run(
            cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"building {what} took more than {timeout}s:\n{exc.stderr!s}")
    if proc.returncode != 0:
        pytest.fail(
            f"building {what} failed (exit {proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc.stdout


def load_extension(name: str, folder: Path) -> ModuleType:
    """Import the extension module ``name`` from folder, without touching sys.path."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.exists():
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(f"no built {name} in {folder}: {sorted(os.listdir(folder))}")
