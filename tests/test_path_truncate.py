"""What kcovx promises when another process shrinks a ``path=`` area file (README, ``path=``).

Owns: the documented behaviour, shown exactly.  A regular file mapped shared cannot be kept
from being truncated by a process allowed to write it, so kcovx does not try: the writer's next
append past the new end of the file touches a page the file no longer has, and the kernel kills
the writer with SIGBUS.  What the writer had published before the truncation stays on disk
within the file's new length, word 0 still holding the count published before.

Invariants: the writer is a child interpreter (``python -c``) that records, reports what it
published, waits for this test to truncate its file, then records again; every wait is bounded
by TIMEOUT and the child is killed on any failure.  The child turns its core dumps off.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _kcovx_support import TIMEOUT

import kcovx

WORDS = 2 * mmap.PAGESIZE // 8  # two pages: valid for both profiles
PUBLISHED = 600  # PCs 1..600: the count and the last ones lie in the second page
KEPT_BYTES = mmap.PAGESIZE  # the truncation keeps the first page

WRITER = r"""
import resource, sys
import kcovx

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGBUS dumps core by default: not here

profile, path, words, published = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kc = kcovx.open(profile, path=path)
kc.init_trace(words)
cover = kc.mmap()
kc.enable()
for pc in range(1, published + 1):
    kcovx.trace_pc(pc)
kc.flush()  # gvisor: the task work writes the pending PCs now (linux: already written)
print("published", int(cover[0]), flush=True)
sys.stdin.readline()  # the test truncates the file meanwhile
kcovx.trace_pc(published + 1)  # linux: the append stores past the end of the file
kc.flush()  # gvisor: the task work does
print("survived", flush=True)
"""


def _readline(proc: subprocess.Popen[str]) -> str:
    """The child's next stdout line, waiting at most TIMEOUT for it."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "the writer printed nothing"
    return proc.stdout.readline()


@pytest.mark.parametrize("profile", kcovx.PROFILES)
def test_truncated_area_file_kills_the_writer_with_sigbus_and_keeps_what_was_published(
    profile: str, tmp_path: Path
) -> None:
    path = tmp_path / "area"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, profile, str(path), str(WORDS), str(PUBLISHED)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdin is not None
        line = _readline(writer)
        assert line == f"published {PUBLISHED}\n", line

        # Published means on disk, for any process that reads the file.
        before = np.fromfile(path, dtype="<u8")
        assert len(before) == WORDS
        assert before[0] == PUBLISHED
        assert before[1 : PUBLISHED + 1].tolist() == list(range(1, PUBLISHED + 1))

        os.truncate(path, KEPT_BYTES)  # what any process with write permission can do
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(TIMEOUT)

    assert writer.returncode == -signal.SIGBUS, (writer.returncode, out, err)
    assert "survived" not in out
    after = np.fromfile(path, dtype="<u8")
    kept = KEPT_BYTES // 8
    assert len(after) == kept
    assert after[0] == PUBLISHED  # still the count published before: readers clamp to the file
    assert after[1:kept].tolist() == list(range(1, kept))  # the published PCs that still fit
