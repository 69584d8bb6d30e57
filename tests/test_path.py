"""Areas backed by a file: ``kcovx.open(path=...)``.

Covers: when the file appears (linux: INIT; gvisor: first mmap), its mode (0600 whatever the
umask) and length (size*8), that it outlives close with the recorded words, that other
processes mapping it see the same words, that a concurrent reader never sees the count run
ahead of the data, that a writer killed with SIGKILL leaves every PC it published, and that a
gvisor re-mmap after DISABLE names a fresh zeroed file while old views keep the old pages.

Other processes are ``python -c`` scripts run with a timeout; the writer in this process is the
main thread, whose linux device the ``devices`` fixture disables afterwards.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _kcovx_support import TIMEOUT, Devices

import kcovx

PY = sys.executable
ROOT = str(Path(kcovx.__file__).resolve().parent.parent)
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

READ_WORDS = """
import mmap, struct, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
n = len(m) // 8
words = struct.unpack("<%dQ" % n, m[: n * 8])
print(" ".join(map(str, words)))
"""


def read_words_elsewhere(path: Path) -> list[int]:
    out = subprocess.run(
        [PY, "-c", READ_WORDS, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return [int(x) for x in out.stdout.split()]


def mode_bits(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------------------------
# creation, mode, size


def test_linux_file_created_at_init(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    dev = devices.open("linux", path=p)
    assert dev.path == str(p)
    assert not p.exists()
    dev.init_trace(1024)
    assert p.exists()
    assert p.stat().st_size == 1024 * 8
    assert np.count_nonzero(np.fromfile(p, dtype="<u8")) == 0


def test_linux_odd_size_file_length(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    dev = devices.open("linux", path=str(p))
    dev.init_trace(7)
    assert p.stat().st_size == 56


def test_gvisor_file_created_at_first_mmap(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    dev = devices.open("gvisor", path=p)
    dev.init_trace(1024)
    assert not p.exists()
    dev.mmap()
    assert p.exists()
    assert p.stat().st_size == 1024 * 8
    ino = p.stat().st_ino
    dev.mmap()  # a second mmap in INIT aliases the same area: same file
    assert p.stat().st_ino == ino


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_file_mode_0600_whatever_the_umask(
    devices: Devices, tmp_path: Path, profile: str, umask: int
) -> None:
    p = tmp_path / "area"
    old = os.umask(umask)
    try:
        dev = devices.open(profile, path=p)
        dev.init_trace(512)
        dev.mmap()
    finally:
        os.umask(old)
    assert mode_bits(p) == 0o600


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _socket(p: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(p))


def _symlink_to_fifo(p: Path) -> None:
    os.mkfifo(p.with_name("fifo"))
    os.symlink(p.with_name("fifo"), p)


# Only a regular file (or a symlink, which is replaced, not followed) is replaced: a FIFO, a
# socket or a device node at the path is someone else's (path="/dev/null" as root replaced
# the machine's /dev/null with a regular file).  A directory was already refused (EISDIR).
@pytest.mark.parametrize("make", [_fifo, _socket], ids=["fifo", "socket"])
@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_path_that_is_not_a_regular_file_is_refused_and_kept(
    devices: Devices, tmp_path: Path, profile: str, make: Callable[[Path], None]
) -> None:
    p = tmp_path / "area"
    make(p)
    kind = stat.S_IFMT(os.lstat(p).st_mode)
    dev = devices.open(profile, path=p)
    with pytest.raises(FileExistsError):
        dev.init_trace(512)
        dev.mmap()
    assert stat.S_IFMT(os.lstat(p).st_mode) == kind
    assert dev.area is None


def test_symlink_at_path_is_replaced_not_followed(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    _symlink_to_fifo(p)
    dev = devices.open("linux", path=p)
    dev.init_trace(512)
    assert stat.S_ISREG(os.lstat(p).st_mode)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_existing_file_replaced_with_0600(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    p.write_bytes(b"\xff" * 100)
    os.chmod(p, 0o666)
    dev = devices.open("linux", path=p)
    dev.init_trace(512)
    assert mode_bits(p) == 0o600
    assert p.stat().st_size == 512 * 8
    assert np.count_nonzero(np.fromfile(p, dtype="<u8")) == 0


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_file_stays_after_close_with_recorded_words(
    devices: Devices, tmp_path: Path, profile: str
) -> None:
    p = tmp_path / "area"
    dev, view = devices.enabled(profile, 512, path=p)
    pcs = [0x10, 0x20, 0x30, 2**64 - 1]
    for pc in pcs:
        kcovx.trace_pc(pc)
    dev.flush()
    if profile == "linux":
        dev.disable()
    dev.close()
    assert p.exists()
    on_disk = np.fromfile(p, dtype="<u8")
    assert len(on_disk) == 512
    assert on_disk[:5].tolist() == [4, *pcs]
    assert np.count_nonzero(on_disk[5:]) == 0
    assert view[:5].tolist() == [4, *pcs]


@pytest.mark.parametrize("profile", ["linux", "gvisor"])
def test_other_process_maps_same_words(devices: Devices, tmp_path: Path, profile: str) -> None:
    p = tmp_path / "area"
    dev, view = devices.enabled(profile, 512, path=p)
    kcovx.trace_pcs(np.array([7, 8, 9, 0xFFFF_FFFF_0000_0001], dtype=np.uint64))
    dev.flush()
    seen = read_words_elsewhere(p)
    assert seen == view.tolist()
    assert seen[:5] == [4, 7, 8, 9, 0xFFFF_FFFF_0000_0001]
    # and the other way round: a word written by another process is seen here
    code = (
        "import numpy as np, sys\n"
        "a = np.memmap(sys.argv[1], dtype='<u8', mode='r+', shape=(512,))\n"
        "a[0] = 0\n"
        "a.flush()\n"
    )
    subprocess.run([PY, "-c", code, str(p)], timeout=TIMEOUT, check=True)
    assert int(view[0]) == 0
    kcovx.trace_pc(0x44)  # the reset is honoured: the next PC goes at word 1
    dev.flush()
    assert read_words_elsewhere(p)[:2] == [1, 0x44]


# ---------------------------------------------------------------------------------------------
# concurrent reader: the count never runs ahead of the data

READER = r"""
import json, select, sys
import numpy as np
path, size = sys.argv[1], int(sys.argv[2])
a = np.memmap(path, dtype=np.uint64, mode="r", shape=(size,))
low = np.uint64(0xFFFFFFFF)
print("ready", flush=True)
samples = nonempty = max_count = 0
bad = []
while not select.select([sys.stdin], [], [], 0)[0]:
    r1 = int(a[1]) >> 32          # round of word 1, read before the count
    c = int(a[0])
    snap = np.array(a[1 : c + 1])  # then the words
    samples += 1
    if c > size - 1:
        bad.append(("count", c))
        continue
    if c == 0:
        continue
    nonempty += 1
    max_count = max(max_count, c)
    j = np.arange(1, c + 1, dtype=np.uint64)
    ok = (snap != 0) & ((snap & low) == j) & ((snap >> np.uint64(32)) >= np.uint64(max(r1, 1)))
    if not ok.all():
        k = int(np.argmin(ok))
        bad.append(("word", c, k + 1, int(snap[k]), r1))
    if len(bad) > 10:
        break
