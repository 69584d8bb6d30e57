"""Build CPython with kcovx's sanitizer-coverage flags, then show, per input, the interpreter's
own C code next to the Python blocks it ran.

    python examples/instrumented_python.py SRC [--prefix DIR] [--build-dir DIR] [--jobs N]
    python examples/instrumented_python.py SRC --skip-build --prefix DIR   # the demo again

SRC is an unpacked, unconfigured CPython source tree (3.11 or later; for example the upstream
tarball that Debian ships as python3.11_3.11.*.orig.tar.gz).  The script configures it out of
tree in --build-dir, builds it with ``make -jN`` and installs it into --prefix, with
``CFLAGS_NODIST`` = ``kcovx.sancov.compile_args(cmp=True)`` and ``LDFLAGS_NODIST`` =
``kcovx.sancov.link_args()`` of the kcovx running this script (the _NODIST variables
instrument the interpreter and its standard extension modules without putting the flags into
the installed sysconfig, so extensions later built by the new interpreter, kcovx's own among
them, are built plainly).  It then installs kcovx from this checkout into the new interpreter
and runs the demo (``--demo``, in the new interpreter): a linux-profile device in TRACE_PC mode
records one call of a small instrumented Python function per input, and the script prints each
trace's Python blocks and native PCs, and the interpreter's C functions (symbolized to
file:line) that one input reached and the others did not; then one TRACE_CMP run.

The new python binary is linked against the runtime of the kcovx that ran the build (the rpath
of link_args(), so that kcovx must stay installed); the kcovx installed into the new prefix
brings its own copy of libkcovx_rt.so, but the loader finds the soname already loaded and
reuses it: the demo checks in /proc/self/maps that exactly one libkcovx_rt.so is mapped (exit
status 1 if not).  Comparison tracing (cmp=True) is built in as well, as a kernel built for
syzkaller has both: it costs a hook call per comparison whether or not a device records.

Symbolization: ``kcovx.symbolize`` when it resolves native PCs, else binutils' addr2line on the
object the runtime registered (``kcovx.sancov.objects()``).  Single-threaded; the build steps
run one after another in subprocesses; exit status 0, 2 for bad arguments, 1 when a step fails.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
MIN_VERSION = (3, 11)
OPT = "-DNDEBUG -g -fwrapv -O2 -Wall"  # CPython's default OPT, at -O2 rather than -O3


class UsageError(Exception):
    """A bad argument: reported on one line, exit status 2."""


# ------------------------------------------------------------------------------------------
# Checking the source tree.


def check_source(src: Path) -> tuple[int, int, int]:
    """The (major, minor, micro) version of the CPython source tree src; UsageError when src is
    not an unpacked, unconfigured CPython source tree of a version kcovx supports."""
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    if src.is_file() and re.search(r"\.(tar(\.[a-z0-9]+)?|tgz|txz)$", src.name):
        raise UsageError(f"{src} is an archive: unpack it first (tar xf) and pass the folder")
    if not src.is_dir():
        raise UsageError(f"{src} is not a folder: expected a CPython source tree")
    missing = [
        p
        for p in ("configure", "Include/patchlevel.h", "Python/ceval.c")
        if not (src / p).is_file()
    ]
    if missing:
        raise UsageError(
            f"{src} is not a CPython source tree (no {', '.join(missing)}): pass the folder "
            "unpacked from a CPython source tarball"
        )
    text = (src / "Include/patchlevel.h").read_text(encoding="utf-8", errors="replace")
    parts = []
    for field in ("MAJOR", "MINOR", "MICRO"):
        m = re.search(rf"#define\s+PY_{field}_VERSION\s+(\d+)", text)
        if m is None:
            raise UsageError(f"{src}/Include/patchlevel.h: no PY_{field}_VERSION")
        parts.append(int(m.group(1)))
    version = (parts[0], parts[1], parts[2])
    if version[:2] < MIN_VERSION:
        raise UsageError(
            f"{src} is CPython {'.'.join(map(str, version))}: kcovx needs "
            f"{'.'.join(map(str, MIN_VERSION))} or later"
        )
    if (src / "Makefile").exists() or (src / "pyconfig.h").exists():
        raise UsageError(
            f"{src} has been configured in place (Makefile or pyconfig.h): an out-of-tree build "
            "needs a clean tree (run `make distclean` there)"
        )
    return version


# ------------------------------------------------------------------------------------------
# Building.


def run_step(what: str, cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Run one build step, its output going to ours; seconds it took.  SystemExit(1) if it
    fails."""
    print(f"\n=== {what}: {' '.join(cmd)}  (in {cwd})", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, check=False)
    dt = time.monotonic() - t0
    print(f"=== {what}: exit {proc.returncode} after {dt:.0f} s", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"instrumented_python: {what} failed (exit {proc.returncode})")
    return dt


