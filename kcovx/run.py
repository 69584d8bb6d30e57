"""``kcovx run``: run a Python program with its code instrumented and kcov enabled on its main
thread, recording into the cover file from the start; write the PC table; print a summary.

Owns: running a script or ``-m`` module as ``__main__`` (sys.argv, sys.path[0], sys.modules),
the device for the run, the output files, SIGTERM while the program runs, and the summary.
The program runs in this process and on this (the main) thread, which is the device's owner;
other threads it starts record only in the gvisor profile (coverage there is global).

What is on disk when (the failure model of ``kcovx run``):

- Both output locations are checked before the program runs (their folder takes a new file,
  and what is at the path is a regular file or nothing); otherwise status 2, program not run.
- The cover file (``--output``) is the device's own area file (``path=``), created before the
  program runs with its blocks reserved on disk, so a full disk is found then, not as a fault
  in the middle of the run.  The linux profile appends each PC to it as the block runs, so
  whatever ran before the process died (SIGKILL, ``os._exit``, a crash) is in it.  The gvisor
  profile moves PCs into it only through task work, which ``kcovx run`` runs at exit and on
  SIGTERM: a gvisor run that dies otherwise leaves a file whose count is 0.  A file left by a
  process that died is the whole area (``cover.read_cover`` reads it); at exit it is cut to
  ``1 + count`` words.
- The PC table (``--pcs-table``) is written before the program runs (the blocks of the script
  and of modules already loaded) and again at exit with every block instrumented meanwhile.
- SIGTERM (when the program has not set a handler of its own) is handled like an exit: the
  program's ``finally`` blocks run, then the outputs are written, then the process ends by
  SIGTERM's default action, so the parent sees a death by SIGTERM (status 143 in a shell).
- Child processes record into files of their own (``kcovx.children``): a forked child of the
  program that returns from it writes ``<output>.<pid>`` and ``<pcs-table>.<pid>`` and exits
  with the program's status; the outputs above belong to the process ``kcovx run`` started.
  Per-process files a former run left at these paths are removed before the program runs.

The summary goes to stderr so the program's own stdout is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import runpy
import signal
import sys
import threading
import traceback
import types
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import kcovx
from kcovx import abi, children, cover, instrument, pcs
from kcovx._files import check_writable

__all__ = ["Summary", "run", "summarize"]

_KCOVX_DIR = os.path.dirname(os.path.abspath(kcovx.__file__)) + os.sep


@dataclass
class Summary:
    profile: str
    size: int
    recorded: int
    unique: int
    clipped: bool
    files: list[tuple[str, int, int]]  # (file, covered blocks, known blocks), most covered first
    output: str
    table: str
    table_blocks: int
    # Matching modules loaded around kcovx's hook (pytest's assertion rewriting): not instrumented.
    foreign: list[str] = field(default_factory=list)
    # Native PCs (kcovx.sancov): unique ones, and the objects (units) they are in.  Native code
    # has no list of all its blocks, so no percentage; `kcovx symbolize` names them.
    native: int = 0
    native_objects: int = 0
    # --cmp: the area holds comparison records (4 words each): how many, at how many sites.
    cmp: bool = False
    records: int = 0
    sites: int = 0
    # Child processes' cover files (<output>.<pid>) present when the parent finished.
    children: int = 0

    def format(self) -> str:
        if self.cmp:
            return self._format_cmp()
        lines = [
            f"kcovx run: {self.recorded} PCs recorded ({self.profile} profile, area of "
            f"{self.size} words), {self.unique} unique blocks"
            + (", area full: PCs were dropped (use --size)" if self.clipped else ", not clipped"),
        ]
        for file, covered, known in self.files[:5]:
            pct = 100.0 * covered / known if known else 0.0
            lines.append(f"  {covered:6d}/{known:<6d} blocks {pct:5.1f}%  {file}")
        if self.native:
            lines.append(
                f"  {self.native:6d} native PCs in {self.native_objects} native object(s) "
                f"(kcovx symbolize names them)"
            )
        if self.foreign:
            names = ", ".join(self.foreign[:5]) + (", ..." if len(self.foreign) > 5 else "")
            lines.append(
                f"  {len(self.foreign)} matching modules were not loaded through kcovx's import "
                f"hook (pytest's assertion rewriting loads test modules itself) and are not "
                f"instrumented: {names}"
            )
        lines.append(
            f"  area -> {self.output} ({self.recorded + 1} words); "
            f"PC table -> {self.table} ({self.table_blocks} blocks)"
        )
        lines.extend(self._children_lines())
        return "\n".join(lines)

    def _children_lines(self) -> list[str]:
        if not self.children:
            return []
        return [
            f"  {self.children} child process(es) wrote their own cover files -> "
            f"{self.output}.<pid>, PC tables -> {self.table}.<pid>"
        ]

    def _format_cmp(self) -> str:
        return "\n".join(
            (
                f"kcovx run: {self.records} comparison records ({self.profile} profile, "
                f"KCOV_TRACE_CMP, area of {self.size} words) from {self.sites} comparison sites"
                + (", area full: records were dropped (use --size)" if self.clipped else ""),
                f"  area -> {self.output} ({1 + 4 * self.records} words); "
                f"PC table -> {self.table} ({self.table_blocks} blocks and sites)",
                *self._children_lines(),
            )
        )


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread while the program runs (as SystemExit would be)."""


