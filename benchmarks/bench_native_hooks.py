"""Cost of kcovx's sanitizer-coverage hooks per call, against the floor of the ABI: the same
instrumented C loop linked against hooks that do nothing.

Owns: the native-runtime targets of kcovx: a hook with nothing enabled costs at most 1.5x the
empty hook, a hook recording in the linux profile (TRACE_PC, appending) at most 2x, both as CPU
ns per hook call of the same loop.

Method.  The script builds, with gcc into a temporary folder, one C function with a few
branches per iteration (``work(n, seed)``: an LCG and three data-dependent ifs, about 5.7
trace-pc hooks per iteration), twice: with ``kcovx.sancov.compile_args(cmp=False)``
(trace-pc) and with ``cmp=True`` (trace-pc,trace-cmp), both at -O2.  Each object is linked into
a shared library beside an uninstrumented timer, ``run(n, reps, word, value)``: ``reps`` times
``*word = value; work(n, seed)``, timed in C with clock_gettime(CLOCK_THREAD_CPUTIME_ID) (the
thread's CPU time: time slices lost to the other processes of a shared host do not count).
``word`` is the area's count word for the linux variants (reset to 0 before each call of work,
as a fuzzer resets it per input, or to the area's end for the clipping case) and a dummy word
for the others, so every variant does the same stores.  The library is loaded with ctypes;
Python only starts each run.  A run is 100 calls of work(10000): a trace of ~57K PCs per call
(450 KiB, the size of one fuzz input's trace), 5.7M hooks per run.  The variants:

- plain: work.c built without instrumentation;
- empty: the trace-pc object linked against a library of empty hooks (the same symbol names,
  each just returns; built here) -- the floor;
- off: the same object linked against kcovx's runtime (``link_args()``), kcovx imported,
  nothing enabled;
- linux: kcovx recording it (linux profile, TRACE_PC; the count reset before each call of
  work and checked after the run, so nothing clips);
- linux-clip: the same with the count set to the area's end before each call (every append
  clips);
- linux-big (info): one call of work(1000000) per run, a 45 MB trace: the area no longer fits
  in any cache, so the stores cost memory bandwidth;
- gvisor: gvisor profile enabled, the covered set flushed into the area after every run
  (untimed): the first call of a run adds each block, the others find it covered;
- cmp-empty / cmp-off / cmp-linux: the trace-cmp object against the empty hooks, against kcovx
  with nothing enabled, and recording in the linux profile's TRACE_CMP mode.

Each variant runs in a worker process of its own (the empty hooks and kcovx's runtime export the
same symbols: each instrumented library binds to the one it names as needed, as LD_DEBUG=bindings
shows, but one process each also keeps one variant's caches out of another's), driven over a
pipe.  Each round asks every worker for one run, in a rotating order, so variants interleave on
a noisy machine; tables show medians over rounds and the p25-p75 spread.  Hooks per run are
counted from the linux trace (the count of one TRACE_PC call of work; for the cmp build its
TRACE_PC count plus its TRACE_CMP record count: the loop has no switch, so one record per cmp
hook).  ``ns/hook`` is a run's CPU time over the hooks it called; ``x empty`` the ratio of
medians to the same build's empty hooks (the targets); ``net ns`` subtracts the plain loop's
median (information).

Threading: single-threaded workers; each records on its own main thread.  Runs in about a
minute, the build included.  Usage: ``python benchmarks/bench_native_hooks.py [--quick]``, with
kcovx installed and gcc.  Exit status 0 if both targets are met, 1 if not, 2 if broken.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _common import cpu_model, rotated
from _report import EXIT_BROKEN, Judge, Table, Target, median, spread, spread_cell

QUICK = "--quick" in sys.argv
N = 10_000  # loop iterations per call of work: one "input"
REPS = 30 if QUICK else 100  # calls of work per timed run
BIG_N = 1_000_000  # linux-big: one call of this many iterations per run
SEED = 0x2545F4914F6CDD1D
ROUNDS = 9 if QUICK else 31
AREA_WORDS = 1 << 17  # linux TRACE_PC area: more than one call's PCs
BIG_AREA_WORDS = 1 << 23
CMP_AREA_WORDS = 1 << 18  # TRACE_CMP: 4 words a record
GVISOR_AREA_WORDS = 1 << 17
GOAL_OFF = Target("<=1.5")
GOAL_REC = Target("<=2")
BUILD_TIMEOUT = 120  # seconds
WORKER_TIMEOUT = 60  # seconds for one answer

_WORK_C = r"""
/* The timed loop of bench_native_hooks.py (generated; never committed). */
#include <stdint.h>