print(json.dumps({"samples": samples, "nonempty": nonempty, "max": max_count, "bad": bad}))
"""


def wait_line(proc: subprocess.Popen[str], expect: str) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, f"no {expect!r} from the child"
    line = proc.stdout.readline().strip()
    assert line == expect, line


def test_concurrent_reader_never_sees_count_ahead_of_data(devices: Devices, tmp_path: Path) -> None:
    size = 8192
    p = tmp_path / "area"
    _dev, view = devices.enabled("linux", size, path=p)
    reader = subprocess.Popen(
        [PY, "-c", READER, str(p), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        wait_line(reader, "ready")
        rng = random.Random(1234)
        total = 0
        rnd = 0
        start = time.monotonic()
        # round r writes (r << 32) | j at word j; each round starts with a user reset
        while total < 200_000 or time.monotonic() - start < 0.5:
            rnd += 1
            view[0] = 0
            length = rng.randrange(1, size + 200)  # some rounds overflow and clip
            pcs = (np.uint64(rnd) << np.uint64(32)) | np.arange(1, length + 1, dtype=np.uint64)
            i = 0
            while i < length:
                if rng.random() < 0.2:
                    kcovx.trace_pc(int(pcs[i]))
                    i += 1
                else:
                    n = rng.randrange(1, 600)
                    kcovx.trace_pcs(pcs[i : i + n])
                    i += n
            assert int(view[0]) == min(length, size - 1)
            total += length
        assert reader.stdin is not None
        out, _ = reader.communicate("stop\n", timeout=TIMEOUT)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(TIMEOUT)
    result = json.loads(out)
    assert result["bad"] == []
    assert result["nonempty"] >= 10, result
    assert result["max"] > 0


# ---------------------------------------------------------------------------------------------
# a writer killed mid-run leaves everything it published

WRITER = r"""
import sys
import numpy as np
import kcovx
path, size = sys.argv[1], int(sys.argv[2])
dev = kcovx.open("linux", path=path)
dev.init_trace(size)
v = dev.mmap()
dev.enable()
j = 1
while j < 2000:
    kcovx.trace_pc(j)
    j += 1
