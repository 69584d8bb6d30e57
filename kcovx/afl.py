"""``kcovx.afl``: AFL++ drives kcovx.  ``init()`` starts AFL's fork server (deferred: call it
after the imports), ``loop(n)`` runs ``n`` inputs per process (persistent mode); ``kcovx afl``
(``run_target``) runs a script or module under either.  The API and its behaviour outside
afl-fuzz follow python-afl's ``afl.init``/``afl.loop``.

Owns: the fork server protocol on fds 198/199, attaching AFL's shared-memory map
(``__AFL_SHM_ID``), the area the fork server's children record into, folding each input's
trace into AFL's map (``_area.afl_fold``, in C), and the crash policy (an exception that
escapes the program or any of its threads is ``os.abort()``, unless its type is listed as
expected).

The protocol, as the AFL++ this was checked against speaks it (4.04c, Debian's ``afl++``;
``include/config.h``, ``include/types.h``, ``src/afl-forkserver.c``; this version has the
option-flags hello, not the later versioned handshake):

- afl-fuzz makes a SysV shared-memory segment (the edge map, one u8 counter per edge) and puts
  its id in ``__AFL_SHM_ID``; fd 198 carries commands to the target, fd 199 its replies, all
  4-byte native-endian words.
- Hello: the target writes one word.  0 is plain AFL.  ``FS_OPT_ENABLED`` (0x80000001) with
  ``FS_OPT_MAPSIZE`` (0x40000000) and ``(map_size - 1) << 1`` in bits 1..23 tells afl-fuzz the
  map size the target uses (at most afl-fuzz's own, else it stops with a message).  afl-fuzz
  answers only to ``FS_OPT_AUTODICT``/``FS_OPT_SHDMEM_FUZZ``, which are not sent here.
- Per input: afl-fuzz clears the map and writes one word (nonzero: it killed the previous
  child, a timeout); the server replies with the child's pid, then its wait status.  A
  signalled child is a crash (SIGKILL after a timeout: a hang).
- Persistent mode, as afl-fuzz sees it: the same pid for many inputs, each ending in a
  "stopped" wait status (AFL++'s own runtime has the child SIGSTOP itself and the server
  resume it).  Here the child speaks the protocol itself between inputs, which saves two
  process wake-ups per input: it folds its trace, writes the stopped status, reads the next
  command and replies with its own pid (the first time too, just after the fork).  The
  server meanwhile sleeps in ``waitpid``; when the child is gone (a crash, afl-fuzz's
  timeout kill, or the program's end after its last input) it reports the input the child
  was running, if a shared page says one was, and forks the next child on the next command.
  Under ``kcovx afl --persistent N``, which starts the program afresh for each input, a
  crash is reported as a SIGABRT status and the same child goes on to the next input.

Coverage: the server maps one area (linux profile, an ordered trace, anonymous shared memory)
before forking; each child enables the device on its main thread, so its Python probes and
native hooks record there.  The count is reset before each input and the trace folded into
AFL's map before its status is sent (by the persistent child between inputs, else by the
server once the child is gone): an input that crashes, hangs or calls ``os._exit`` is still
covered up to its end.

Threading: call ``init``/``loop`` from the main thread of a process with no other threads
(the server forks).  One writer per area: the child records, resets and folds while it
lives; the server resets and folds only before it forks or once the child is gone (after
``waitpid``, which orders the child's stores before the server's loads; so for the phase
page).  Threads an input starts are the program's own: an exception escaping one is a crash
like one escaping the main thread (``threading.excepthook``), but what they run is not
recorded (the device, like Linux kcov's, belongs to the thread that enabled it: the child's
main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gc
import mmap
import os
import signal
import stat
import struct
import sys
import threading
import traceback
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn

import kcovx
from kcovx import _area

__all__ = ["EXPECTED_ENV", "init", "loop", "run_target"]

FORKSRV_FD: Final = 198  # commands from afl-fuzz; FORKSRV_FD + 1: our replies
SHM_ENV: Final = "__AFL_SHM_ID"
MAP_SIZE: Final = 1 << 16  # AFL++'s default map, when the segment's size is unknown
FS_OPT_ENABLED: Final = 0x80000001
FS_OPT_MAPSIZE: Final = 0x40000000
FS_OPT_MAX_MAPSIZE: Final = (0x00FFFFFE >> 1) + 1
AREA_WORDS: Final = 1 << 20  # the children's ordered trace: 8 MiB
# Exception types that are not crashes: comma-separated names, "ValueError" or
# "json.JSONDecodeError" (module and qualified name); a subclass of a listed type matches.
EXPECTED_ENV: Final = "KCOVX_AFL_EXPECTED"

_WORD = struct.Struct("=I")
# A persistent child's phase, in a shared page the server reads once the child is gone.
_WAITING: Final = 0  # between inputs: nothing to report
_RUNNING: Final = 1  # an input is running: its status is still owed to afl-fuzz
_STOPPED_STATUS: Final = (signal.SIGSTOP << 8) | 0x7F  # what waitpid says of a stopped child
_ABORTED_STATUS: Final = int(signal.SIGABRT)  # ... of a child killed by SIGABRT
_CRASHED: Final = -1  # _run_once: an unexpected exception, survived
_IPC_STAT: Final = 2
_SHM_SEGSZ_OFFSET: Final = 48  # struct shmid_ds on 64-bit Linux: after the 48-byte ipc_perm


@dataclass
class _State:
    started: bool = False
    server: bool = False  # under afl-fuzz: this process is a child of the fork server
    iterations: int = 0
    expected: list[str] = field(default_factory=list)
    device: kcovx.Device | None = None
    # Under ``kcovx afl`` (run_target), which runs the fork server itself: the program's own
    # init() is a no-op and its loop() runs the body once per run of the program.
    managed: bool = False
    body_ran: bool = False
    persist: _Persist | None = None  # in a persistent child of the server
    owed: int = _STOPPED_STATUS  # the status the persistent child reports for this input


@dataclass
class _Persist:
    """A persistent child's handles: its area, AFL's map, the shared phase page."""

    area: _area.Area
    afl_map: ctypes.Array[ctypes.c_ubyte] | None
    phase: mmap.mmap


_state = _State()


def hello_word(map_size: int | None) -> int:
    """The hello announcing ``map_size`` (None: plain AFL's 0)."""
    if map_size is None:
        return 0
    if not 2 <= map_size <= FS_OPT_MAX_MAPSIZE:
        raise ValueError(f"map size {map_size} outside 2..{FS_OPT_MAX_MAPSIZE}")
    return FS_OPT_ENABLED | FS_OPT_MAPSIZE | ((map_size - 1) << 1)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmctl.restype = ctypes.c_int
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return libc


def _segment_size(libc: ctypes.CDLL, shm_id: int) -> int | None:
    """The segment's size in bytes (IPC_STAT), where the layout is known (64-bit Linux)."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    buf = ctypes.create_string_buffer(256)
    if libc.shmctl(shm_id, _IPC_STAT, buf) != 0:
        return None
    size: int = struct.unpack_from("=Q", buf.raw, _SHM_SEGSZ_OFFSET)[0]
    return size


def attach_map(shm_id: int) -> ctypes.Array[ctypes.c_ubyte]:
    """AFL's map, attached: the largest power of two bytes of the segment (capped at what the
    hello can announce; ``AFL_MAP_SIZE`` or 64 KiB when the segment's size is unknown)."""
    libc = _libc()
    addr = libc.shmat(shm_id, None, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"shmat({SHM_ENV}={shm_id}): {os.strerror(err)}")
    size = _segment_size(libc, shm_id)
    if size is None:
        size = int(os.environ.get("AFL_MAP_SIZE", MAP_SIZE))
    if size < 2:
        raise ValueError(f"AFL's map of {size} bytes is too small")
    size = min(1 << (size.bit_length() - 1), FS_OPT_MAX_MAPSIZE)
    return (ctypes.c_ubyte * size).from_address(addr)


# -- the crash policy -------------------------------------------------------------------------


def _names(tp: type[BaseException]) -> set[str]:
    out = set()
    for cls in tp.__mro__:
        out.add(f"{cls.__module__}.{cls.__qualname__}")
        if cls.__module__ == "builtins":
            out.add(cls.__qualname__)
    return out


def is_expected(tp: type[BaseException], expected: Iterable[str] | None = None) -> bool:
    """Whether an uncaught exception of type ``tp`` is not a crash: ``tp`` or a base of it is
    listed (``expected``, else the process's list: ``init``/``loop``'s and ``EXPECTED_ENV``)."""
    listed = set(_state.expected if expected is None else expected)
    return bool(listed & _names(tp))


def crash(exc: BaseException) -> NoReturn:
    """Print the traceback as python would, then die by SIGABRT: a crash to AFL."""
    _print_exception(exc)
    os.abort()


def _print_exception(exc: BaseException) -> None:
    """The traceback on stderr, unless stderr is /dev/null (afl-fuzz's default for its
    target, where formatting it would cost more than most inputs: source lines are read
    afresh in every new child)."""
    if _stderr_discarded():
        return
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    with contextlib.suppress(Exception):
        sys.stderr.flush()


@functools.cache
def _stderr_discarded() -> bool:
    try:
        err, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(err.st_mode) and err.st_rdev == null.st_rdev


def _excepthook(
    tp: type[BaseException], value: BaseException, tb: types.TracebackType | None
) -> None:
    if is_expected(tp):
        sys.__excepthook__(tp, value, tb)
        return
    crash(value.with_traceback(tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or is_expected(args.exc_type):
        threading.__excepthook__(args)
        return
    assert args.exc_value is not None  # an uncaught exception always has its value
    crash(args.exc_value.with_traceback(args.exc_traceback))


def _add_expected(expected: Iterable[type[BaseException] | str]) -> None:
    for name in _expected_list(expected, env=False):
        if name not in _state.expected:  # the program may list them once per run
            _state.expected.append(name)


def _expected_list(expected: Iterable[type[BaseException] | str], *, env: bool = True) -> list[str]:
    listed = os.environ.get(EXPECTED_ENV, "") if env else ""
    out = [n.strip() for n in listed.split(",") if n.strip()]
    for e in expected:
        out.append(e if isinstance(e, str) else f"{e.__module__}.{e.__qualname__}")
    return out


# -- the fork server --------------------------------------------------------------------------


def _read_word(fd: int) -> int | None:
    data = b""
    while len(data) < 4:
        chunk = os.read(fd, 4 - len(data))
        if not chunk:
            return None
        data += chunk
    word: int = _WORD.unpack(data)[0]
    return word


def _write_word(fd: int, word: int) -> None:
    os.write(fd, _WORD.pack(word & 0xFFFFFFFF))


def _serve_forked(area: _area.Area, afl_map: ctypes.Array[ctypes.c_ubyte] | None) -> None:
    """The fork server's loop, one child per input; returns only in a child."""
    ctl, st = FORKSRV_FD, FORKSRV_FD + 1
    while True:
        if _read_word(ctl) is None:  # afl-fuzz is gone (or restarts us with another map size)
            os._exit(0)
        _reset(area)
        child = os.fork()
        if child == 0:
            os.close(ctl)
            os.close(st)
            return
        _write_word(st, child)
        _, status = os.waitpid(child, 0)
        if afl_map is not None:
            _area.afl_fold(area, afl_map)
        _write_word(st, status)


def _serve_persistent(
    area: _area.Area, afl_map: ctypes.Array[ctypes.c_ubyte] | None, phase: mmap.mmap
) -> None:
    """The fork server's loop in persistent mode; returns only in a child, which then serves
    afl-fuzz's commands itself between inputs (``_next_input``) until it ends.  The server
    sleeps in ``waitpid`` meanwhile; once the child is gone it reports the input the child
    was running, if any (``phase``: a crash, a timeout kill, or the program's end after its
    last input), and forks the next child on the next command."""
    ctl, st = FORKSRV_FD, FORKSRV_FD + 1
    while True:
        if _read_word(ctl) is None:
            os._exit(0)
        _reset(area)
        phase[0] = _RUNNING
        child = os.fork()
        if child == 0:
            # The child replies with its pid itself: it alone writes to afl-fuzz while it
            # lives, so its pid cannot be overtaken by the status of a fast first input.
            _write_word(st, os.getpid())
            return
        _, status = os.waitpid(child, 0)
        if phase[0] == _RUNNING:  # the child ended during an input: that input's status
            if afl_map is not None:
                _area.afl_fold(area, afl_map)
            _write_word(st, status)


def _reset(area: _area.Area) -> None:
    with memoryview(area) as words:
        words[0] = 0  # the next input's trace starts at word 1


def _next_input() -> bool:
    """In a persistent child, between two inputs: report the one that ended (fold its trace,
    then a stopped status, as a child that stopped itself would give), wait for afl-fuzz's
    next command, reset the trace and reply with our pid.  False: afl-fuzz is gone."""
    p = _state.persist
    assert p is not None
    if p.afl_map is not None:
        _area.afl_fold(p.area, p.afl_map)
    p.phase[0] = _WAITING
    _write_word(FORKSRV_FD + 1, _state.owed)
    _state.owed = _STOPPED_STATUS
    if _read_word(FORKSRV_FD) is None:
        return False
    _reset(p.area)
    p.phase[0] = _RUNNING
    _write_word(FORKSRV_FD + 1, os.getpid())
    return True


def _start(persistent: bool, expected: Iterable[type[BaseException] | str]) -> None:
    _state.started = True
    for name in _expected_list(expected):  # after kcovx afl's own (--expected), if any
        if name not in _state.expected:
            _state.expected.append(name)
    shm = os.environ.get(SHM_ENV)
    afl_map = attach_map(int(shm)) if shm else None
    try:
        _write_word(FORKSRV_FD + 1, hello_word(len(afl_map) if afl_map is not None else None))
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        return  # not under afl-fuzz: run as a plain program, as python-afl does
    kc = kcovx.open(profile="linux")
    kc.init_trace(AREA_WORDS)
    area = kc.map_area()
    # Everything alive now is the program's setup, shared with every child: out of the
    # cyclic GC's sight, a child's collections do not touch (and so copy) its pages.
    gc.freeze()
    try:
        if persistent:
            phase = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and shared: seen across fork
            _serve_persistent(area, afl_map, phase)
            _state.persist = _Persist(area, afl_map, phase)
        else:
            _serve_forked(area, afl_map)
    except BaseException:  # never run the program in the server: its children do
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    kc.enable()  # in the child: record into the server's area
    _state.server, _state.device = True, kc
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def init(*, expected: Iterable[type[BaseException] | str] = ()) -> None:
    """Start the fork server (under afl-fuzz) and the crash policy.  Call it as late as
    possible, but before the input is read and before any thread starts: each input runs in
    a child forked here.  ``expected``: exception types (or names, as in ``EXPECTED_ENV``)
    whose uncaught escape is not a crash.  Outside afl-fuzz nothing happens, and the program
    runs once as usual.  Under ``kcovx afl``, which has started the server, it only adds
    ``expected``.  A second call (or one after ``loop``) is RuntimeError."""
    if _state.managed:
        _add_expected(expected)
        return
    if _state.started:
        raise RuntimeError("kcovx.afl.init() called twice, or after kcovx.afl.loop()")
    _start(False, expected)


def loop(n: int | None = None, *, expected: Iterable[type[BaseException] | str] = ()) -> bool:
    """``while kcovx.afl.loop(n): ...``: persistent mode, ``n`` inputs per process (None: no
    limit); the first call starts the fork server (as ``init``), later ones stop the process
    until afl-fuzz has the next input ready.  Outside afl-fuzz the body runs once, as
    python-afl's does without its persistent mode.  Each later call rewinds stdin
    (``sys.stdin.seek(0)``, which python-afl leaves to the program).  Under ``kcovx afl``
    the body runs once per run of the program (``kcovx afl --persistent N`` repeats the
    program; ``kcovx afl --deferred`` lets this loop be the persistent one)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"loop(n): n must be a positive int or None, got {n!r}")
    if _state.managed:
        if _state.body_ran:
            return False
        _add_expected(expected)
        _state.body_ran = True
        return True
    return _loop(n, expected)


def _loop(n: int | None, expected: Iterable[type[BaseException] | str]) -> bool:
    if _state.iterations == 0:
        if _state.started:
            raise RuntimeError("kcovx.afl.loop() after kcovx.afl.init()")
        _start(True, expected)
        _state.iterations = 1
        return True
    if _state.server and (n is None or _state.iterations < n):
        if not _next_input():
            _quick_exit(0)  # afl-fuzz is gone: nothing is waiting for this process
        _state.iterations += 1
        _rewind_stdin()  # the program's own sys.stdin.seek(0), if any, is then a no-op
        return True
    if _state.device is not None:
        _state.device.disable()  # what runs after the last input is not its coverage
        _state.device = None
    return False


# -- kcovx afl ---------------------------------------------------------------------------------


def _rewind_stdin() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdin.seek(0)  # a pipe or a closed stdin: nothing to rewind


def _run_once(
    target: str, unit: object, args: Sequence[str], module: bool, survive: bool = False
) -> int:
    """Run the target once; its status (SystemExit), 1 for an expected exception; an
    unexpected one is a crash: does not return, or with ``survive`` returns ``_CRASHED``."""
    from kcovx import run as run_mod

    _state.body_ran = False
    try:
        if module:
            run_mod._run_module(target, args)
        else:
            run_mod._run_script(target, unit, args)  # type: ignore[arg-type]
    except SystemExit as e:
        return run_mod._exit_status(e)
    except BaseException as e:
        e = e.with_traceback(run_mod._strip_own_frames(e.__traceback__))
        if not _state.server:
            traceback.print_exception(type(e), e, e.__traceback__)
            return 1
        if not is_expected(type(e)):
            if not survive:
                crash(e)
            _print_exception(e)
            return _CRASHED
        _print_exception(e)
        return 1
    return 0


def run_target(
    target: str,
    args: Sequence[str],
    *,
    module: bool = False,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    persistent: int | None = None,
    deferred: bool = False,
    expected: Sequence[str] = (),
) -> int:
    """``kcovx afl``: instrument as ``kcovx run`` does, then run ``target`` (a script, or a
    module with ``module=True``) under ``init()``, or with ``persistent=N`` N times per
    process under ``loop(N)`` (stdin rewound before each run; an expected exception or a
    SystemExit ends that input only).  The target reads its input from stdin.  Under
    afl-fuzz each child ends by ``os._exit`` (``_quick_exit``); outside it, returns the exit
    status of the last run (2: the target cannot be started).  ``deferred=True``: the
    program starts the server itself (``init()`` after its imports, or ``loop(N)``), so
    imports happen once, not per input; under afl-fuzz, a program that never does is status
    2 with a message."""
    from kcovx import instrument
    from kcovx import run as run_mod

    if deferred and persistent is not None:
        raise ValueError("persistent and deferred exclude each other")

    if module:
        import importlib.util

        if importlib.util.find_spec(target.split(".", maxsplit=1)[0]) is None:
            print(f"kcovx afl: no module named {target!r}", file=sys.stderr)
            return 2
    elif not os.path.isfile(target):
        print(f"kcovx afl: can't open file {target!r}", file=sys.stderr)
        return 2
    hook = instrument.ImportHook(
        include=list(include) if include else None,
        exclude=list(exclude),
        always=[target] if module else [],
        cmp=False,
    )
    unit = None if module else run_mod._script_unit(target, False)
    hook.install()
    run_mod._instrument_loaded(hook)
    if deferred:
        _add_expected(expected)  # the program's init()/loop() add the variable's and theirs
        status = _run_once(target, unit, args, module)
        if not _state.started and _under_afl():
            print(
                "kcovx afl --deferred: the program ended without calling kcovx.afl.init() "
                "or kcovx.afl.loop(), so afl-fuzz never heard from a fork server",
                file=sys.stderr,
            )
            return 2
    elif persistent is None:
        init(expected=expected)
        _state.managed = True
        status = _run_once(target, unit, args, module)
    else:
        status = 0
        while _loop(persistent, expected):
            _state.managed = True  # (stdin: rewound by _loop before each later input)
            status = _run_once(target, unit, args, module, survive=True)
            if status == _CRASHED:
                # Each run starts the program afresh, so the process can go on: the crash
                # is reported as SIGABRT (by _next_input), not by dying and forking anew.
                _state.owed = _ABORTED_STATUS
        if _state.owed == _ABORTED_STATUS:
            os.abort()  # the last input crashed: this time the status is our own
    if _state.server:
        _quick_exit(status)
    return status


def _under_afl() -> bool:
    """Whether afl-fuzz's reply pipe is open (a fork server would have written its hello)."""
    try:
        os.fstat(FORKSRV_FD + 1)
    except OSError:
        return False
    return True


def _quick_exit(status: int) -> NoReturn:
    """End a fork server's child without the interpreter's finalization (python-afl's advice
    of ``os._exit(0)``, taken by ``kcovx afl``): it costs more than the input itself.  atexit
    handlers do not run; stdout and stderr are flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status & 0xFF)