uint64_t work(uint64_t n, uint64_t x)
{
    uint64_t acc = 0, i;
    for (i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        if (x >> 63)
            acc += x >> 11;
        else
            acc ^= x;
        if ((uint32_t)(x >> 24) % 7u == 3u)
            acc = acc * 5u + i;
        if (acc & 4u)
            acc -= x >> 40;
    }
    return acc;
}
"""

_TIMER_C = r"""
/* run(): this thread's CPU ns for reps calls of work, each after *word = value (never
   instrumented). */
#include <stdint.h>
#include <time.h>

uint64_t work(uint64_t n, uint64_t x);
volatile uint64_t bench_sink;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t run(uint64_t n, uint64_t reps, uint64_t seed, uint64_t *word, uint64_t value)
{
    uint64_t t0 = now_ns(), r = 0, i;
    for (i = 0; i < reps; i++) {
        __atomic_store_n(word, value, __ATOMIC_RELAXED);
        r += work(n, seed);
    }
    uint64_t t1 = now_ns();
    bench_sink = r;
    return t1 - t0;
}
"""

_EMPTY_C = r"""
/* Sanitizer-coverage hooks that do nothing: the floor of the ABI (never instrumented). */
#include <stdint.h>
#define E __attribute__((visibility("default")))
E void __sanitizer_cov_trace_pc(void) {}
E void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_switch(uint64_t v, uint64_t *c) { (void)v; (void)c; }
E void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a; (void)b; }
E void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a; (void)b; }
"""


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    lib: str  # which built library: plain, pc-empty, pc-kcovx, cmp-empty, cmp-kcovx
    setup: str  # none, off, linux, linux-clip, linux-big, gvisor, cmp-linux
    floor: str | None = None  # the empty-hook variant it is compared with
    goal: Target | None = None

    @property
    def n(self) -> int:
        return BIG_N if self.setup == "linux-big" else N

    @property
    def reps(self) -> int:
        return 1 if self.setup == "linux-big" else REPS


VARIANTS = [
    Variant("plain", "(a) plain build, no hooks", "plain", "none"),
    Variant("empty", "(b) trace-pc, empty hooks", "pc-empty", "none"),
    Variant("off", "(c) trace-pc, kcovx, nothing on", "pc-kcovx", "off", "empty", GOAL_OFF),
    Variant("linux", "(d) trace-pc, kcovx linux", "pc-kcovx", "linux", "empty", GOAL_REC),
    Variant("linux-clip", "(d') linux, area full: clips", "pc-kcovx", "linux-clip", "empty"),
    Variant("linux-big", "(d'') linux, 45 MB trace a run", "pc-kcovx", "linux-big", "empty"),
    Variant("gvisor", "(e) trace-pc, kcovx gvisor", "pc-kcovx", "gvisor", "empty"),
    Variant("cmp-empty", "(b2) trace-cmp, empty hooks", "cmp-empty", "none"),
    Variant("cmp-off", "(c2) trace-cmp, kcovx, nothing on", "cmp-kcovx", "off", "cmp-empty"),
    Variant("cmp-linux", "(f) trace-cmp, kcovx linux CMP", "cmp-kcovx", "cmp-linux", "cmp-empty"),
]


# ------------------------------------------------------------------------------------------
# Building (parent process).


def _cc(args: list[str], cwd: Path) -> None:
    cc = os.environ.get("CC", "gcc")
    proc = subprocess.run(
        [cc, *args], cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"bench_native_hooks: {cc} {' '.join(args)} failed")


def build(tmp: Path) -> dict[str, Path]:
    """The five libraries, built in tmp with kcovx's flags; name -> path."""
    import kcovx.sancov

    for name, text in (("work.c", _WORK_C), ("timer.c", _TIMER_C), ("empty.c", _EMPTY_C)):
        (tmp / name).write_text(text, encoding="utf-8")
    opt = ["-O2", "-fPIC"]
    pc_flags = kcovx.sancov.compile_args(cmp=False, debug=False)
    cmp_flags = kcovx.sancov.compile_args(cmp=True, debug=False)
    _cc([*opt, "-c", "timer.c", "-o", "timer.o"], tmp)
    _cc([*opt, "-c", "work.c", "-o", "work_plain.o"], tmp)
    _cc([*opt, *pc_flags, "-c", "work.c", "-o", "work_pc.o"], tmp)
    _cc([*opt, *cmp_flags, "-c", "work.c", "-o", "work_cmp.o"], tmp)
    empty = "libkcovx_empty_hooks.so"
    _cc([*opt, "-shared", f"-Wl,-soname,{empty}", "empty.c", "-o", empty], tmp)
    empty_link = [f"-L{tmp}", f"-Wl,-rpath,{tmp}", "-Wl,--no-as-needed", "-lkcovx_empty_hooks"]
    libs = {
        "plain": ("work_plain.o", []),
        "pc-empty": ("work_pc.o", empty_link),
        "pc-kcovx": ("work_pc.o", kcovx.sancov.link_args()),
        "cmp-empty": ("work_cmp.o", empty_link),
        "cmp-kcovx": ("work_cmp.o", kcovx.sancov.link_args()),
    }
    out = {}
    for name, (obj, link) in libs.items():
        path = tmp / f"loop_{name}.so"
        _cc(["-shared", obj, "timer.o", "-o", str(path), *link], tmp)
        out[name] = path
    return out