def build(src: Path, build_dir: Path, prefix: Path, jobs: int) -> None:
    """Configure, build and install CPython from src with kcovx's flags, then install kcovx
    from this checkout into it."""
    import kcovx.sancov

    cflags = " ".join(kcovx.sancov.compile_args(cmp=True))
    ldflags = " ".join(kcovx.sancov.link_args())
    print(f"CFLAGS_NODIST={cflags}\nLDFLAGS_NODIST={ldflags}\nOPT={OPT}", flush=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    # On make's command line, not configure's: _bootstrap_python links with LDFLAGS_NODIST
    # only as a make variable, and configure's own test programs must not need the runtime.
    flags = [f"CFLAGS_NODIST={cflags}", f"LDFLAGS_NODIST={ldflags}"]
    times = {
        "configure": run_step(
            "configure",
            [str(src / "configure"), f"--prefix={prefix}", "--disable-test-modules", f"OPT={OPT}"],
            build_dir,
        ),
        "make": run_step("make", ["make", f"-j{jobs}", *flags], build_dir),
        "make install": run_step("make install", ["make", "install", *flags], build_dir),
    }
    python = prefix / "bin" / "python3"
    with tempfile.TemporaryDirectory(prefix="kcovx-pip-") as tmp:
        times["pip install kcovx"] = run_step(
            "pip install kcovx",
            [str(python), "-m", "pip", "install", "--no-cache-dir", str(CHECKOUT)],
            Path(tmp),
        )
    print("\nbuild times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"total {sum(times.values()):.0f} s", flush=True)


# ------------------------------------------------------------------------------------------
# The demo (runs in the instrumented interpreter).


def target(doc: dict[str, Any]) -> object:
    """The Python code each input runs: what it does to the value depends on its type, so the
    interpreter takes different C paths (int, float and str arithmetic, dict lookups)."""
    value = doc["value"]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        if value > 5:
            return value * 3 + 1
        return -value
    if isinstance(value, float):
        return value / 2.0
    if isinstance(value, str):
        table = {"a": 1, "b": 2}
        return table.get(value, 0) + len(value.upper())
    return None


INPUTS: dict[str, dict[str, Any]] = {
    "int": {"value": 7},
    "float": {"value": 2.5},
    "str": {"value": "b"},
}


def mapped_runtimes() -> list[str]:
    """The distinct files named libkcovx_rt.so mapped into this process."""
    paths = set()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and os.path.basename(fields[5].strip()) == "libkcovx_rt.so":
                paths.add(fields[5].strip())
    return sorted(paths)


class NativeSymbolizer:
    """file:line of native PCs: kcovx.symbolize when it knows native PCs, else addr2line on the
    object the runtime registered for the PC's unit (results cached)."""

    def __init__(self) -> None:
        import kcovx.sancov

        self.objects = {o.unit: o for o in kcovx.sancov.objects()}
        self.cache: dict[int, tuple[str, str]] = {}

    def _from_kcovx(self, pc: int) -> tuple[str, str] | None:
        import kcovx

        try:
            block = kcovx.symbolize(pc)
        except (LookupError, TypeError, ValueError):
            return None  # this kcovx symbolizes Python PCs only
        return block.function, short_path(f"{block.file}:{block.start_line}")

    def resolve(self, pcs: Sequence[int]) -> dict[int, tuple[str, str]]:
        """(function, file:line) for each PC; "??" where nothing knows it."""
        todo: dict[int, list[int]] = {}
        for pc in pcs:
            if pc in self.cache:
                continue
            got = self._from_kcovx(pc)
            if got is not None:
                self.cache[pc] = got
            else:
                todo.setdefault(pc >> 32, []).append(pc)
        addr2line = shutil.which("addr2line")
        for unit, group in todo.items():
            obj = self.objects.get(unit)
            if obj is None or addr2line is None:
                self.cache.update((pc, ("??", "??")) for pc in group)
                continue
            # The PC is the hook call's return address: the call itself is one byte earlier.
            # -a prints each address before its frames, -i every inlined frame (innermost
            # first): the last frame is the function the code was compiled into.
            addrs = [f"{(pc & 0xFFFFFFFF) - 1:#x}" for pc in group]
            out = subprocess.run(
                [addr2line, "-a", "-i", "-f", "-e", obj.path, *addrs],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            frames: list[list[str]] = []
            for line in out:
                if line.startswith("0x") and len(frames) < len(group):
                    frames.append([])
                elif frames:
                    frames[-1].append(line)
            for pc, lines in zip(group, frames, strict=True):
                func, where = (lines[-2], lines[-1]) if len(lines) >= 2 else ("??", "??")
                self.cache[pc] = (func, short_path(where.split(" (discriminator")[0]))
        return {pc: self.cache[pc] for pc in pcs}


def short_path(where: str) -> str:
    """file:line with the file's path cut to its part below the CPython source tree."""
    m = re.search(r"/((?:Python|Objects|Modules|Parser|Include|Programs)/[^/].*)$", where)
    return m.group(1) if m else where


def record(func: Callable[[], object], mode: int, size: int = 1 << 20) -> list[int]:
    """The words one call of func recorded on this thread (linux profile, given mode): PCs, or
    4-word comparison records."""
    import kcovx

    per = 4 if mode == kcovx.KCOV_TRACE_CMP else 1
    with kcovx.open(profile="linux") as kc:
        kc.init_trace(size)
        area = kc.mmap()
        kc.enable(mode)
        area[0] = 0
        func()
        n = int(area[0])
        kc.disable()
        words = [int(w) for w in area[1 : 1 + n * per]]
    if 1 + (n + 1) * per > size:
        print(f"  (the area of {size} words filled up: this trace is clipped)")
    return words


def print_native(sym: NativeSymbolizer, trace: Sequence[int], pcs: set[int]) -> None:
    """pcs (native PCs of trace) grouped by C function: distinct PCs, hits in trace, lines."""
    where = sym.resolve(sorted(pcs))
    hits = Counter(pc for pc in trace if pc in pcs)
    by_func: dict[str, list[int]] = {}
    for pc in sorted(pcs):
        by_func.setdefault(where[pc][0], []).append(pc)
    print(f"  interpreter C PCs only this input reached: {len(pcs)} in {len(by_func)} functions")
    print(f"    {'function':<32} {'PCs':>4} {'hits':>5}  lines")
    for func, group in sorted(by_func.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:12]:
        lines = sorted({where[pc][1] for pc in group})
        shown = ", ".join(lines[:3]) + (", ..." if len(lines) > 3 else "")
        print(f"    {func:<32} {len(group):>4} {sum(hits[p] for p in group):>5}  {shown}")


def demo() -> int:
    """Record target() per input in the instrumented interpreter and print what it ran."""
    import kcovx
    import kcovx.sancov

    print(f"Python {sys.version.split()[0]} at {sys.executable}")
    runtimes = mapped_runtimes()
    print(f"libkcovx_rt.so mapped: {len(runtimes)} file(s)")
    for path in runtimes:
        print(f"  {path}")
    kcovx.instrument_func(target)
    for doc in INPUTS.values():  # warm up: caches, specialisation, first-hook registration
        for _ in range(3):
            target(doc)

    traces = {}
    for name, doc in INPUTS.items():
        traces[name] = record(functools.partial(target, doc), kcovx.KCOV_TRACE_PC)
    native = {name: {pc for pc in t if kcovx.sancov.is_native(pc)} for name, t in traces.items()}
    sym = NativeSymbolizer()
    print("\nobjects the runtime registered:")
    for o in kcovx.sancov.objects():
        print(f"  unit {o.unit:#010x} build-id {o.build_id or '-'} {o.path}")

    print("\nper input, the ordered trace of one call of target() (TRACE_PC):")
    print(f"  {'input':<6} {'PCs':>6} {'Python':>7} {'native':>7} {'distinct native':>16}")
    for name, trace in traces.items():
        n_native = sum(1 for pc in trace if kcovx.sancov.is_native(pc))
        n_python = len(trace) - n_native
        print(f"  {name:<6} {len(trace):>6} {n_python:>7} {n_native:>7} {len(native[name]):>16}")

    for name, trace in traces.items():
        print(f"\n--- input {name}: target({INPUTS[name]!r})")
        print("  Python blocks, in order:")
        for pc in trace:
            if not kcovx.sancov.is_native(pc):
                b = kcovx.symbolize(pc)
                span = f"{b.start_line}.{b.start_col},{b.end_line}.{b.end_col}"
                print(f"    {pc:#018x} {b.function} {os.path.basename(b.file)}:{span}")
        others = set().union(*(s for k, s in native.items() if k != name))
        print_native(sym, trace, native[name] - others)

    # The comparisons the interpreter made for the int input (TRACE_CMP: 4 words a record):
    # among them, its C code comparing the Python values of `value > 5`.
    doc = INPUTS["int"]
    words = record(functools.partial(target, doc), kcovx.KCOV_TRACE_CMP)
    recs = [(words[i], words[i + 1], words[i + 2], words[i + 3]) for i in range(0, len(words), 4)]
    n_const = sum(1 for r in recs if r[0] & kcovx.KCOV_CMP_CONST)
    n_native = sum(1 for r in recs if kcovx.sancov.is_native(r[3]))
    print(
        f"\nTRACE_CMP, target({doc!r}): {len(recs)} records ({n_native} from native code, "
        f"{n_const} against constants); those comparing {doc['value']} with 5:"
    )
    mine = [r for r in recs if {r[1], r[2]} == {doc["value"], 5}]
    where = sym.resolve([r[3] for r in mine])
    for t, a1, a2, pc in mine:
        func, line = where[pc]
        print(f"    type {t} arg1 {a1:#x} arg2 {a2:#x}  {func} {line}")
    return 0 if len(runtimes) == 1 else 1


# ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="instrumented_python.py",
        description="Build CPython with kcovx's coverage flags and show per-input C traces.",
    )
    p.add_argument("src", nargs="?", type=Path, help="unpacked CPython source tree (3.11+)")
    p.add_argument("--prefix", type=Path, help="install prefix (default: SRC/../kcovx-python)")
    p.add_argument("--build-dir", type=Path, help="build folder (default: SRC/../kcovx-build)")
    p.add_argument("--jobs", type=int, default=2, help="make -j (default 2)")
    p.add_argument("--skip-build", action="store_true", help="only run the demo in --prefix")
    p.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.demo:
        return args
    if args.src is None:
        p.error("the CPython source tree is required")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.demo:
        return demo()
    src = args.src.resolve()
    try:
        version = check_source(src)
    except UsageError as exc:
        print(f"instrumented_python: {exc}", file=sys.stderr)
        return 2
    prefix = (args.prefix or src.parent / "kcovx-python").resolve()
    build_dir = (args.build_dir or src.parent / "kcovx-build").resolve()
    print(f"CPython {'.'.join(map(str, version))} from {src}")
    t0 = time.monotonic()
    if not args.skip_build:
        build(src, build_dir, prefix, args.jobs)
    python = prefix / "bin" / "python3"
    if not python.exists():
        print(
            f"instrumented_python: no {python}: build first (without --skip-build)", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="kcovx-demo-") as tmp:
        demo_cmd = [str(python), str(Path(__file__).resolve()), "--demo"]
        rc = subprocess.run(demo_cmd, cwd=tmp, check=False).returncode
    print(f"\nwall time {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
