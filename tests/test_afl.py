"""kcovx.afl and ``kcovx afl``: AFL++'s fork server protocol spoken to a fake afl-fuzz (this
test: a SysV shared-memory map, pipes on fds 198/199 of a subprocess, the hello, run
commands, pids and wait statuses), the map contents for known traces, persistent mode, the
crash policy, behaviour outside afl-fuzz; the fold itself; and, where afl-fuzz is installed,
a short real campaign on examples/afl_target.py.

Each test runs its targets in subprocesses; every wait is bounded (``TIMEOUT``), and nothing
asserts on time.  Single-threaded.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from _native_support import NATIVECOV, built

import kcovx
import kcovx.sancov
from kcovx import _area, afl

HERE = Path(__file__).parent
TARGETS = HERE / "afl"
EXAMPLE = HERE.parent / "examples" / "afl_target.py"
KCOVX = [sys.executable, "-m", "kcovx"]
TIMEOUT = 60.0  # seconds: a deadlock guard, not a measure
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.restype = ctypes.c_int
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]

M64 = (1 << 64) - 1


def mix(x: int) -> int:
    """The fold's PC hash (splitmix64's finalizer), written again here."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def edges(pcs: Iterable[int], map_size: int) -> dict[int, int]:
    """The map the fold makes of one ordered trace: {index: count (u8)}."""
    out: Counter[int] = Counter()
    prev = 0
    for pc in pcs:
        cur = mix(pc)
        out[(cur ^ (prev >> 1)) & (map_size - 1)] += 1
        prev = cur
    return {i: c % 256 for i, c in out.items() if c % 256}


def nonzero(m: bytes) -> dict[int, int]:
    return {i: v for i, v in enumerate(m) if v}


class FakeAfl:
    """afl-fuzz's side of the protocol, for one target process."""

    def __init__(
        self,
        argv: Sequence[str],
        map_size: int = 1 << 16,
        env: dict[str, str] | None = None,
        read_hello: bool = True,
    ) -> None:
        self.shm_id = _libc.shmget(IPC_PRIVATE, map_size, IPC_CREAT | 0o600)
        assert self.shm_id >= 0, os.strerror(ctypes.get_errno())
        addr = _libc.shmat(self.shm_id, None, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        self.addr = addr
        self.map = (ctypes.c_ubyte * map_size).from_address(addr)
        self.input = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        ctl_r, self.ctl = os.pipe()
        self.st, st_w = os.pipe()
        for fd in (afl.FORKSRV_FD, afl.FORKSRV_FD + 1):
            with pytest.raises(OSError):
                os.fstat(fd)  # free: the test process does not use them
        os.dup2(ctl_r, afl.FORKSRV_FD)
        os.dup2(st_w, afl.FORKSRV_FD + 1)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=self.input,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(afl.FORKSRV_FD, afl.FORKSRV_FD + 1),
                env={**os.environ, **(env or {}), afl.SHM_ENV: str(self.shm_id)},
            )
        finally:
            for fd in (afl.FORKSRV_FD, afl.FORKSRV_FD + 1, ctl_r, st_w):
                os.close(fd)
        self.hello = self._read() if read_hello else -1

    def _read(self) -> int:
        data = b""
        while len(data) < 4:
            ready, _, _ = select.select([self.st], [], [], TIMEOUT)
            assert ready, "the fork server did not answer"
            chunk = os.read(self.st, 4 - len(data))
            assert chunk, f"the fork server closed its status pipe: {self.finish()}"
            data += chunk
        word: int = struct.unpack("=I", data)[0]
        return word

    def run(self, data: bytes, killed: int = 0) -> tuple[int, int, dict[int, int]]:
        """One input: (child pid, wait status, the map's nonzero counters)."""
        self.input.seek(0)
        self.input.truncate()
        self.input.write(data)
        self.input.flush()
        self.input.seek(0)
        ctypes.memset(self.addr, 0, len(self.map))  # as afl-fuzz clears it before each run
        os.write(self.ctl, struct.pack("=I", killed))
        pid = self._read()
        status = self._read()
        return pid, status, nonzero(bytes(self.map))

    def finish(self) -> tuple[int | None, str]:
        """Close the command pipe (the server exits); the target's status and stderr."""
        if self.ctl >= 0:
            os.close(self.ctl)
            self.ctl = -1
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")

    def close(self) -> None:
        self.finish()
        os.close(self.st)
        self.input.close()
        _libc.shmdt(ctypes.c_void_p(self.addr))
        _libc.shmctl(self.shm_id, IPC_RMID, None)