# ------------------------------------------------------------------------------------------
# A worker (one process per variant): loads its library, sets up its device, then answers
# from stdin "run N REPS" (one timed run: CPU ns and the area's count after it) and
# "count-pc N" (the TRACE_PC count of one call of work(N)).


def worker(setup: str, lib_path: str) -> int:
    import ctypes

    lib = ctypes.CDLL(lib_path)
    lib.run.restype = ctypes.c_uint64
    lib.run.argtypes = [ctypes.c_uint64] * 3 + [ctypes.c_void_p, ctypes.c_uint64]
    dummy = ctypes.c_uint64(0)
    word = ctypes.addressof(dummy)
    value = 0
    kc = area = None
    if setup != "none":
        import kcovx

        if setup != "off":
            size = {
                "linux-big": BIG_AREA_WORDS,
                "cmp-linux": CMP_AREA_WORDS,
                "gvisor": GVISOR_AREA_WORDS,
            }.get(setup, AREA_WORDS)
            kc = kcovx.open(profile="gvisor" if setup == "gvisor" else "linux")
            kc.init_trace(size)
            area = kc.mmap()
            area[:] = 0  # pre-fault every page
            mode = kcovx.KCOV_TRACE_CMP if setup == "cmp-linux" else kcovx.KCOV_TRACE_PC
            kc.enable(mode)
            if setup != "gvisor":
                word = area.ctypes.data
                value = size - 1 if setup == "linux-clip" else 0

    for line in sys.stdin:
        cmd = line.split() or [""]
        if cmd[0] == "run":
            ns = lib.run(int(cmd[1]), int(cmd[2]), SEED, word, value)
            count = int(area[0]) if area is not None else 0
            if kc is not None and area is not None and setup == "gvisor":
                kc.flush()
                area[0] = 0
            print(f"{ns} {count}", flush=True)
        elif cmd[0] == "count-pc" and kc is not None and area is not None:
            kc.disable()
            kc.enable(kcovx.KCOV_TRACE_PC)
            lib.run(int(cmd[1]), 1, SEED, area.ctypes.data, 0)
            print(int(area[0]), flush=True)
            kc.disable()
            kc.enable(mode)
        elif cmd[0] == "quit":
            break
        else:
            print(f"error: bad command {line.strip()!r} for {setup}", flush=True)
    return 0


class Worker:
    """A worker process and its pipe."""

    def __init__(self, v: Variant, lib: Path) -> None:
        self.v = v
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", v.setup, str(lib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line or line.startswith("error"):
            raise SystemExit(f"bench_native_hooks: worker {self.v.name}: {line.strip()!r}")
        return line.strip()

    def run(self) -> tuple[int, int]:
        ns, count = self.ask(f"run {self.v.n} {self.v.reps}").split()
        return int(ns), int(count)

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=WORKER_TIMEOUT)


def count_hooks(workers: dict[str, Worker]) -> tuple[dict[str, int], dict[str, int], str]:
    """Hooks per run of each variant, the count each linux variant must see after a run, and
    a line describing the counts."""
    pc = int(workers["linux"].ask(f"count-pc {N}"))
    big = int(workers["linux-big"].ask(f"count-pc {BIG_N}"))
    cmp_pc = int(workers["cmp-linux"].ask(f"count-pc {N}"))
    _, cmp_records = workers["cmp-linux"].run()
    if pc + 1 >= AREA_WORDS or big + 1 >= BIG_AREA_WORDS or 4 * cmp_records >= CMP_AREA_WORDS:
        raise SystemExit("bench_native_hooks: a linux area is too small for one call of work")
    hooks = {}
    for v in VARIANTS:
        per_call = cmp_pc + cmp_records if v.lib.startswith("cmp") else pc
        hooks[v.name] = (big if v.setup == "linux-big" else per_call) * v.reps
    expect = {
        "linux": pc,
        "linux-clip": AREA_WORDS - 1,
        "linux-big": big,
        "cmp-linux": cmp_records,
    }
    text = (
        f"hooks per call of work({N}): trace-pc build {pc} ({pc / N:.2f} per iteration), "
        f"trace-cmp build {cmp_pc} trace_pc + {cmp_records} cmp = {cmp_pc + cmp_records}; "
        f"work({BIG_N}): {big}"
    )
    return hooks, expect, text