class _Sigterm:
    """SIGTERM handled like an exit: raises ``_Terminated`` while the program runs, is only
    remembered afterwards (the outputs are being written), and is re-delivered with its
    default action by ``finish``.  Installed only on the main thread and only over SIG_DFL: a
    handler or SIG_IGN set by whoever started us is left alone."""

    def __init__(self) -> None:
        self.received = False
        self.raising = False
        self._old: object = None
        self._pid = os.getpid()

    def install(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if os.getpid() != self._pid:
            _child_sigterm()
            return
        self.received = True
        if self.raising:
            self.raising = False
            raise _Terminated

    def finish(self, status: int) -> int:
        """Restore the old disposition; end by SIGTERM if one came, else return status."""
        if self._old is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._old = None
        if not self.received:
            return status
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        return 128 + signal.SIGTERM  # not reached unless SIGTERM is blocked


@contextlib.contextmanager
def _as_main(argv0: str, args: Sequence[str], path0: str | None) -> Iterator[None]:
    saved_argv = sys.argv[:]
    saved_path0 = sys.path[0] if sys.path else None
    saved_main = sys.modules.get("__main__")
    sys.argv = [argv0, *args]
    if path0 is not None:
        if sys.path:
            sys.path[0] = path0
        else:
            sys.path.append(path0)
    try:
        yield
    finally:
        sys.argv = saved_argv
        if path0 is not None and saved_path0 is not None:
            sys.path[0] = saved_path0
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


def _script_unit(path: str, cmp: bool) -> instrument.Unit:
    with open(path, "rb") as f:
        source = f.read()
    return instrument.instrument_source(source, os.path.abspath(path), "__main__", cmp=cmp)


def _run_script(path: str, unit: instrument.Unit, args: Sequence[str]) -> None:
    filename = os.path.abspath(path)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=filename, __builtins__=__builtins__, __cached__=None)
    with _as_main(path, args, os.path.dirname(filename)):
        sys.modules["__main__"] = main
        instrument.run_code(unit, main.__dict__)


def _run_module(name: str, args: Sequence[str]) -> None:
    with _as_main(name, args, os.getcwd()):
        # runpy executes the loader's code in globals of its own: give them the probe.
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{name}.__main__")
        init: dict[str, object] = {}
        if spec is not None and isinstance(spec.loader, instrument.InstrumentingLoader):
            spec.loader.unit(spec.name).install(init)
        runpy.run_module(name, run_name="__main__", alter_sys=True, init_globals=init)


def _source_modules(hook: instrument.ImportHook) -> Iterator[tuple[str, types.ModuleType]]:
    """The modules in sys.modules, other than __main__, loaded from a .py file that matches."""
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if not isinstance(mod, types.ModuleType) or not isinstance(file, str):
            continue
        # __mp_main__: multiprocessing's name for the program's own __main__.
        main = name in ("__main__", "__mp_main__")
        if file.endswith(".py") and not main and hook.matches(name, file):
            yield name, mod


def _instrument_loaded(hook: instrument.ImportHook) -> set[str]:
    """Modules kcovx itself had imported before the program started (json, argparse, ...)
    are not imported again: instrument the matching ones in place.  Returns their names."""
    done = set()
    for name, mod in _source_modules(hook):
        with contextlib.suppress(OSError, ValueError, SyntaxError):
            instrument.instrument_module(mod, cmp=hook.cmp)
            done.add(name)
    return done


