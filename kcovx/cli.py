"""The command line: ``kcovx`` (or ``python -m kcovx``) with one of the subcommands

- ``run [--profile P] [--size N] [--include PAT]... [--exclude PAT]... [--output FILE]
  [--pcs-table FILE] [--cmp] [--report] [--html DIR] (script.py | -m module) [args...]``:
  run a program instrumented, with kcov enabled on its main thread, recording into the cover
  file (with ``--cmp``, linux profile: comparison records); write the PC table; print a
  summary (``kcovx.run``); with ``--report``/``--html``, then the report (to stderr);
- ``report [--pcs-table FILE]... [--html DIR] [--lcov FILE] [--xml FILE] [--json FILE]
  [--coverage-data FILE] [--show-missing] [--fail-under PCT] [--[no-]arcs] [COVER_FILE...]``:
  the blocks covered per file, and coverage.py's data and reports (``kcovx.report``);
- ``symbolize [--pcs-table FILE] [--cover FILE | --all]``: hex PCs on stdin (any number a line,
  as ``od`` prints them; ``0x`` optional), or the PCs of a cover file, to ``PC`` +
  ``file:line.col,line.col`` line pairs on stdout (gVisor's ``runsc symbolize`` format);
  ``--all`` lists every block of the table;
  native PCs are resolved from the object files the table records (their DWARF line table),
  ``--functions`` adds each block's function after its position;
- ``cflags [--no-cmp] [--no-debug]`` / ``ldflags``: the compiler / linker flags that build C
  code instrumented for kcovx (``kcovx.sancov.compile_args()`` / ``link_args()``), on one line,
  quoted for a POSIX shell (and for setuptools, which splits CFLAGS/LDFLAGS the same way);
- ``demo [--profile P] [--size N]``: the device end to end on a few fixed PCs;
- ``afl [--include PAT]... [--exclude PAT]... [--persistent N | --deferred]
  [--expected TYPE]... (script.py | -m module) [args...]``: the target of ``afl-fuzz``:
  instrument as ``run`` does and run the program under AFL++'s fork server, N inputs per
  process, or (``--deferred``) where the program calls ``kcovx.afl.init()``/``loop()``.

Owns argument parsing, the defaults (``DEFAULTS``, the one place they are written), the size
rules put in words, and exit statuses: 0 success; run: the program's own status, 2 for usage
errors and outputs that cannot be written (and, with --report/--html, a report that
failed after a run whose status was 0); report: 2 for any problem with its inputs or outputs
(coverage.py missing for a format that needs it included) and for a total below
--fail-under; symbolize: 1 if any PC was malformed or unknown
(each reported on stderr, the others still printed), 2 for any problem with the table or the
cover file.  Nothing here prints a traceback for bad input.  Runs on the main thread.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, Final, TextIO

import kcovx
from kcovx.profiles import GVISOR_MAX_WORDS, LINUX_MAX_WORDS, PROFILES

COMMANDS: Final = ("run", "report", "symbolize", "cflags", "ldflags", "demo", "afl")


class DEFAULTS:
    """Every default of the command line, written once."""

    profile: Final = "gvisor"
    run_size: Final = 1 << 20  # words: 8 MiB, a multiple of the gvisor page rule
    demo_size: Final = 512
    output: Final = "kcovx.cover"
    pcs_table: Final = "kcovx.pcs"


# A line of PCs on stdin longer than this is reported and skipped (bounded memory).
MAX_PC_LINE: Final = 64 * 1024


def size_problem(profile: str, size: int) -> str | None:
    """Why ``size`` (in words) is not an area size ``kcovx run``/``demo`` can map with
    ``profile``, with sizes that work; None when it is one.

    Both profiles map whole pages: gvisor refuses other sizes at KCOV_INIT_TRACE, linux accepts
    any size from 2 words there but its mmap needs the area's bytes to be whole pages.
    """
    step = kcovx.PAGE_SIZE // 8
    if profile == "gvisor":
        top, why = GVISOR_MAX_WORDS, f"the area is whole {kcovx.PAGE_SIZE}-byte pages"
    else:
        top = LINUX_MAX_WORDS // step * step
        why = f"mmap maps whole {kcovx.PAGE_SIZE}-byte pages; at most INT_MAX / 8 words"
    if step <= size <= top and size % step == 0:
        return None
    lower = max(step, min(size // step * step, top))
    upper = min(lower + step, top)
    near = f"{lower}" if size <= step or lower == upper else f"{lower} or {upper}"
    return (
        f"--size {size}: Invalid argument: the {profile} profile needs a multiple of {step} "
        f"words ({why}) from {step} to {top}; try {near}"
    )


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# -- demo ---------------------------------------------------------------------------------------


def _one_input(data: bytes) -> None:
    """A stand-in for instrumented code: one PC per branch taken."""
    kcovx.trace_pc(0x1000)
    if data.startswith(b"F"):
        kcovx.trace_pc(0x1010)
        if data[1:2] == b"U":
            kcovx.trace_pc(0x1020)
            if data[2:3] == b"Z":
                kcovx.trace_pc(0x1030)
    kcovx.trace_pc(0x1000)  # a block run twice: kept twice by linux, once by gvisor


def demo(profile: str, size: int, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    inputs = [b"", b"F", b"FU", b"FUZ"]
    ok = True
    with kcovx.open(profile=profile) as kc:
        kc.init_trace(size)
        area = kc.mmap()
        kc.enable()
        print(f"{kc!r}", file=out)
        for data in inputs:
            area[0] = 0  # reset: the next PC goes to word 1
            _one_input(data)
            kc.flush()  # gvisor: task work copies the covered PCs in; linux: already there
            n = int(area[0])
            pcs_read = [f"{int(pc):#x}" for pc in area[1 : n + 1]]
            print(f"input {data!r:7} -> {n} PCs: {' '.join(pcs_read)}", file=out)
            want = 2 + len(data) if profile == "linux" else 1 + len(data)
            ok &= n == want
        kc.disable()
    print("ok" if ok else "MISMATCH", file=out)
    return 0 if ok else 1


# -- symbolize ----------------------------------------------------------------------------------


def _pc_tokens(inp: BinaryIO, err: TextIO) -> Iterator[str]:
    """The PC tokens of ``inp`` (separated by ASCII blanks, several a line), read a line at a
    time; a line too long to read is reported on ``err``, skipped, and yields ``""``."""
    while True:
        line = inp.readline(MAX_PC_LINE)
        if not line:
            return
        if len(line) == MAX_PC_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of it, a piece at a time
                line = inp.readline(MAX_PC_LINE)
            print(f"kcovx symbolize: a line longer than {MAX_PC_LINE} bytes, skipped", file=err)
            yield ""
            continue
        for token in line.split():
            yield token.decode("ascii", "backslashreplace")


def symbolize_main(
    table_path: str | None,
    *,
    cover_path: str | None = None,
    all_blocks: bool = False,
    functions: bool = False,
    inp: BinaryIO,
    out: TextIO,
    err: TextIO,
) -> int:
    """``kcovx symbolize``: see the module docstring for what is read and the statuses."""
    from kcovx.cover import read_cover
    from kcovx.errors import UnknownPCError, UnusableFileError, read_input
    from kcovx.pcs import format_block, parse_pc, read_pcs_table, symbolize_native
    from kcovx.sancov import is_native

    status = 0
    texts: Iterable[str]
    try:
        hint = " (kcovx run writes one; see --pcs-table)"
        table = read_input(read_pcs_table, table_path or DEFAULTS.pcs_table, "PC table", hint)
        if all_blocks:
            texts = (f"{pc:#x}" for pc in sorted(table.blocks))
        elif cover_path is not None:
            texts = (f"{pc:#x}" for pc in read_input(read_cover, cover_path, "cover file"))
        else:
            texts = _pc_tokens(inp, err)  # streamed: memory does not grow with the input
    except UnusableFileError as e:
        print(f"kcovx symbolize: {e}", file=err)
        return 2
    no_lines: set[str] = set()
    for text in texts:
        if not text:  # a line too long, already reported
            status = 1
            continue
        pc = parse_pc(text)
        if pc is None:
            hint = "; od collapsed repeated lines: use od -v" if text == "*" else ""
            print(
                f"kcovx symbolize: malformed PC {text!r} (want up to 16 hex digits{hint})", file=err
            )
            status = 1
            continue
        block = table.blocks.get(pc)
        if block is None and is_native(pc):
            try:
                block = symbolize_native(pc, table.objects)
            except UnknownPCError as e:
                print(f"kcovx symbolize: {str(e).removeprefix('kcovx: ')}", file=err)
                status = 1
                continue
            if block.start_line == 0 and block.file not in no_lines:
                no_lines.add(block.file)
                print(
                    f"kcovx symbolize: no line information in {block.file} (built without -g?): "
                    "its PCs print as line 0; --functions names their functions",
                    file=err,
                )
        if block is None:
            print(f"kcovx symbolize: unknown PC {pc:#x}: not in the PC table", file=err)
            status = 1
            continue
        line = format_block(block)
        print(f"{line} {block.function}" if functions else line, file=out)
    return status


# -- cflags, ldflags ----------------------------------------------------------------------------


def shell_line(args: Iterable[str]) -> str:
    """args as one line a POSIX shell (and setuptools' CFLAGS/LDFLAGS splitting) reads back as
    the same words."""
    import shlex

    return shlex.join(args)


def flags_main(which: str, *, cmp: bool = True, debug: bool = True, out: TextIO) -> int:
    """``kcovx cflags`` / ``kcovx ldflags``: print the flags on one line."""
    from kcovx import sancov

    args = sancov.compile_args(cmp=cmp, debug=debug) if which == "cflags" else sancov.link_args()
    print(shell_line(args), file=out)
    return 0


# -- run ----------------------------------------------------------------------------------------

_RUN_VALUE_OPTS = {
    "--profile",
    "--size",
    "--include",
    "--exclude",
    "--output",
    "--pcs-table",
    "--html",
}


def _split_run_argv(
    argv: Sequence[str], value_opts: frozenset[str] | set[str] = _RUN_VALUE_OPTS
) -> tuple[list[str], str | None, bool, list[str]]:
    """Our options, the target, whether it is a module, and the program's own arguments."""
    ours: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            if i + 1 >= len(argv):
                return ours, None, True, []
            return ours, argv[i + 1], True, list(argv[i + 2 :])
        if a.startswith("-m") and len(a) > 2 and not a.startswith("--"):
            return ours, a[2:], True, list(argv[i + 1 :])
        if a.split("=", 1)[0] in value_opts:
            ours.append(a)
            if "=" not in a and i + 1 < len(argv):
                ours.append(argv[i + 1])
                i += 1
            i += 1
            continue
        if a.startswith("-") and a != "-":
            ours.append(a)
            i += 1
            continue
        return ours, a, False, list(argv[i + 1 :])
    return ours, None, False, []


def _run(p: argparse.ArgumentParser, opts: argparse.Namespace) -> int:
    if opts.target is None:
        p.error("a script or -m module to run is required")
    problem = size_problem(opts.profile, opts.size)
    if problem is not None:
        p.error(problem)
    reporting = opts.report or opts.html is not None
    if reporting and opts.cmp:
        p.error("--report and --html report PCs; a --cmp run records comparison records")
    from kcovx.run import run

    pid = os.getpid()
    try:
        status = run(
            opts.target,
            opts.args,
            module=opts.module,
            profile=opts.profile,
            size=opts.size,
            include=opts.include,
            exclude=opts.exclude,
            output=opts.output,
            table=opts.pcs_table,
            cmp=opts.cmp,
        )
    except OSError as e:
        print(f"kcovx run: {e}", file=sys.stderr)
        return 2
    if not reporting or os.getpid() != pid or not os.path.exists(opts.output):
        return status  # a forked child returning from the program reports nothing
    from kcovx.report import Outputs, family, report

    # To stderr, after the summary: the program's stdout stays its own.
    reported = report(
        family(opts.output),
        family(opts.pcs_table),
        outputs=Outputs(html=opts.html),
        ordered=opts.profile == "linux",
        out=sys.stderr,
        err=sys.stderr,
    )
    return 2 if reported and status == 0 else status


# -- afl ----------------------------------------------------------------------------------------

_AFL_VALUE_OPTS = frozenset({"--include", "--exclude", "--persistent", "--expected"})


def _afl(p: argparse.ArgumentParser, opts: argparse.Namespace) -> int:
    if opts.target is None:
        p.error("a script or -m module to run is required")
    if opts.persistent is not None and opts.persistent < 1:
        p.error(f"--persistent {opts.persistent}: needs a positive number of inputs")
    if opts.persistent is not None and opts.deferred:
        p.error(
            "--persistent and --deferred exclude each other (a program calling "
            "kcovx.afl.loop(N) chooses its own N)"
        )
    from kcovx.afl import run_target

    return run_target(
        opts.target,
        opts.args,
        module=opts.module,
        include=opts.include,
        exclude=opts.exclude,
        persistent=opts.persistent,
        deferred=opts.deferred,
        expected=opts.expected,
    )


# -- report -------------------------------------------------------------------------------------


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"not a percentage from 0 to 100: {text!r}")
    return value


