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
- Persistent mode: the child stops itself (SIGSTOP) after each input; the server waits with
  ``WUNTRACED``, reports the stopped status, and on the next command sends SIGCONT to the same
  child, or reaps it and forks a new one when afl-fuzz says it killed it.

Coverage: the server maps one area (linux profile, an ordered trace, anonymous shared memory)
before forking; each child enables the device on its main thread, so its Python probes and
native hooks record there.  The server resets the count before each input and, once the
child has stopped or ended, folds the trace into AFL's map, then sends the status: an input
that crashes, hangs or calls ``os._exit`` is still covered up to its end.

Threading: call ``init``/``loop`` from the main thread of a process with no other threads
(the server forks).  One writer per area: the child records while it runs, the server
resets and folds only while the child is stopped or gone.  Threads an input starts are the
program's own: an exception escaping one is a crash like one escaping the main thread
(``threading.excepthook``), but what they run is not recorded (the device, like Linux kcov's,
belongs to the thread that enabled it: the child's main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
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
_IPC_STAT: Final = 2
_SHM_SEGSZ_OFFSET: Final = 48  # struct shmid_ds on 64-bit Linux: after the 48-byte ipc_perm


@dataclass
class _State:
    started: bool = False
    persistent: bool = False
    server: bool = False  # under afl-fuzz: this process is a child of the fork server
    iterations: int = 0
    expected: list[str] = field(default_factory=list)
    device: kcovx.Device | None = None
    # Under ``kcovx afl`` (run_target), which runs the fork server itself: the program's own
    # init() is a no-op and its loop() runs the body once per run of the program.
    managed: bool = False
    body_ran: bool = False


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
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    sys.stderr.flush()
    os.abort()


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


def _serve(
    area: _area.Area, afl_map: ctypes.Array[ctypes.c_ubyte] | None, persistent: bool
) -> None:
    """The fork server's loop, in the parent; returns only in a child, to run an input."""
    ctl, st = FORKSRV_FD, FORKSRV_FD + 1
    child, stopped = -1, False
    while True:
        killed = _read_word(ctl)
        if killed is None:  # afl-fuzz is gone (or restarts us with another map size)
            if stopped:  # a persistent child waits for an input that never comes
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
            os._exit(0)
        if stopped and killed:
            os.waitpid(child, 0)  # afl-fuzz killed it (a timeout): reap, then fork afresh
            stopped = False
        with memoryview(area) as words:
            words[0] = 0  # the next input's trace starts at word 1
        if stopped:
            os.kill(child, signal.SIGCONT)
            stopped = False
        else:
            child = os.fork()
            if child == 0:
                os.close(ctl)
                os.close(st)
                return
        _write_word(st, child)
        _, status = os.waitpid(child, os.WUNTRACED if persistent else 0)
        stopped = os.WIFSTOPPED(status)
        if afl_map is not None:
            _area.afl_fold(area, afl_map)
        _write_word(st, status)


def _start(persistent: bool, expected: Iterable[type[BaseException] | str]) -> None:
    _state.started, _state.persistent = True, persistent
    _state.expected = _expected_list(expected)
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
    try:
        _serve(area, afl_map, persistent)
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
    python-afl's does without its persistent mode.  Rewind stdin (``sys.stdin.seek(0)``)
    before reading each input.  Under ``kcovx afl`` the body runs once per run of the
    program (``kcovx afl --persistent N`` repeats the program)."""
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
        os.kill(os.getpid(), signal.SIGSTOP)
        _state.iterations += 1
        return True
    if _state.device is not None:
        _state.device.disable()  # what runs after the last input is not its coverage
        _state.device = None
    return False


# -- kcovx afl ---------------------------------------------------------------------------------


def _rewind_stdin() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdin.seek(0)  # a pipe or a closed stdin: nothing to rewind


def _run_once(target: str, unit: object, args: Sequence[str], module: bool) -> int:
    """Run the target once; its status (SystemExit), 1 for an expected exception; an
    unexpected one is a crash (does not return)."""
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
            crash(e)
        traceback.print_exception(type(e), e, e.__traceback__)
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
    expected: Sequence[str] = (),
) -> int:
    """``kcovx afl``: instrument as ``kcovx run`` does, then run ``target`` (a script, or a
    module with ``module=True``) under ``init()``, or with ``persistent=N`` N times per
    process under ``loop(N)`` (stdin rewound before each run; an expected exception or a
    SystemExit ends that input only).  The target reads its input from stdin.  Under
    afl-fuzz each child ends by ``os._exit`` (``_quick_exit``); outside it, returns the exit
    status of the last run (2: the target cannot be started)."""
    from kcovx import instrument
    from kcovx import run as run_mod

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
    if persistent is None:
        init(expected=expected)
        _state.managed = True
        status = _run_once(target, unit, args, module)
    else:
        status = 0
        while _loop(persistent, expected):
            _state.managed = True
            _rewind_stdin()
            status = _run_once(target, unit, args, module)
    if _state.server:
        _quick_exit(status)
    return status


def _quick_exit(status: int) -> NoReturn:
    """End a fork server's child without the interpreter's finalization (python-afl's advice
    of ``os._exit(0)``, taken by ``kcovx afl``): it costs more than the input itself.  atexit
    handlers do not run; stdout and stderr are flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status & 0xFF)