def _foreign(hook: instrument.ImportHook, in_place: set[str]) -> list[str]:
    """Matching modules that were neither loaded by our hook nor instrumented in place."""
    out = []
    for name, mod in _source_modules(hook):
        loader = getattr(getattr(mod, "__spec__", None), "loader", None)
        if name not in in_place and not isinstance(loader, instrument.InstrumentingLoader):
            out.append(name)
    return sorted(out)


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _strip_own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback without its leading frames of kcovx and runpy, as python prints it."""
    runpy_file = os.path.abspath(runpy.__file__)
    while tb is not None:
        file = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not file.startswith(_KCOVX_DIR) and file != runpy_file:
            break
        tb = tb.tb_next
    return tb


def _reserve(path: str, nbytes: int) -> None:
    """Allocate the area file's blocks now: on a full disk, writing to a mapped sparse file
    faults (SIGBUS) where this fails with ENOSPC.  File systems without the call keep a sparse
    file."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(e.errno, f"no room for {nbytes} bytes ({e.strerror})", path) from None
    finally:
        os.close(fd)


# -- child processes (kcovx.children) ----------------------------------------------------------


def _children_config(
    target: str,
    module: bool,
    hook: instrument.ImportHook,
    *,
    profile: str,
    size: int,
    output: str,
    table: str,
) -> children.Config:
    """What the program's children record with: this run's rules and paths (absolute), the
    current directory for the no-include rule, and the main script multiprocessing reruns."""
    return children.Config(
        output=output,
        table=table,
        profile=profile,
        size=size,
        include=tuple(hook.include) if hook.include is not None else None,
        exclude=tuple(hook.exclude),
        always=tuple(hook.always),
        directory=os.getcwd(),
        main=None if module else os.path.abspath(target),
        cmp=hook.cmp,
    )


@contextlib.contextmanager
def _children_record(config: children.Config) -> Iterator[None]:
    """The program's children record while it runs (files a former run left for its children
    go first).  Afterwards, in the process kcovx run started, children started from then on
    do not record; in a forked child of the program, its own files are written."""
    pid = os.getpid()
    children.remove_child_files(config)
    children.enable(config)
    try:
        yield
    finally:
        if os.getpid() == pid:
            children.disable()
        else:
            children.finish()


def _child_sigterm() -> None:
    """SIGTERM in a forked child of the program, whose handler is still kcovx run's: the
    child's files, then SIGTERM's default action, as the child would die without kcovx (a
    multiprocessing child's terminate() gives exit code -15, not a traceback)."""
    children.finish()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _children_written(output: str) -> int:
    """How many children's cover files there are (a folder listing; none is read)."""
    return len(children.child_files(output))


def summarize(
    pcs_read: Sequence[int],
    *,
    profile: str,
    size: int,
    output: str,
    table: str,
    table_blocks: int,
    foreign: Sequence[str] = (),
    children: int = 0,
) -> Summary:
    unique = set(pcs_read)
    native = {pc for pc in unique if pc >> 63}  # kcovx.sancov's rule: bit 63 set
    known: Counter[str] = Counter(b.file for b in pcs.blocks())
    covered: Counter[str] = Counter()
    for pc in unique - native:
        with contextlib.suppress(LookupError):
            covered[pcs.symbolize(pc).file] += 1
    files = sorted(((f, n, known[f]) for f, n in covered.items()), key=lambda t: (-t[1], t[0]))
    clipped = len(pcs_read) >= size - 1
    return Summary(
        profile,
        size,
        len(pcs_read),
        len(unique),
        clipped,
        files,
        output,
        table,
        table_blocks,
        list(foreign),
        len(native),
        len({pc >> 32 for pc in native}),
        children=children,
    )


def _execute(
    target: str, unit: instrument.Unit | None, args: Sequence[str], term: _Sigterm, err: TextIO
) -> int:
    """Run the program; its exit status, with uncaught exceptions printed as python would."""
    term.raising = True
    try:
        if unit is None:
            _run_module(target, args)
        else:
            _run_script(target, unit, args)
    except SystemExit as e:
        return _exit_status(e)
    except _Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        traceback.print_exception(KeyboardInterrupt, KeyboardInterrupt(), None, file=err)
        return 130
    except BaseException as e:  # the program's own uncaught exception, as python prints it
        traceback.print_exception(type(e), e, _strip_own_frames(e.__traceback__), file=err)
        return 1
    finally:
        term.raising = False
    return 0


def _write_outputs(output: str, words: int, table: str, err: TextIO) -> tuple[int, bool]:
    """Cut the cover file to its count word and ``words`` more and write the PC table:
    (blocks in it, whether it failed)."""
    try:
        cover.trim_area_file(output, words)
        return pcs.write_pcs_table(table), False
    except OSError as e:
        print(f"kcovx run: writing the outputs failed: {e}", file=err)
        return len(pcs.blocks()), True