def _report(opts: argparse.Namespace) -> int:
    from kcovx.report import Outputs, family, report

    if isinstance(sys.stdout, io.TextIOWrapper):
        # File names that were not UTF-8 on disk are printed back as their bytes.
        sys.stdout.reconfigure(errors="surrogateescape")
    covers = opts.covers or family(DEFAULTS.output)
    tables = opts.pcs_table or family(DEFAULTS.pcs_table)
    if not covers:
        print(
            f"kcovx report: no cover file {DEFAULTS.output!r} (kcovx run writes one)",
            file=sys.stderr,
        )
        return 2
    if not tables:
        hint = " (kcovx run writes one; see --pcs-table)"
        print(f"kcovx report: no PC table {DEFAULTS.pcs_table!r}{hint}", file=sys.stderr)
        return 2
    outputs = Outputs(
        html=opts.html,
        lcov=opts.lcov,
        xml=opts.xml,
        json=opts.json,
        coverage_data=opts.coverage_data,
    )
    return report(
        covers,
        tables,
        outputs=outputs,
        show_missing=opts.show_missing,
        fail_under=opts.fail_under,
        ordered=opts.arcs,
        out=sys.stdout,
        err=sys.stderr,
    )


# -- the parser ---------------------------------------------------------------------------------


def _device_options(p: argparse.ArgumentParser, size: int) -> None:
    p.add_argument(
        "--profile", default=DEFAULTS.profile, choices=list(PROFILES), help="kcov to follow"
    )
    p.add_argument(
        "--size", type=_int, default=size, help="area size in words (default %(default)s)"
    )


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``kcovx`` parser and its subcommands' parsers, by name."""
    top = argparse.ArgumentParser(
        prog="kcovx",
        description="kcov for Python processes: run a program under coverage, symbolize PCs.",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run = sub.add_parser(
        "run",
        usage="kcovx run [options] (script.py | -m module) [args...]",
        help="run a Python program instrumented, with kcov enabled on its main thread",
        description="Run a Python program with its code instrumented and kcov enabled on its "
        "main thread, recording into the cover file; write the PC table; print a summary.",
    )
    _device_options(run, DEFAULTS.run_size)
    run.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="instrument modules whose name matches (fnmatch; pkg matches "
        "pkg.sub); default: modules under the current directory",
    )
    run.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="never instrument modules whose name matches",
    )
    run.add_argument(
        "--output",
        default=DEFAULTS.output,
        metavar="FILE",
        help="the cover file: the area, recorded into from the start (count word + PCs, u64 "
        "LE; default %(default)s)",
    )
    run.add_argument(
        "--cmp",
        action="store_true",
        help="instrument comparisons too and trace them (KCOV_TRACE_CMP; needs --profile "
        "linux): the cover file holds comparison records, 4 words each",
    )
    run.add_argument(
        "--pcs-table",
        default=DEFAULTS.pcs_table,
        metavar="FILE",
        help="where to write the PC table for kcovx symbolize (default %(default)s)",
    )
    run.add_argument(
        "--report",
        action="store_true",
        help="after the run, print kcovx report's table (to stderr)",
    )
    run.add_argument(
        "--html",
        metavar="DIR",
        help="after the run, print the report and write coverage.py's HTML report to DIR "
        "(needs kcovx[report])",
    )
    rep = sub.add_parser(
        "report",
        help="report what cover files covered: a table of blocks, coverage.py's reports",
        description="Read cover files with their PC tables (default: kcovx.cover and "
        "kcovx.pcs, plus the per-process files of children, kcovx.cover.<pid> and "
        "kcovx.pcs.<pid>), merge them and print per file the blocks covered out of those "
        "instrumented; convert them into coverage.py's data and render its reports. Exit "
        "status 2 for any problem with the inputs or outputs, and for a total below "
        "--fail-under.",
    )
    rep.add_argument(
        "covers", nargs="*", metavar="COVER_FILE", help="cover files (default: kcovx.cover*)"
    )
    rep.add_argument(
        "--pcs-table",
        action="append",
        default=[],
        metavar="FILE",
        help="a PC table; repeat for several (default: kcovx.pcs and kcovx.pcs.<pid>)",
    )
    for name, meta, writes in (
        ("html", "DIR", "HTML report"),
        ("lcov", "FILE", "lcov report (native blocks too)"),
        ("xml", "FILE", "XML (Cobertura) report"),
        ("json", "FILE", "JSON report"),
        ("coverage-data", "FILE", "data file (a .coverage file its own commands read)"),
    ):
        rep.add_argument(
            f"--{name}", metavar=meta, help=f"write coverage.py's {writes} (needs kcovx[report])"
        )
    rep.add_argument(
        "--show-missing", action="store_true", help="list each uncovered block (file:l.c,l.c)"
    )
    rep.add_argument(
        "--fail-under",
        type=_percent,
        metavar="PCT",
        help="exit status 2 when the total percentage of blocks covered is below PCT",
    )
    rep.add_argument(
        "--arcs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take the cover files for ordered traces (linux profile: lines and arcs) or not "
        "(lines only); default: ordered when a PC repeats",
    )
    sym = sub.add_parser(
        "symbolize",
        help="name the blocks of PCs (stdin, or a cover file)",
        description="Read hex PCs from stdin (several a line, as od prints them; 0x optional) "
        "or from a cover file; print each PC and its block as file:line.col,line.col (the "
        "format of gVisor's runsc symbolize).",
    )
    sym.add_argument(
        "--pcs-table",
        default=None,
        metavar="FILE",
        help=f"PC table written by kcovx run (default: {DEFAULTS.pcs_table})",
    )
    what = sym.add_mutually_exclusive_group()
    what.add_argument("--cover", metavar="FILE", help="symbolize the PCs of this cover file")
    what.add_argument("--all", action="store_true", help="list every block of the table")
    sym.add_argument(
        "--functions",
        action="store_true",
        help="print each block's function after its position (file:l.c,l.c FUNCTION)",
    )
    cflags = sub.add_parser(
        "cflags",
        help="compiler flags that instrument C code for kcovx (for CFLAGS)",
        description="Print kcovx.sancov.compile_args() on one line, quoted for the shell: "
        'CFLAGS="$(kcovx cflags)" LDFLAGS="$(kcovx ldflags)" pip install --no-binary :all: PKG',
    )
    cflags.add_argument(
        "--no-cmp", action="store_true", help="no comparison tracing (trace-pc only)"
    )
    cflags.add_argument(
        "--no-debug", action="store_true", help="no -g (native PCs then symbolize to functions)"
    )
    ldflags = sub.add_parser(
        "ldflags",
        help="linker flags that bind instrumented code to kcovx's runtime (for LDFLAGS)",
        description="Print kcovx.sancov.link_args() on one line, quoted for the shell.",
    )
    demo_p = sub.add_parser(
        "demo",
        help="the device end to end on a few hand-written PCs",
        description="Open a device, record a few hand-written PCs per input, read them back.",
    )
    _device_options(demo_p, DEFAULTS.demo_size)
    afl = sub.add_parser(
        "afl",
        usage="kcovx afl [options] (script.py | -m module) [args...]",
        help="the target of afl-fuzz: a Python program under AFL++'s fork server",
        description="Instrument as kcovx run does and run the program (its input on stdin) "
        "under AFL++'s fork server; each input's trace goes to AFL's edge map.  An uncaught "
        "exception is a crash (SIGABRT).  Outside afl-fuzz the program runs once.",
    )
    afl.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="instrument modules whose name matches (as kcovx run)",
    )
    afl.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="never instrument modules whose name matches",
    )
    afl.add_argument(
        "--persistent",
        type=_int,
        default=None,
        metavar="N",
        help="persistent mode: run the program N times per process",
    )
    afl.add_argument(
        "--deferred",
        action="store_true",
        help="the program starts the fork server itself, by calling kcovx.afl.init() after "
        "its imports or kcovx.afl.loop(N) (python-afl's API): kcovx afl only instruments",
    )
    afl.add_argument(
        "--expected",
        action="append",
        default=[],
        metavar="TYPE",
        help="an exception type that is not a crash (ValueError, "
        "json.JSONDecodeError; subclasses too)",
    )
    return top, {
        "afl": afl,
        "run": run,
        "report": rep,
        "symbolize": sym,
        "cflags": cflags,
        "ldflags": ldflags,
        "demo": demo_p,
    }


