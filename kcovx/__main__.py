"""The command line: ``kcovx`` (or ``python -m kcovx``) with one of

- ``run [--profile P] [--size N] [--include PAT]... [--exclude PAT]... [--output FILE]
  [--pcs-table FILE] (script.py | -m module) [args...]``: run a program instrumented, with
  kcov enabled on its main thread; write the area and the PC table; print a summary;
- ``symbolize [--pcs-table FILE] [--all]``: hex PCs on stdin, one a line (``0x`` optional), to
  ``PC`` + ``file:line.col,line.col`` line pairs on stdout (gVisor's ``runsc symbolize``
  format); ``--all`` lists every block of the table;
- ``demo [--profile P] [--size N]`` (the default): the device end to end on a few fixed PCs.

Owns argument parsing and exit statuses only: 0 success; run: the program's own status, 2
for usage errors; symbolize: 1 if any line was malformed or unknown (each reported on
stderr, the others still printed), 2 when the table cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import kcovx
from kcovx import pcs


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


def symbolize_main(
    table_path: str | None, all_blocks: bool, inp: TextIO, out: TextIO, err: TextIO
) -> int:
    try:
        table = pcs.load_pcs_table(table_path or "kcovx.pcs")
    except FileNotFoundError:
        print(
            f"kcovx symbolize: no PC table {table_path or 'kcovx.pcs'!r} "
            "(kcovx run writes one; see --pcs-table)",
            file=err,
        )
        return 2
    except (OSError, ValueError) as e:
        print(f"kcovx symbolize: {e}", file=err)
        return 2
    if all_blocks:
        for known in sorted(table.values()):
            print(pcs.format_block(known), file=out)
        return 0
    status = 0
    for raw in inp:
        line = raw.strip()
        if not line:
            continue
        digits = line[2:] if line[:2].lower() == "0x" else line
        try:
            if not digits or digits[0] in "+-_" or len(digits) > 16:
                raise ValueError
            pc = int(digits, 16)
        except ValueError:
            print(f"kcovx symbolize: malformed PC {line!r} (want up to 16 hex digits)", file=err)
            status = 1
            continue
        block = table.get(pc)
        if block is None:
            print(f"kcovx symbolize: unknown PC {pc:#x}: not in the PC table", file=err)
            status = 1
            continue
        print(pcs.format_block(block), file=out)
    return status


_RUN_VALUE_OPTS = {"--profile", "--size", "--include", "--exclude", "--output", "--pcs-table"}


def _split_run_argv(argv: Sequence[str]) -> tuple[list[str], str | None, bool, list[str]]:
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
        if a.split("=", 1)[0] in _RUN_VALUE_OPTS:
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


def _size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"area size must be at least 2 words, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else "demo"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if command == "run":
        ours, target, module, args = _split_run_argv(rest)
        p = argparse.ArgumentParser(
            prog="kcovx run",
            usage="kcovx run [options] (script.py | -m module) [args...]",
            description="Run a Python program with its code instrumented and kcov enabled "
            "on its main thread; write the area and the PC table; print a summary.",
        )
        p.add_argument("--profile", default="gvisor", choices=list(kcovx.PROFILES))
        p.add_argument("--size", type=_size, default=1 << 20, help="area size in words")
        p.add_argument(
            "--include",
            action="append",
            default=[],
            metavar="PATTERN",
            help="instrument modules whose name matches (fnmatch; pkg matches "
            "pkg.sub); default: modules under the current directory",
        )
        p.add_argument(
            "--exclude",
            action="append",
            default=[],
            metavar="PATTERN",
            help="never instrument modules whose name matches",
        )
        p.add_argument(
            "--output",
            default="kcovx.cover",
            metavar="FILE",
            help="where to write the area (count word + PCs, u64 LE)",
        )
        p.add_argument(
            "--pcs-table",
            default="kcovx.pcs",
            metavar="FILE",
            help="where to write the PC table for kcovx symbolize",
        )
        opts = p.parse_args(ours)
        if target is None:
            p.error("a script or -m module to run is required")
        from kcovx.run import run

        try:
            return run(
                target,
                args,
                module=module,
                profile=opts.profile,
                size=opts.size,
                include=opts.include,
                exclude=opts.exclude,
                output=opts.output,
                table=opts.pcs_table,
            )
        except OSError as e:
            print(f"kcovx run: {e}", file=sys.stderr)
            return 2
    if command == "symbolize":
        p = argparse.ArgumentParser(
            prog="kcovx symbolize",
            description="Read hex PCs from stdin, one a line; print each PC and its block as "
            "file:line.col,line.col (the format of gVisor's runsc symbolize).",
        )
        p.add_argument(
            "--pcs-table",
            default=None,
            metavar="FILE",
            help="PC table written by kcovx run (default: kcovx.pcs)",
        )
        p.add_argument("--all", action="store_true", help="list every block of the table")
        opts = p.parse_args(rest)
        return symbolize_main(opts.pcs_table, opts.all, sys.stdin, sys.stdout, sys.stderr)
    if command == "demo":
        p = argparse.ArgumentParser(prog="kcovx demo", description=__doc__)
        p.add_argument("--profile", default="gvisor", choices=list(kcovx.PROFILES))
        p.add_argument("--size", type=int, default=512, help="area size in words")
        opts = p.parse_args(rest)
        return demo(opts.profile, opts.size)
    print(f"kcovx: unknown command {command!r} (choose from run, symbolize, demo)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