@pytest.fixture
def fake() -> Iterator[list[FakeAfl]]:
    made: list[FakeAfl] = []
    yield made
    for f in made:
        f.close()


def start(made: list[FakeAfl], argv: Sequence[str], **kw: object) -> FakeAfl:
    f = FakeAfl(argv, **kw)  # type: ignore[arg-type]
    made.append(f)
    return f


def pcs_of(data: bytes, base: int) -> list[int]:
    return [base + b for b in data]


# -- the protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize(("segment", "announced"), [(1 << 16, 1 << 16), (5000, 4096), (8, 8)])
def test_hello_announces_the_map_size(fake: list[FakeAfl], segment: int, announced: int) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_init.py")], map_size=segment)
    assert f.hello == afl.FS_OPT_ENABLED | afl.FS_OPT_MAPSIZE | ((announced - 1) << 1)
    # afl-fuzz's reading of it: FS_OPT_GET_MAPSIZE
    assert ((f.hello & 0x00FFFFFE) >> 1) + 1 == announced
    _, status, m = f.run(b"\x01\x02")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert m == edges(pcs_of(b"\x01\x02", 0x1000), announced)


def test_fork_server_known_traces(fake: list[FakeAfl]) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_init.py")])
    pids = set()
    for data in (b"\x01\x02\x01", b"", b"\x05" * 300, b"\x01\x02\x01"):
        pid, status, m = f.run(data)
        pids.add(pid)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert m == edges(pcs_of(data, 0x1000), 1 << 16)  # exactly this input's edges
    assert len(pids) == 4  # a child per input
    code, err = f.finish()
    assert code == 0, err


def test_uncaught_exception_is_sigabrt(fake: list[FakeAfl]) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_init.py")])
    _, status, m = f.run(b"!\x03")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    assert m == edges(pcs_of(b"!\x03", 0x1000), 1 << 16)  # covered up to the crash
    _, status, _ = f.run(b"\x03")  # the server goes on
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    _, err = f.finish()
    assert "ValueError: a crash" in err


def test_uncaught_exception_in_a_thread_is_sigabrt(fake: list[FakeAfl]) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_thread.py")])
    _, status, m = f.run(b"!\x03")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    assert m == edges(pcs_of(b"!\x03", 0x3000), 1 << 16)
    _, status, _ = f.run(b"?")  # KeyError, listed: printed, the program goes on
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    _, status, _ = f.run(b"\x01")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    _, err = f.finish()
    assert "ValueError: a crash in a thread" in err and "KeyError" in err
    assert err.count("Traceback") == 2


def native_trace(fn: Callable[[], object]) -> list[int]:
    """What fn() records on a linux device of this thread."""
    dev = kcovx.open(profile="linux")
    try:
        dev.init_trace(4096)
        w = dev.mmap()
        dev.enable()
        w[0] = 0
        fn()
        pcs = [int(x) for x in w[1 : 1 + int(w[0])]]
        dev.disable()
    finally:
        dev.close()
    return pcs