def _symbolize(opts: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # File names that were not UTF-8 on disk are printed back as their bytes.
        sys.stdout.reconfigure(errors="surrogateescape")
    return symbolize_main(
        opts.pcs_table,
        cover_path=opts.cover,
        all_blocks=opts.all,
        functions=opts.functions,
        inp=sys.stdin.buffer,
        out=sys.stdout,
        err=sys.stderr,
    )


def _demo(opts: argparse.Namespace) -> int:
    problem = size_problem(opts.profile, opts.size)
    if problem is not None:
        print(f"kcovx demo: {problem}", file=sys.stderr)
        return 2
    return demo(opts.profile, opts.size)


def _flags(opts: argparse.Namespace) -> int:
    if opts.command == "cflags":
        return flags_main("cflags", cmp=not opts.no_cmp, debug=not opts.no_debug, out=sys.stdout)
    return flags_main("ldflags", out=sys.stdout)


_HANDLERS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "report": _report,
    "symbolize": _symbolize,
    "demo": _demo,
    "cflags": _flags,
    "ldflags": _flags,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``kcovx [COMMAND] ...``: the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top, sub = parsers()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(
            f"kcovx: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)}; "
            "see kcovx --help)",
            file=sys.stderr,
        )
        return 2
    if argv and argv[0] == "run":
        ours, target, module, args = _split_run_argv(argv[1:])
        opts = top.parse_args(["run", *ours])
        opts.target, opts.module, opts.args = target, module, args
        return _run(sub["run"], opts)
    if argv and argv[0] == "afl":
        ours, target, module, args = _split_run_argv(argv[1:], _AFL_VALUE_OPTS)
        opts = top.parse_args(["afl", *ours])
        opts.target, opts.module, opts.args = target, module, args
        return _afl(sub["afl"], opts)
    opts = top.parse_args(argv)
    handler = _HANDLERS.get(opts.command)
    if handler is not None:
        return handler(opts)
    top.print_help(sys.stderr)  # no command: list them
    return 2
