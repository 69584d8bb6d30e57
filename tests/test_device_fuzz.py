"""The device API under a seeded random sequence of calls, in a ``python -X dev`` subprocess.

Owns: one script that opens devices of both profiles and, from the main thread and two worker
threads, makes a few thousand random calls -- good and bad arguments (wrong types, negative,
huge, unknown commands and modes), trace_pc/trace_pcs/trace_cmp, flush, close, views written
to -- with a seed per run.  Expected failures (OSError, TypeError, ValueError, OverflowError)
are counted; anything else, a crash, a hang past the deadline, or a device left in a mode with
an owner it does not report fails the test.  Nothing is compared with a model here (the state
machine test does that); this is about never crashing or hanging.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FUZZ = r"""
import json, random, sys, threading, queue
import numpy as np
import kcovx

seed, calls = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
EXPECTED = (OSError, TypeError, ValueError, OverflowError)
SIZES = [0, 1, 2, 3, 511, 512, 1024, 4096, 2**31, 2**64 - 1, 2**64, -1, 1.5, "512", None]
MODES = [0, 1, 2, 255, 256, 257, -1, 2**64, None, "0"]
CMDS = [kcovx.KCOV_INIT_TRACE, kcovx.KCOV_ENABLE, kcovx.KCOV_DISABLE, kcovx.KCOV_REMOTE_ENABLE,
        0, 0x1234, 2**32 + kcovx.KCOV_ENABLE, -1, 2**64]
devs, views, counts = [], [], {"ok": 0, "expected": 0}


def one(dev):
    op = rng.randrange(12)
    if op == 0:
        dev.init_trace(rng.choice(SIZES))
    elif op == 1:
        views.append(dev.mmap(rng.choice([None, 4096, 0, 1, 2**63]), rng.choice([0, 0, 4096, 1])))
        del views[:-8]
    elif op in (2, 3):
        dev.enable(rng.choice(MODES))
    elif op == 4:
        dev.disable()
    elif op == 5:
        dev.ioctl(rng.choice(CMDS), rng.choice([0, 1, 512, -1, 2**64]))
    elif op == 6:
        dev.flush()
    elif op == 7:
        kcovx.trace_pc(rng.choice([0, 1, 0x400000, 2**64 - 1, 2**64, -1, "x"]))
        kcovx.trace_pcs(np.arange(rng.randrange(64), dtype=np.uint64))
    elif op == 8:
        kcovx.trace_cmp(rng.randrange(10), rng.randrange(300), rng.randrange(2**16), 0x55)
    elif op == 9 and views:
        v = rng.choice(views)
        if len(v):
            v[0] = rng.choice([0, 1, 2**64 - 1, 2**63])
    elif op == 10:
        repr(dev), dev.mode, dev.owner, dev.size, dev.area
    elif op == 11 and rng.random() < 0.1:
        dev.close()


def step(dev):
    try:
        one(dev)
        counts["ok"] += 1
    except EXPECTED:
        counts["expected"] += 1


jobs = [queue.Queue(), queue.Queue()]
done = queue.Queue()


def worker(q):
    while True:
        dev = q.get()
        if dev is None:
            return
        try:
            step(dev)
        finally:
            done.put(None)


threads = [threading.Thread(target=worker, args=(q,)) for q in jobs]
for t in threads:
    t.start()
for i in range(calls):
    if len(devs) < 6 and rng.random() < 0.05 or not devs:
        devs.append(kcovx.open(rng.choice(kcovx.PROFILES)))
    dev = rng.choice(devs)
    where = rng.randrange(4)
    if where < 2:
        step(dev)
    else:
        jobs[where - 2].put(dev)
        done.get(timeout=10)
for q in jobs:
    q.put(None)
for t in threads:
    t.join(10)
    assert not t.is_alive()
me = threading.get_ident()
for dev in devs:
    # Invariant: a device reports an owner only while tracing, and only threads still alive
    # (or none) own one once the workers have exited.
    if dev.owner is not None:
        assert dev.mode in (kcovx.Mode.TRACE_PC, kcovx.Mode.TRACE_CMP), dev
        assert dev.owner == me, dev
        if not dev.closed:  # a closed linux device stays enabled until its owner exits
            dev.disable()
    if not dev.closed:
        dev.close()
print(json.dumps(counts))
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_device_api_fuzz_under_dev_mode(seed: int) -> None:
    calls = 2000
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", FUZZ, str(seed), str(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr == ""  # -X dev: no warning, no unraisable exception
    counts = json.loads(proc.stdout)
    assert counts["ok"] + counts["expected"] == calls
    assert counts["ok"] > calls // 10 and counts["expected"] > calls // 10