print("go", flush=True)
while True:  # PC j at word j, one at a time and in chunks, until killed (clipped when full)
    kcovx.trace_pc(j)
    kcovx.trace_pcs(np.arange(j + 1, j + 9, dtype=np.uint64))
    j += 9
"""


def test_writer_killed_mid_run_leaves_published_pcs(tmp_path: Path) -> None:
    size = 2**20
    p = tmp_path / "area"
    writer = subprocess.Popen(
        [PY, "-c", WRITER, str(p), str(size)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        wait_line(writer, "go")
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(TIMEOUT) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(TIMEOUT)
        assert writer.stdout is not None
        writer.stdout.close()
    words = np.fromfile(p, dtype="<u8")
    assert len(words) == size
    count = int(words[0])
    assert 1999 <= count <= size - 1
    assert np.array_equal(words[1 : count + 1], np.arange(1, count + 1, dtype=np.uint64))
    # past the count: at most an unpublished tail of the last chunk, nothing else
    tail = words[count + 1 :]
    nz = np.flatnonzero(tail)
    assert len(nz) <= 9
    assert np.array_equal(tail[nz], (count + 1 + nz).astype(np.uint64))


# ---------------------------------------------------------------------------------------------
# gvisor: DISABLE then a new mmap names a fresh area


def test_gvisor_remmap_after_disable_fresh_file_old_view_kept(
    devices: Devices, tmp_path: Path
) -> None:
    p = tmp_path / "area"
    dev, old = devices.enabled("gvisor", 512, path=p)
    kcovx.trace_pcs(np.array([1, 2, 3], dtype=np.uint64))
    dev.flush()
    dev.disable()
    assert old[:4].tolist() == [3, 1, 2, 3]
    assert np.fromfile(p, dtype="<u8")[:4].tolist() == [3, 1, 2, 3]  # not replaced yet
    new = dev.mmap()
    assert np.count_nonzero(new) == 0
    on_disk = np.fromfile(p, dtype="<u8")
    assert len(on_disk) == 512
    assert np.count_nonzero(on_disk) == 0
    assert mode_bits(p) == 0o600
    assert old[:4].tolist() == [3, 1, 2, 3]
    dev.enable()
    kcovx.trace_pc(9)
    dev.flush()
    assert new[:2].tolist() == [1, 9]
    assert read_words_elsewhere(p)[:2] == [1, 9]
    assert old[:4].tolist() == [3, 1, 2, 3]  # detached: the old view sees none of it
    old[0] = 0  # writing the old pages does not reach the new area
    assert int(new[0]) == 1


def test_linux_reinit_refused_keeps_file(devices: Devices, tmp_path: Path) -> None:
    p = tmp_path / "area"
    dev = devices.open("linux", path=p)
    dev.init_trace(512)
    view = dev.mmap()
    view[3] = 0x33
    ino = p.stat().st_ino
    with pytest.raises(OSError):
        dev.init_trace(512)  # EBUSY: the area file is not replaced
    assert p.stat().st_ino == ino
    assert int(np.fromfile(p, dtype="<u8")[3]) == 0x33
