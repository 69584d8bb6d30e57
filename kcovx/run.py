"""``kcovx run``: run a Python program with its code instrumented and kcov enabled on its main
thread, then write the area and the PC table and print a summary.

Owns: running a script or ``-m`` module as ``__main__`` (sys.argv, sys.path[0], sys.modules),
the device for the run, the output files and the summary.  The program runs in this process
and on this (the main) thread, which is the device's owner; other threads it starts record
only in the gvisor profile (coverage there is global).

The output file holds the area as kcov leaves it: word 0 (the count) and the PCs after it,
little-endian u64, ``1 + count`` words.  The PC table is the JSON file ``kcovx symbolize``
reads.  The summary goes to stderr so the program's own stdout is untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import runpy
import sys
import traceback
import types
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

import kcovx
from kcovx import instrument, pcs

DEFAULT_OUTPUT = "kcovx.cover"
DEFAULT_TABLE = "kcovx.pcs"
DEFAULT_SIZE = 1 << 20


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

    def format(self) -> str:
        lines = [
            f"kcovx run: {self.recorded} PCs recorded ({self.profile} profile, area of "
            f"{self.size} words), {self.unique} unique blocks"
            + (", area full: PCs were dropped (use --size)" if self.clipped else ", not clipped"),
        ]
        for file, covered, known in self.files[:5]:
            pct = 100.0 * covered / known if known else 0.0
            lines.append(f"  {covered:6d}/{known:<6d} blocks {pct:5.1f}%  {file}")
        lines.append(
            f"  area -> {self.output} ({self.recorded + 1} words); "
            f"PC table -> {self.table} ({self.table_blocks} blocks)"
        )
        return "\n".join(lines)


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


def _run_script(path: str, args: Sequence[str]) -> None:
    with open(path, "rb") as f:
        source = f.read()
    filename = os.path.abspath(path)
    unit = instrument.instrument_source(source, filename, "__main__")
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
            unit = spec.loader.unit(spec.name)
            init[unit.probe_name] = unit.probe()
        runpy.run_module(name, run_name="__main__", alter_sys=True, init_globals=init)


def _instrument_loaded(hook: instrument.ImportHook) -> None:
    """Modules kcovx itself had imported before the program started (json, argparse, ...)
    are not imported again: instrument the matching ones in place."""
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if not isinstance(mod, types.ModuleType) or not file or not file.endswith(".py"):
            continue
        if name == "__main__" or not hook.matches(name, file):
            continue
        with contextlib.suppress(OSError, ValueError, SyntaxError):
            instrument.instrument_module(mod)


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _strip_own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    here = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in here:
        tb = tb.tb_next
    while tb is not None and tb.tb_frame.f_code.co_filename == instrument.__file__:
        tb = tb.tb_next
    return tb


def summarize(
    pcs_read: np.ndarray, *, profile: str, size: int, output: str, table: str, table_blocks: int
) -> Summary:
    unique = set(pcs_read.tolist())
    known: Counter[str] = Counter(b.file for b in pcs.blocks())
    covered: Counter[str] = Counter()
    for pc in unique:
        with contextlib.suppress(LookupError):
            covered[pcs.symbolize(pc).file] += 1
    files = sorted(((f, n, known[f]) for f, n in covered.items()), key=lambda t: (-t[1], t[0]))
    clipped = len(pcs_read) >= size - 1
    return Summary(
        profile, size, len(pcs_read), len(unique), clipped, files, output, table, table_blocks
    )


def run(
    target: str,
    args: Sequence[str],
    *,
    module: bool = False,
    profile: str = "gvisor",
    size: int = DEFAULT_SIZE,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    output: str = DEFAULT_OUTPUT,
    table: str = DEFAULT_TABLE,
    err: TextIO | None = None,
) -> int:
    """Run ``target`` (a script path, or a module name with ``module=True``) instrumented and
    traced; write the area to ``output`` and the PC table to ``table``; print the summary to
    ``err``.  Returns the program's exit status."""
    err = err if err is not None else sys.stderr
    if module:
        if importlib.util.find_spec(target.split(".", maxsplit=1)[0]) is None:
            print(f"kcovx run: no module named {target!r}", file=err)
            return 2
    elif not os.path.isfile(target):
        print(f"kcovx run: can't open file {target!r}", file=err)
        return 2
    hook = instrument.ImportHook(
        include=list(include) if include else None,
        exclude=list(exclude),
        always=[target] if module else [],
    )
    status = 0
    kc = kcovx.open(profile=profile)
    try:
        kc.init_trace(size)
        area = kc.mmap()
        hook.install()
        _instrument_loaded(hook)
        kc.enable()
        try:
            if module:
                _run_module(target, args)
            else:
                _run_script(target, args)
        except SystemExit as e:
            status = _exit_status(e)
        except KeyboardInterrupt:
            status = 130
            traceback.print_exception(KeyboardInterrupt, KeyboardInterrupt(), None, file=err)
        except BaseException as e:  # the program's own uncaught exception, as python prints it
            status = 1
            traceback.print_exception(type(e), e, _strip_own_frames(e.__traceback__), file=err)
        finally:
            hook.remove()
            kc.flush()
            kc.disable()
        n = int(area[0])
        words = np.array(area[: n + 1], dtype="<u8")
    finally:
        if not kc.closed:
            kc.close()
    with open(output, "wb") as f:
        f.write(words.tobytes())
    table_blocks = pcs.write_pcs_table(table)
    summary = summarize(
        words[1:], profile=profile, size=size, output=output, table=table, table_blocks=table_blocks
    )
    print(summary.format(), file=err)
    return status


def read_cover(path: str) -> np.ndarray:
    """The PCs of an output file written by ``kcovx run`` (count word checked)."""
    data = np.fromfile(path, dtype="<u8")
    if len(data) == 0 or int(data[0]) != len(data) - 1:
        raise ValueError(f"{path}: not a kcov area dump (count word does not match its length)")
    return data[1:]
