"""What ``kcovx run`` leaves on disk when the program does not exit cleanly: SIGKILL,
``os._exit``, SIGTERM (README, "Failure model"; kcovx/run.py's docstring).

The cover file is the device's area file from the start, so the linux profile (which appends
as blocks run) keeps every PC recorded before a SIGKILL or ``os._exit``; the gvisor profile
moves PCs into the area only by task work, which ``kcovx run`` runs at exit and on SIGTERM.
The PC table is written before the program runs and again at exit.  Every program runs in a
subprocess.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _kcovx_support import python

from kcovx import load_pcs_table, read_cover

WORK = textwrap.dedent(
    """\
    import os, signal, sys, time

    def work(n):
        total = 0
        for i in range(n):
            if i % 2:
                total += i
            else:
                total -= 1
        return total

    work(10)
    how = sys.argv[1]
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "_exit":
        os._exit(3)
    elif how == "term":
        try:
            import late  # a module imported while the program runs: in the final table
            late.f()
            print("ready", flush=True)
            time.sleep(60)
        finally:
            print("finally ran", flush=True)
    print("not reached")
    """
)


def start(tmp_path: Path, profile: str, how: str) -> subprocess.Popen[str]:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "late.py").write_text("def f():\n    return 1\n")
    return subprocess.Popen(
        [sys.executable, "-m", "kcovx", "run", "--profile", profile, "work.py", how],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def functions(tmp_path: Path, pcs: list[int]) -> set[str]:
    table = load_pcs_table(tmp_path / "kcovx.pcs")
    return {table[pc].function for pc in pcs}


@pytest.mark.parametrize(("how", "status"), [("kill", -signal.SIGKILL), ("_exit", 3)])
def test_linux_profile_keeps_every_pc_when_the_process_dies(
    tmp_path: Path, how: str, status: int
) -> None:
    p = start(tmp_path, "linux", how)
    out, err = p.communicate(timeout=120)
    assert p.returncode == status, err
    assert "not reached" not in out
    pcs = read_cover(tmp_path / "kcovx.cover").tolist()
    # work(10) ran its loop ten times, each block recorded as it ran.
    assert len(pcs) > 20
    # The table written before the program ran names the script's blocks.
    assert functions(tmp_path, pcs) == {"<module>", "work"}
    # The file is the whole area (the process never cut it), and says so in its count word.
    assert (tmp_path / "kcovx.cover").stat().st_size == 8 * (1 << 20)


@pytest.mark.parametrize("how", ["kill", "_exit"])
def test_gvisor_profile_loses_what_was_not_flushed(tmp_path: Path, how: str) -> None:
    p = start(tmp_path, "gvisor", how)
    _, err = p.communicate(timeout=120)
    assert p.returncode in (-signal.SIGKILL, 3), err
    # The area file is there, with no PC: task work never ran.  (Documented in README.)
    assert read_cover(tmp_path / "kcovx.cover").tolist() == []
    assert load_pcs_table(tmp_path / "kcovx.pcs")


@pytest.mark.parametrize("profile", ["gvisor", "linux"])
def test_sigterm_is_handled_like_an_exit(tmp_path: Path, profile: str) -> None:
    p = start(tmp_path, profile, "term")
    assert p.stdout is not None
    deadline = time.monotonic() + 120
    line = p.stdout.readline()
    assert line == "ready\n" or time.monotonic() > deadline, line
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    # The program's finally blocks ran, the outputs were written, then SIGTERM's default
    # action ended the process.
    assert p.returncode == -signal.SIGTERM, err
    assert out == "finally ran\n"
    assert "PCs recorded" in err and "Traceback" not in err
    pcs = read_cover(tmp_path / "kcovx.cover").tolist()
    assert f"{len(pcs)} PCs recorded" in err
    # Cut to count + PCs, and the final table has the module imported during the run.
    assert (tmp_path / "kcovx.cover").stat().st_size == 8 * (1 + len(pcs))
    assert functions(tmp_path, pcs) >= {"<module>", "work", "f"}


def test_sigterm_handler_of_the_caller_is_respected(tmp_path: Path) -> None:
    # Started with SIGTERM ignored: kcovx run leaves it ignored (the program runs on).
    (tmp_path / "t.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('still here')\n"
    )
    r = python(
        "-m",
        "kcovx",
        "run",
        "t.py",
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "still here\n"


def test_cover_file_of_a_clean_exit_is_count_and_pcs(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x = 1\nif x:\n    y = 2\n")
    r = python("-m", "kcovx", "run", "ok.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "kcovx.cover").read_bytes()
    count = int.from_bytes(data[:8], "little")
    assert count >= 2 and len(data) == 8 * (1 + count)
    assert os.stat(tmp_path / "kcovx.cover").st_size == len(data)


def test_no_room_for_the_area_stops_before_the_program(tmp_path: Path) -> None:
    # A file size limit stands in for a full disk: reserving the area's 8 MiB fails up front
    # (EFBIG) instead of the program dying of SIGBUS when it first writes past the limit.
    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    (tmp_path / "marker.py").write_text("open('ran', 'w').close()\n")
    r = python(
        "-m",
        "kcovx",
        "run",
        "--profile",
        "linux",
        "marker.py",
        cwd=tmp_path,
        preexec_fn=limit_file_size,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert lines == [
        "kcovx run: [Errno 27] cannot make the area file: File too large: 'kcovx.cover'"
    ]
    assert not (tmp_path / "ran").exists()


def test_a_full_disk_is_found_when_the_area_is_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sparse area file on a full disk would fault (SIGBUS) at the first write to a page
    # that has no block: run reserves the blocks first, and ENOSPC is a clear error.
    from kcovx import run

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = tmp_path / "area"
    path.write_bytes(b"")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="no room for 4096 bytes") as info:
        run._reserve(str(path), 4096)
    assert info.value.errno == errno.ENOSPC