def test_native_coverage_reaches_the_map(
    fake: list[FakeAfl], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A compiler-instrumented extension's trace-pc hooks record into the fork server's area,
    and so into AFL's map: exactly the edges of the trace the same call records in-process."""
    nc = built(tmp_path_factory, "nativecov", NATIVECOV)
    env = {"PYTHONPATH": os.pathsep.join([str(nc.folder), os.environ.get("PYTHONPATH", "")])}
    f = start(fake, [sys.executable, str(TARGETS / "trace_native.py")], env=env)
    for x in (5, 50):
        want = native_trace(lambda: nc.module.pick(x))  # noqa: B023 (called at once)
        assert want and all(kcovx.sancov.is_native(pc) for pc in want)
        _, status, m = f.run(str(x).encode())
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert m == edges(want, 1 << 16)
    assert native_trace(lambda: nc.module.pick(5)) != native_trace(lambda: nc.module.pick(50))


@pytest.mark.parametrize("env", [{}, {afl.EXPECTED_ENV: "builtins.ValueError, LookupError"}])
def test_expected_exceptions_are_not_crashes(fake: list[FakeAfl], env: dict[str, str]) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_init.py")], env=env)
    _, status, _ = f.run(b"?")  # KeyError: listed by init(expected=[KeyError])
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    _, status, _ = f.run(b"!")  # ValueError: a crash unless the variable lists it
    if env:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    else:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT


def test_persistent_loop(fake: list[FakeAfl]) -> None:
    f = start(fake, [sys.executable, str(TARGETS / "trace_loop.py"), "3"])
    inputs = [b"\x01", b"\x02\x03", b"", b"\x04\x04", b"\x05"]
    seen = []
    for data in inputs:
        pid, status, m = f.run(data)
        seen.append((pid, status))
        assert m == edges(pcs_of(data, 0x2000), 1 << 16)  # reset per input
    # three inputs per process: stopped, stopped, exited; then a new child
    p1, p2 = seen[0][0], seen[3][0]
    assert [p for p, _ in seen] == [p1, p1, p1, p2, p2] and p1 != p2
    assert [os.WIFSTOPPED(s) for _, s in seen] == [True, True, False, True, True]
    assert os.WIFEXITED(seen[2][1]) and os.WEXITSTATUS(seen[2][1]) == 0
    # afl-fuzz killed the stopped child (a timeout): the server reaps it and forks anew
    os.kill(p2, signal.SIGKILL)
    pid, status, m = f.run(b"\x06", killed=1)
    assert pid not in (p1, p2) and os.WIFSTOPPED(status)
    assert m == edges([0x2006], 1 << 16)
    pid2, status, _ = f.run(b"!")
    assert pid2 == pid and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    # afl-fuzz goes away while a child waits, stopped, for its next input: the server kills
    # and reaps it, so no stopped process is left holding the target's pipes
    pid3, status, _ = f.run(b"\x07")
    assert os.WIFSTOPPED(status)
    code, _ = f.finish()
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid3, 0)


# -- outside afl-fuzz: as python-afl --------------------------------------------------------