def measure(workers: dict[str, Worker], expect: dict[str, int]) -> dict[str, list[float]]:
    """CPU ns per run of each variant, per round, in a rotating order."""
    names = [v.name for v in VARIANTS]
    for _ in range(2):  # warm up: pages, caches, branch predictors, gvisor marks
        for name in names:
            workers[name].run()
    ns: dict[str, list[float]] = {name: [] for name in names}
    for k in range(ROUNDS):
        for name in rotated(names, k):
            t, count = workers[name].run()
            if name in expect and count != expect[name]:
                raise SystemExit(f"bench_native_hooks: {name}: count {count}, not {expect[name]}")
            ns[name].append(t)
    return ns


def report(ns: dict[str, list[float]], hooks: dict[str, int]) -> int:
    plain = median(ns["plain"])
    judge = Judge()
    table = Table(
        "variant<33 | ms/run>7.2f | p25-p75 ms>13 | ns/hook>7.3f | x empty>7.2f | net ns>6.3f",
        judged=True,
    )
    print(
        "\nCPU time, medians over rounds; ns/hook = run / hooks per run; x empty = ratio of "
        "medians\nto the same build's empty hooks (per hook); net ns = (run - plain run) / hooks"
    )
    table.print_head()
    verdicts = []
    for v in VARIANTS:
        m = median(ns[v.name])
        q = spread(ns[v.name])
        per_hook = m / hooks[v.name]
        ratio = None
        if v.floor is not None:
            ratio = per_hook / (median(ns[v.floor]) / hooks[v.floor])
        net = None if v.name == "plain" else per_hook - plain / hooks["plain"]
        cells = [v.label, m / 1e6, spread_cell((q[0] / 1e6, q[1] / 1e6), 6, 2), per_hook]
        if v.goal is not None and ratio is not None:
            verdict = judge.verdict(ratio, v.goal)
            verdicts.append((v, ratio, verdict))
            table.print_row(*cells, ratio, net, str(v.goal), verdict)
        else:
            table.print_row(*cells, ratio, net, None, "info" if v.floor else "base")
    empty_net = median(ns["empty"]) / hooks["empty"] - plain / hooks["plain"]
    shown = ("off", "linux", "linux-clip", "linux-big", "gvisor")
    print(
        "\nnet of the plain loop (info), x the empty hooks' net cost: "
        + ", ".join(
            f"{name} {(median(ns[name]) / hooks[name] - plain / hooks['plain']) / empty_net:.2f}"
            for name in shown
        )
    )
    print()
    for v, ratio, verdict in verdicts:
        what = "nothing enabled" if v.setup == "off" else "linux TRACE_PC recording"
        assert v.goal is not None
        print(
            f"target: kcovx hook, {what}, {v.goal.op} {v.goal.limit:g}x the empty hook: "
            f"{ratio:.2f}x  {verdict}"
        )
    return judge.status()


def main() -> int:
    import kcovx

    print(
        f"bench_native_hooks: {REPS} calls of work({N}) per run, {ROUNDS} rounds, one worker "
        "process per variant"
    )
    cc = os.environ.get("CC", "gcc")
    print(
        f"Python {sys.version.split()[0]} on {platform.machine()}, {cpu_model()}, "
        f"{os.cpu_count()} CPUs; CC {cc}"
    )
    print(f"kcovx {kcovx.__version__} from {kcovx.__file__}")
    if shutil.which(cc) is None:
        print(f"bench_native_hooks: no C compiler ({cc})")
        return EXIT_BROKEN
    with tempfile.TemporaryDirectory(prefix="kcovx-bench-") as tmp:
        libs = build(Path(tmp))
        workers = {v.name: Worker(v, libs[v.lib]) for v in VARIANTS}
        try:
            hooks, expect, text = count_hooks(workers)
            ns = measure(workers, expect)
        finally:
            for w in workers.values():
                w.close()
    print(f"\n{text}")
    return report(ns, hooks)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3]))
    sys.exit(main())
