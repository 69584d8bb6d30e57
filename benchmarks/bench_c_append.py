"""Cost of one PC appended from C through kcovx's cimport API, against a plain store.

Owns: the C-level target of kcovx: ``kcovx_append_pc(&area.c, pc)`` (the inline append of
kcovx.h, reached with ``cimport kcovx``) costs at most 1.5 ns per PC in a nogil loop.

Method.  The script builds a tiny Cython module into a temporary folder (the way any consumer
builds: ``setup.py build_ext`` in a subprocess with this interpreter, include_dirs =
``kcovx.get_include()``, kcovx's .pxd files found on sys.path, -O3 as kcovx itself), then times,
inside C with clock_gettime(CLOCK_MONOTONIC), one repetition of each method on N = size - 1 PCs:

- baseline: ``words[i + 1] = pc`` into a plain malloc'd C array of the same size (memory
  speed; the compiler is free to vectorise it, which is what "memory speed" means);
- cimport: ``kcovx_append_pc(a, pc)`` with ``a = &area.c``, one call per PC;
- capsule: ``api.append_pc(a, pc)``, the function pointer from the ``kcovx._area._C_API``
  capsule (what a plain-C consumer calls; an indirect call that cannot inline);
- bulk: one ``kcovx_append_pcs(a, pcs, N)`` of a prebuilt array (a copy).

The area is a ``kcovx.Area`` of 2**20 words and the C array the same size; both are written in
full before timing (pre-faulted).  Word 0 is reset to 0 before every repetition (untimed), so
every append stores and none clips; the result is checked after each repetition.  Each round
runs every method once, in a rotating order, so baseline and candidates interleave on a noisy
machine; tables show medians over the rounds, the spread (p25-p75) and the ratio to the baseline
(ratio of medians).

Threading: single-threaded; the timed loops run without the GIL.  Runs in well under 60 s
(the build takes most of it).  Usage: ``python benchmarks/bench_c_append.py [--quick]``, with
kcovx installed or ``PYTHONPATH=.`` after an in-place build.  Exit status 0 if the target is
met, 1 if not.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from _common import cpu_model, rotated
from _report import Judge, Table, Target, median, spread, spread_cell

import kcovx

QUICK = "--quick" in sys.argv
WORDS = 1 << 20  # area size in words; N = WORDS - 1 PCs per repetition
ROUNDS = 9 if QUICK else 31  # >= 7
GOAL = Target("<=1.5")  # cimport kcovx_append_pc, ns per PC
BUILD_TIMEOUT = 120  # seconds

_PYX = r'''
# cython: language_level=3
# The timed loops of bench_c_append.py.  Generated into a temporary folder; never committed.
cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cimport kcovx

cdef const kcovx.kcovx_api_t *api = kcovx.import_api()  # checked: ImportError if incompatible

cdef uint64_t *plain = NULL   # the baseline's array
cdef uint64_t *pcs = NULL     # the bulk method's source
cdef uint64_t nwords = 0

cdef extern from *:
    """
    #define KCOVX_BENCH_PC0 0xffffffff81000000ULL  /* a kernel-looking first PC */
    """
    const uint64_t PC0 "KCOVX_BENCH_PC0"


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t> ts.tv_sec * 1000000000 + <uint64_t> ts.tv_nsec


def setup(uint64_t size):
    # Allocate and pre-fault the baseline array and the bulk source; size words each.
    global plain, pcs, nwords
    cdef uint64_t i
    free(plain)
    free(pcs)
    plain = <uint64_t *> malloc(size * sizeof(uint64_t))
    pcs = <uint64_t *> malloc(size * sizeof(uint64_t))
    if plain == NULL or pcs == NULL:
        raise MemoryError()
    memset(plain, 0xff, size * sizeof(uint64_t))
    for i in range(size):
        pcs[i] = PC0 + i
    nwords = size


@cython.boundscheck(False)
@cython.wraparound(False)
def baseline(uint64_t n):
    # ns for n plain stores words[i + 1] = pc.
    cdef uint64_t i, t0, t1
    cdef uint64_t *w = plain
    if n >= nwords:
        raise ValueError("n too large")
    w[0] = 0
    with nogil:
        t0 = now_ns()
        for i in range(n):
            w[i + 1] = PC0 + i
        t1 = now_ns()
    w[0] = n
    if w[n] != PC0 + n - 1:
        raise AssertionError("baseline: wrong last word")
    return t1 - t0


@cython.boundscheck(False)
@cython.wraparound(False)
def cimport_append(kcovx.Area area not None, uint64_t n):
    # ns for n calls of the inline kcovx_append_pc.
    cdef kcovx.kcovx_area_t *a = &area.c
    cdef uint64_t i, t0, t1
    kcovx.kcovx_publish_count(a, 0)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            kcovx.kcovx_append_pc(a, PC0 + i)
        t1 = now_ns()
    if kcovx.kcovx_load_count(a) != n or a.words[n] != PC0 + n - 1:
        raise AssertionError("cimport: wrong count or last word")
    return t1 - t0


@cython.boundscheck(False)
@cython.wraparound(False)
def capsule_append(kcovx.Area area not None, uint64_t n):
    # ns for n calls of api.append_pc through the capsule's function pointer.
    cdef kcovx.kcovx_area_t *a = &area.c
    cdef int (*append_pc)(kcovx.kcovx_area_t *, uint64_t) noexcept nogil
    cdef uint64_t i, t0, t1
    append_pc = api.append_pc
    kcovx.kcovx_publish_count(a, 0)
    with nogil:
        t0 = now_ns()
        for i in range(n):
            append_pc(a, PC0 + i)
        t1 = now_ns()
    if kcovx.kcovx_load_count(a) != n or a.words[n] != PC0 + n - 1:
        raise AssertionError("capsule: wrong count or last word")
    return t1 - t0


def bulk_append(kcovx.Area area not None, uint64_t n):
    # ns for one kcovx_append_pcs of n PCs.
    cdef kcovx.kcovx_area_t *a = &area.c
    cdef uint64_t t0, t1, done
    if n > nwords:
        raise ValueError("n too large")
    kcovx.kcovx_publish_count(a, 0)
    with nogil:
        t0 = now_ns()
        done = kcovx.kcovx_append_pcs(a, pcs, n)
        t1 = now_ns()
    if done != n or kcovx.kcovx_load_count(a) != n or a.words[n] != PC0 + n - 1:
        raise AssertionError("bulk: wrong count or last word")
    return t1 - t0
'''

_SETUP = r"""
import kcovx
from Cython.Build import cythonize
from setuptools import Extension, setup