def _cannot_start(
    target: str, module: bool, output: str, table: str, *, cmp: bool, profile: str
) -> str | None:
    """Why the program cannot be run (checked before it is), or None."""
    if cmp and profile != "linux":
        return "--cmp needs --profile linux (gVisor's kcov has no comparison tracing)"
    if module:
        if importlib.util.find_spec(target.split(".", maxsplit=1)[0]) is None:
            return f"no module named {target!r}"
    elif not os.path.isfile(target):
        return f"can't open file {target!r}"
    if os.path.abspath(output) == os.path.abspath(table):
        return f"--output and --pcs-table are the same file {output!r}"
    for option, path in (("--output", output), ("--pcs-table", table)):
        try:
            check_writable(path)
        except OSError as e:
            return f"cannot write {option} {path!r}: {e.strerror or e}"
    return None


def run(
    target: str,
    args: Sequence[str],
    *,
    module: bool = False,
    profile: str,
    size: int,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    output: str,
    table: str,
    err: TextIO | None = None,
    cmp: bool = False,
) -> int:
    """Run ``target`` (a script path, or a module name with ``module=True``) instrumented and
    traced, recording into the cover file ``output``; write the PC table to ``table``; print
    the summary to ``err``.  ``cmp`` (linux profile only): comparisons are instrumented too
    and the thread traces them (KCOV_TRACE_CMP), so the cover file holds comparison records
    instead of PCs.  The defaults of the command line are ``kcovx.cli.DEFAULTS``.
    Returns the program's exit status (see the module docstring for SIGTERM and forked
    children); 2 when the program could not be started."""
    err = err if err is not None else sys.stderr
    problem = _cannot_start(target, module, output, table, cmp=cmp, profile=profile)
    if problem is not None:
        print(f"kcovx run: {problem}", file=err)
        return 2
    hook = instrument.ImportHook(
        include=list(include) if include else None,
        exclude=list(exclude),
        always=[target] if module else [],
        cmp=cmp,
    )
    # Absolute: the program may change the working directory before the outputs are written.
    output_path, table_path = os.path.abspath(output), os.path.abspath(table)
    try:
        unit = None if module else _script_unit(target, cmp)
    except SyntaxError as e:  # as python reports a script it cannot compile
        traceback.print_exception(type(e), e, None, file=err)
        return 1
    kc = kcovx.open(profile=profile, path=output_path)
    term = _Sigterm()
    pid = os.getpid()
    try:
        try:
            kc.init_trace(size)
            area = kc.map_area()  # gvisor allocates the area (the file) here; no numpy view
            _reserve(output_path, size * 8)
        except OSError as e:
            raise OSError(e.errno, f"cannot make the area file: {e.strerror}", output) from None
        hook.install()
        in_place = _instrument_loaded(hook)
        pcs.write_pcs_table(table_path)  # a run that dies still leaves what was known before it ran
        term.install()
        kc.enable(abi.KCOV_TRACE_CMP if cmp else abi.KCOV_TRACE_PC)
        with _children_record(
            _children_config(
                target,
                module,
                hook,
                profile=profile,
                size=size,
                output=output_path,
                table=table_path,
            )
        ):
            try:
                status = _execute(target, unit, args, term, err)
            finally:
                hook.remove()
        if os.getpid() != pid:
            return term.finish(status)  # a forked child of the program: its files are written
        kc.flush()
        kc.disable()
        per = abi.KCOV_WORDS_PER_CMP if cmp else 1  # words per entry
        count = min(area.count, (size - 1) // per)
        with memoryview(area) as words:  # the Area's buffer is uint64 words already
            recorded: list[int] = words[1 : 1 + count * per].tolist()
        del area  # the mapping goes before the file is cut
    finally:
        if os.getpid() == pid and not kc.closed:
            kc.close()
    table_blocks, failed = _write_outputs(output_path, count * per, table_path, err)
    if cmp:
        summary = Summary(
            profile,
            size,
            0,
            0,
            count >= (size - 1) // per,
            [],
            output,
            table,
            table_blocks,
            cmp=True,
            records=count,
            sites=len(set(recorded[3::4])),
            children=_children_written(output_path),
        )
        print(summary.format(), file=err)
        return term.finish(2 if failed and status == 0 else status)
    summary = summarize(
        recorded,
        profile=profile,
        size=size,
        output=output,
        table=table,
        table_blocks=table_blocks,
        foreign=_foreign(hook, in_place),
        children=_children_written(output_path),
    )
    print(summary.format(), file=err)
    return term.finish(2 if failed and status == 0 else status)