def test_outside_afl_runs_plainly(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.write_bytes(b"\x01")
    with inp.open("rb") as f:
        r = subprocess.run(
            check=False,
            args=[sys.executable, str(TARGETS / "trace_loop.py"), "5"],
            stdin=f,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert r.returncode == 0 and r.stdout == b"iterations 1\n"
    inp.write_bytes(b"!")
    with inp.open("rb") as f:
        r = subprocess.run(
            check=False,
            args=[sys.executable, str(TARGETS / "trace_init.py")],
            stdin=f,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert r.returncode == 1 and b"ValueError: a crash" in r.stderr  # no abort


def test_api_misuse() -> None:
    code = (
        "import kcovx.afl as a\n"
        "a.init()\n"
        "try:\n    a.init()\nexcept RuntimeError:\n    print('twice')\n"
        "try:\n    a.loop(0)\nexcept ValueError:\n    print('n')\n"
    )
    r = subprocess.run(
        check=False, args=[sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT
    )
    assert r.stdout == b"twice\nn\n", r.stderr


# -- kcovx afl -----------------------------------------------------------------------------


@pytest.mark.parametrize("persistent", [[], ["--persistent", "4"]])
def test_cli(fake: list[FakeAfl], persistent: list[str]) -> None:
    f = start(fake, [*KCOVX, "afl", *persistent, str(EXAMPLE)])
    maps = []
    for data in (b"aaaa", b"kaaa", b"kcaa", b"kcoa", b"kcaa"):
        _, status, m = f.run(data)
        assert os.WIFEXITED(status) or os.WIFSTOPPED(status)
        maps.append(m)
    # deeper inputs reach more edges; the same input, the same map
    assert len(maps[0]) < len(maps[1]) < len(maps[2]) < len(maps[3])
    assert maps[4] == maps[2]
    _, status, m = f.run(b"kcov!")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    _, err = f.finish()
    assert "RuntimeError: found the crash" in err


def test_cli_persistent_survives_crashes(fake: list[FakeAfl]) -> None:
    """Under ``--persistent N`` each run starts the program afresh, so a crash is reported as
    SIGABRT and the same process takes the next input (no fork per crash); a crash on the
    last of its N inputs is a real SIGABRT.  The traceback reaches stderr."""
    f = start(fake, [*KCOVX, "afl", "--persistent", "3", str(EXAMPLE)])
    runs = [f.run(data) for data in (b"kcov!", b"kcaa", b"kcov!", b"kcov?")]
    assert [os.WIFSIGNALED(st) and os.WTERMSIG(st) for _, st, _ in runs] == [
        signal.SIGABRT,
        False,
        signal.SIGABRT,
        signal.SIGABRT,
    ]
    assert os.WIFSTOPPED(runs[1][1])
    assert runs[0][0] == runs[1][0] == runs[2][0] != runs[3][0]
    assert runs[0][2] == runs[2][2] != runs[1][2]  # covered up to the crash, each time
    _, status, _ = f.run(b"kcaa")
    assert os.WIFSTOPPED(status)
    _, err = f.finish()
    assert err.count("RuntimeError: found the crash") == 3


def test_no_traceback_into_dev_null(tmp_path: Path) -> None:
    """With stderr on /dev/null (afl-fuzz's default) the crash policy skips formatting the
    traceback; the crash is still SIGABRT.  (Checked in-process: the decision itself.)"""
    code = (
        "import os, sys\n"
        "from kcovx import afl\n"
        "print(afl._stderr_discarded())\n"
        "sys.stdout.flush()\n"
        "afl.crash(ValueError('x'))\n"
    )
    for err, want in ((subprocess.DEVNULL, b"True\n"), (subprocess.PIPE, b"False\n")):
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=False,
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=TIMEOUT,
            check=False,
        )
        assert r.stdout == want and r.returncode == -signal.SIGABRT
        if err == subprocess.PIPE:
            assert b"ValueError: x" in r.stderr


def test_cli_expected_and_plain_run(fake: list[FakeAfl], tmp_path: Path) -> None:
    f = start(fake, [*KCOVX, "afl", "--expected", "RuntimeError", str(EXAMPLE)])
    _, status, _ = f.run(b"kcov")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    inp = tmp_path / "in"
    inp.write_bytes(b"kcov")
    with inp.open("rb") as fin:
        r = subprocess.run(
            check=False,
            args=[*KCOVX, "afl", str(EXAMPLE)],
            stdin=fin,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert r.returncode == 1 and b"RuntimeError: found the crash" in r.stderr
    r = subprocess.run(
        check=False, args=[*KCOVX, "afl", str(tmp_path / "nope.py")], capture_output=True
    )
    assert r.returncode == 2


def test_cli_deferred(fake: list[FakeAfl]) -> None:
    """``kcovx afl --deferred``: the program's own init() forks after its imports (a child per
    input); its own loop(N) is persistent, N inputs per process, stdin rewound by loop()."""
    f = start(fake, [*KCOVX, "afl", "--deferred", str(TARGETS / "trace_init.py")])
    runs = [f.run(data) for data in (b"\x01\x02", b"\x03", b"\x01\x02")]
    assert all(os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0 for _, st, _ in runs)
    assert len({pid for pid, _, _ in runs}) == 3  # forked per input
    assert runs[0][2] == runs[2][2] != runs[1][2] and runs[1][2]
    _, status, _ = f.run(b"?")  # KeyError: listed by the program's init(expected=[KeyError])
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    _, status, _ = f.run(b"!")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    f.finish()
    g = start(fake, [*KCOVX, "afl", "--deferred", str(TARGETS / "trace_loop.py"), "3"])
    runs = [g.run(data) for data in (b"\x01", b"\x02", b"\x01", b"\x02")]
    assert [os.WIFSTOPPED(st) for _, st, _ in runs] == [True, True, False, True]
    assert runs[0][0] == runs[1][0] == runs[2][0] != runs[3][0]  # three inputs per process
    assert runs[0][2] == runs[2][2] != runs[1][2] == runs[3][2]
    _, status, _ = g.run(b"!")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    code, err = g.finish()
    assert code == 0 and "ValueError: a crash" in err


def test_cli_deferred_without_the_api(fake: list[FakeAfl]) -> None:
    """A program that never starts the server under --deferred: a message and status 2 (and
    no hello, so afl-fuzz stops at its handshake); --persistent with --deferred is a usage
    error."""
    f = start(fake, [*KCOVX, "afl", "--deferred", str(EXAMPLE)], read_hello=False)
    with pytest.raises(AssertionError, match="closed its status pipe"):
        f._read()
    code, err = f.finish()
    assert code == 2 and "never heard from a fork server" in err
    r = subprocess.run(
        [*KCOVX, "afl", "--deferred", "--persistent", "3", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )
    assert r.returncode == 2 and "exclude each other" in r.stderr


# -- the fold --------------------------------------------------------------------------------


def test_fold_counts_and_wraps() -> None:
    a = _area.Area(1024)
    pcs = [7] * 258 + [9]
    for pc in pcs:
        a.append_pc(pc)
    m = bytearray(1 << 10)
    assert _area.afl_fold(a, m) == len(pcs)
    assert nonzero(bytes(m)) == edges(pcs, 1 << 10)
    assert nonzero(bytes(m))[(mix(7) ^ (mix(7) >> 1)) & 1023] == 257 % 256


def test_fold_clips_to_the_area_and_validates() -> None:
    a = _area.Area(4)
    with memoryview(a) as w:
        w[0], w[1], w[2], w[3] = 1000, 1, 2, 3  # a count past the area's end
    m = bytearray(64)
    assert _area.afl_fold(a, m) == 3
    assert nonzero(bytes(m)) == edges([1, 2, 3], 64)
    for bad in (bytearray(63), bytearray(1), bytearray(0)):
        with pytest.raises(ValueError, match="power of two"):
            _area.afl_fold(a, bad)
    with pytest.raises(ValueError, match="writable"):
        _area.afl_fold(a, bytes(64))
    with pytest.raises(TypeError):
        _area.afl_fold(a, 64)  # type: ignore[arg-type]


# -- afl-fuzz itself -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("afl-fuzz") is None, reason="afl-fuzz is not installed")
def test_afl_fuzz_finds_the_crash(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "seed").write_bytes(b"aaaa")
    # Single bytes as AFL's dictionary: still one new branch per byte for the coverage to
    # guide afl-fuzz to (not the whole magic), but each step found in seconds, not by luck.
    (tmp_path / "bytes.dict").write_text("".join(f'b{i}="{c}"\n' for i, c in enumerate("kcov")))
    kcovx_bin = Path(sys.executable).parent / "kcovx"
    env = {
        **os.environ,
        "AFL_NO_UI": "1",
        "AFL_SKIP_CPUFREQ": "1",
        "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1",
        "AFL_SKIP_BIN_CHECK": "1",  # the target is a Python entry point, not an ELF
        "AFL_BENCH_UNTIL_CRASH": "1",  # stop at the first crash
        "AFL_NO_AFFINITY": "1",
    }
    out = tmp_path / "out"
    cmd = ["afl-fuzz", "-i", "in", "-o", "out", "-x", "bytes.dict", "-V", "50", "--"]
    target = [str(kcovx_bin), "afl", "--persistent", "1000", str(EXAMPLE)]
    r = subprocess.run(
        check=False,
        args=["timeout", "60", *cmd, *target],
        cwd=tmp_path,
        env=env,
        capture_output=True,
    )
    log = r.stdout.decode(errors="replace")
    assert "fork server is up" in log, log[-3000:]
    assert "Target map size: 65536" in log  # our hello's FS_OPT_MAPSIZE, as afl-fuzz read it
    crashes = list((out / "default" / "crashes").glob("id:*"))
    assert crashes, log[-3000:]
    assert all(",sig:06," in p.name for p in crashes)  # SIGABRT
    with crashes[0].open("rb") as f:  # reproduces when run plainly
        plain = subprocess.run(
            check=False,
            args=[sys.executable, str(EXAMPLE)],
            stdin=f,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert plain.returncode == 1 and b"RuntimeError: found the crash" in plain.stderr


@pytest.mark.parametrize("persistent", [[], ["--persistent", "3"]])
def test_cli_runs_programs_written_for_the_api(fake: list[FakeAfl], persistent: list[str]) -> None:
    """A program calling init()/loop() itself under ``kcovx afl``: init only adds its
    expected types, loop's body runs once per run of the program.  (Instrumented, its own
    blocks come between the hand-written PCs, so maps are compared with each other.)"""
    f = start(fake, [*KCOVX, "afl", *persistent, str(TARGETS / "trace_init.py")])
    maps = []
    for data in (b"\x01\x02", b"\x03", b"\x01\x02"):
        _, status, m = f.run(data)
        assert (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or os.WIFSTOPPED(status)
        maps.append(m)
    assert maps[0] == maps[2] != maps[1] and maps[1]
    _, status, _ = f.run(b"?")  # KeyError: listed by the program's init(expected=[KeyError])
    assert (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1) or os.WIFSTOPPED(status)
    _, status, _ = f.run(b"!")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    f.finish()
    g = start(fake, [*KCOVX, "afl", *persistent, str(TARGETS / "trace_loop.py"), "7"])
    maps = []
    for data in (b"\x01", b"\x02", b"\x01", b"\x02"):
        _, status, m = g.run(data)
        assert (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or os.WIFSTOPPED(status)
        maps.append(m)
    assert maps[0] == maps[2] != maps[1] == maps[3]
    code, _ = g.finish()
    assert code == 0