setup(
    name="kcovx-bench-c-append",
    ext_modules=cythonize(
        [Extension("_bench_c_append", ["_bench_c_append.pyx"],
                   include_dirs=[kcovx.get_include()],
                   extra_compile_args=["-O3", "-fno-strict-aliasing"])],
        language_level=3,
        quiet=True,
    ),
)
"""


def build(folder: Path) -> ModuleType:
    """Build the timing module in folder (a subprocess, bounded) and import it."""
    src, lib, tmp = folder / "src", folder / "lib", folder / "tmp"
    src.mkdir()
    (src / "_bench_c_append.pyx").write_text(_PYX, encoding="utf-8")
    (src / "setup.py").write_text(_SETUP, encoding="utf-8")
    # The build must see the kcovx this interpreter imports (kcovx.h and the .pxd files).
    root = os.path.dirname(os.path.dirname(os.path.abspath(kcovx.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib), "--build-temp",
           str(tmp)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=src, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"bench_c_append: building the timing module failed ({proc.returncode})")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = lib / f"_bench_c_append{suffix}"
        if path.exists():
            spec = importlib.util.spec_from_file_location("_bench_c_append", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"bench_c_append: no built module in {lib}")


def main() -> int:
    n = WORDS - 1
    print(f"bench_c_append: {n} appends of one PC per repetition, {ROUNDS} rounds")
    print(
        f"Python {sys.version.split()[0]} on {platform.machine()}, {cpu_model()}, "
        f"{os.cpu_count()} CPUs; CC {sysconfig.get_config_var('CC')}"
    )
    print(f"kcovx {kcovx.__version__} from {kcovx.__file__}")
    with tempfile.TemporaryDirectory(prefix="kcovx-bench-") as tmp:
        m = build(Path(tmp))
        area = kcovx.Area(WORDS)
        memoryview(area).cast("B")[:] = b"\xff" * (WORDS * 8)  # pre-fault every page
        m.setup(WORDS)
        methods = {
            "baseline": lambda: m.baseline(n),
            "cimport": lambda: m.cimport_append(area, n),
            "capsule": lambda: m.capsule_append(area, n),
            "bulk": lambda: m.bulk_append(area, n),
        }
        names = list(methods)
        for _ in range(2):  # warm up: caches, branch predictors, CPU frequency
            for name in names:
                methods[name]()
        ns: dict[str, list[float]] = {name: [] for name in names}
        for k in range(ROUNDS):
            for name in rotated(names, k):
                ns[name].append(methods[name]() / n)

    base = median(ns["baseline"])
    labels = {
        "baseline": "plain store words[i+1] = pc (C array)",
        "cimport": "kcovx_append_pc(&a.c, pc)  [cimport]",
        "capsule": "api.append_pc(&a.c, pc)  [capsule]",
        "bulk": "kcovx_append_pcs(&a.c, pcs, N)  [bulk]",
    }
    print()
    table = Table("method<40 | ns/PC>7.3f | p25-p75>13 | x base>7.2f")
    print("ns per PC, medians over rounds; x base = median / median of the baseline")
    table.print_head()
    for name in names:
        m = median(ns[name])
        table.print_row(labels[name], m, spread_cell(spread(ns[name]), 6, 3), m / base)
    got = median(ns["cimport"])
    judge = Judge()
    verdict = judge.verdict(got, GOAL)
    print()
    print(
        f"target: cimport kcovx_append_pc {GOAL.op} {GOAL.limit:g} ns/PC: "
        f"{got:.3f} ns/PC  {verdict}"
    )
    return judge.status()


if __name__ == "__main__":
    sys.exit(main())
