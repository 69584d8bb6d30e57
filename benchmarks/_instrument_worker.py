"""What runs in the fresh interpreter bench_instrument.py starts per configuration and round.

Owns: one measurement per process, chosen on the command line
(``python _instrument_worker.py [--quick] KIND ARGS``) and printed as one line
``RESULT <json>`` on stdout:

* ``exec WORKLOAD CONFIG``: import the target the configuration's way (plain; kcovx's
  ``instrument_imports`` with no device, a gvisor or a linux device, or with ``cmp=True`` and
  a linux device tracing comparisons (``cmp``); atheris; coverage.py's C
  tracer; python-afl), run the inputs through the fuzz-loop harness, warm up, then time REPS
  repetitions; untimed after: each input's outcome, a check that the coverage was live, the
  PCs recorded per exec.
* ``calib``: a C builtin call and the probe instrumented code uses, in a loop, net of the
  empty loop (linux device enabled).
* ``import WORKLOAD MODE DEPS``: one timed import (plain .pyc, from source, kcovx with a warm
  or an empty cache) after pre-importing DEPS; ``deps WORKLOAD``: what that import brings in
  from outside the target's packages.

Invariant: nothing of a target package is imported before the configuration instruments it
(checked; this module and what it imports never import one).  Single-threaded; the process
exits after its one measurement.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from _common import fresh_loop, gc_paused, rotated
from _instrument_workloads import WORKLOADS, Workload, import_all, under

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

QUICK = "--quick" in sys.argv
REPS = 3 if QUICK else 5  # timed repetitions inside one process
REP_SECONDS = 0.03 if QUICK else 0.07  # target duration of one repetition
WARM_SECONDS = 0.05 if QUICK else 0.15
CALIB_N = 200_000  # iterations of the abs / trace_pc / empty loops
UNIQUE_BITMAP_WORDS = 4096  # 262,144 block indices: more than every block a workload has


def _is_kcovx_cmp_instrumented(mod: types.ModuleType) -> bool:
    from kcovx.instrument.unit import CMP

    return _is_kcovx_instrumented(mod) and any(k.startswith(CMP) for k in vars(mod))


class _CmpRunner:
    """The per-input protocol of a comparison-tracing fuzzer: reset word 0, run the input,
    read the records as a zero-copy view (4 words each), on a linux device in
    KCOV_TRACE_CMP mode."""

    def __init__(self, target: Callable[[Any], object], text: bool) -> None:
        import kcovx

        self.target, self.text = target, text
        self.device = kcovx.open("linux")
        self.device.init_trace(1 << 18)
        self.words = self.device.mmap()
        self.device.enable(kcovx.KCOV_TRACE_CMP)

    def run_one(self, data: bytes) -> Any:
        w = self.words
        w[0] = 0
        try:  # noqa: SIM105  (the same try/except as Fuzzer.run_one)
            self.target(data.decode("utf-8", "replace") if self.text else data)
        except Exception:
            pass
        n = int(w[0])
        return w[1 : 1 + 4 * n]

    def close(self) -> None:
        self.device.disable()
        self.device.close()


def _is_kcovx_instrumented(mod: types.ModuleType) -> bool:
    from kcovx.instrument import PROBE

    # the import hook binds the probe (``__kcovx_pc_<tag>__``) in each module it loads
    return any(k.startswith(PROBE) for k in vars(mod))


def _is_atheris_instrumented(mod: types.ModuleType) -> bool:
    """atheris's probes load the atheris module as a constant of each patched code object
    (a module that defines no function cannot be told apart: True)."""
    codes = [
        v.__code__
        for v in vars(mod).values()
        if isinstance(v, types.FunctionType) and v.__module__ == mod.__name__
    ]
    return not codes or any(
        isinstance(c, types.ModuleType) for code in codes for c in code.co_consts
    )


def _plain_runner(target: Callable[[Any], object], text: bool) -> Callable[[bytes], None]:
    """What Fuzzer.run_one does around the target, without the device."""
    if text:

        def run(data: bytes) -> None:
            try:  # noqa: SIM105  (the same try/except as Fuzzer.run_one)
                target(data.decode("utf-8", "replace"))
            except Exception:
                pass

    else:

        def run(data: bytes) -> None:
            try:  # noqa: SIM105
                target(data)
            except Exception:
                pass

    return run


def _timed(run: Callable[[bytes], object], inputs: Sequence[bytes], passes: int) -> float:
    clock = time.perf_counter
    t0 = clock()
    for _ in range(passes):
        for d in inputs:
            run(d)
    return clock() - t0


def _outcomes(target: Callable[[Any], object], inputs: Sequence[bytes], text: bool) -> list[str]:
    out = []
    for d in inputs:
        try:
            target(d.decode("utf-8", "replace") if text else d)
            out.append("ok")
        except Exception as e:  # the same exception types in every configuration
            out.append(type(e).__name__)
    return out


class _AflMap:
    """A private 64 KiB SysV shm segment handed to python-afl as afl-fuzz would."""

    IPC_PRIVATE, IPC_CREAT, IPC_RMID, MAP_SIZE = 0, 0o1000, 0, 1 << 16

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmget.restype = ctypes.c_int
        libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
        self.shmid = libc.shmget(self.IPC_PRIVATE, self.MAP_SIZE, self.IPC_CREAT | 0o600)
        if self.shmid < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        addr = libc.shmat(self.shmid, None, 0)
        # Removed now: the segment lives until the last detach (process exit), and Linux
        # still lets python-afl attach it by id meanwhile.
        libc.shmctl(self.shmid, self.IPC_RMID, None)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "shmat")
        self.view = (ctypes.c_ubyte * self.MAP_SIZE).from_address(addr)

    def nonzero(self) -> int:
        return sum(1 for b in bytes(self.view) if b)


def _import_target(wl: Workload, config: str, info: dict[str, Any]) -> Any:
    """Import the target's modules the configuration's way; the coverage.py object for
    ctrace (started before the import, as ``coverage run`` would), else None."""
    import kcovx

    already = sorted(m for m in sys.modules if under(m, wl.include))
    if already:
        raise RuntimeError(f"{already} imported before the target was instrumented")
    cov = None
    if config in ("nodev", "gvisor", "linux", "unique"):
        with kcovx.instrument_imports(include=list(wl.include)):
            import_all(wl)
    elif config == "cmp":
        with kcovx.instrument_imports(include=list(wl.include), cmp=True):
            import_all(wl)
    elif config == "atheris":
        import atheris

        with atheris.instrument_imports(include=list(wl.include)):
            import_all(wl)
    elif config == "ctrace":
        import coverage
        import coverage.exceptions

        # coverage.py imports tomllib itself (config files), before it starts: say nothing.
        warnings.simplefilter("ignore", coverage.exceptions.CoverageWarning)
        cov = coverage.Coverage(data_file=None, config_file=False, source_pkgs=list(wl.include))
        cov.start()
        info["core"] = dict(cov.sys_info()).get("core")
        if info["core"] != "CTracer":
            raise RuntimeError(f"coverage.py core is {info['core']!r}, not CTracer")
        import_all(wl)
    else:
        import_all(wl)
    return cov


def _time_runs(run: Callable[[bytes], object], inputs: Sequence[bytes]) -> list[float]:
    """Warm up (specialisation, caches), size a repetition, then REPS timed repetitions:
    seconds per exec of each."""
    passes, t = 0, 0.0
    while t < WARM_SECONDS or passes < 3:
        t += _timed(run, inputs, 1)
        passes += 1
    reps_passes = max(1, round(REP_SECONDS / (t / passes)))
    gc.collect()
    gc.freeze()
    times = [_timed(run, inputs, reps_passes) / (reps_passes * len(inputs)) for _ in range(REPS)]
    gc.unfreeze()
    return times


def _check_live(config: str, mods: list[types.ModuleType], cov: Any, amap: _AflMap | None) -> None:
    """Each configuration really observed the target."""
    if amap is not None:
        sys.settrace(None)
        if amap.nonzero() == 0:
            raise RuntimeError("python-afl recorded nothing")
    if cov is not None:
        cov.stop()
        data = cov.get_data()
        if sum(len(data.lines(f) or ()) for f in data.measured_files()) == 0:
            raise RuntimeError("coverage.py measured no line of the target")
    check = {
        "nodev": _is_kcovx_instrumented,
        "gvisor": _is_kcovx_instrumented,
        "linux": _is_kcovx_instrumented,
        "unique": _is_kcovx_instrumented,
        "cmp": _is_kcovx_cmp_instrumented,
        "atheris": _is_atheris_instrumented,
    }.get(config)
    bad = [m.__name__ for m in mods if check is not None and not check(m)]
    if bad:
        raise RuntimeError(f"not instrumented by {config}: {bad}")


def worker_exec(wl: Workload, config: str) -> dict[str, Any]:
    sys.path.insert(0, EXAMPLES)
    from fuzz_loop import Fuzzer

    inputs = wl.inputs()
    info: dict[str, Any] = {}
    cov = _import_target(wl, config, info)
    target = wl.target()
    mods = [sys.modules[m] for m in sorted(sys.modules) if under(m, wl.include)]
    fz = None
    if config in ("gvisor", "linux"):
        fz = Fuzzer(target, profile=config, text=wl.text)
        run: Callable[[bytes], object] = fz.run_one
    elif config == "unique":  # KCOV_UNIQUE_ENABLE: reset_trace per input, first hits only
        from kcovx import _area

        if _area.Probe([]).base > 64 * UNIQUE_BITMAP_WORDS:  # the next free block index
            raise RuntimeError("blocks past the unique bitmap: raise UNIQUE_BITMAP_WORDS")
        fz = Fuzzer(target, profile="linux", size=1 << 17, text=wl.text, unique=UNIQUE_BITMAP_WORDS)
        run = fz.run_one
    elif config == "cmp":
        cr = _CmpRunner(target, wl.text)
        run = cr.run_one
    else:
        run = _plain_runner(target, wl.text)
    amap = None
    if config == "afl":
        import afl

        amap = _AflMap()
        os.environ["__AFL_SHM_ID"] = str(amap.shmid)
        afl.init()  # no fork server (fd 199 is closed): attaches the map, sys.settrace(trace)

    times = _time_runs(run, inputs)

    # Untimed: outcomes, live coverage, PCs per exec.
    info["outcomes"] = _outcomes(target, inputs, wl.text)
    _check_live(config, mods, cov, amap)
    if fz is not None:
        counts, distinct = [], []
        for d in inputs:
            pcs = fz.run_one(d)
            counts.append(len(pcs))
            distinct.append(len(set(pcs.tolist())))
        if max(counts) >= fz.device.size - fz.unique - 1:
            raise RuntimeError("the area clipped: raise Fuzzer(size=...)")
        info["pcs_per_exec"] = statistics.fmean(counts)
        info["distinct_per_exec"] = statistics.fmean(distinct)
        fz.close()
    if config == "cmp":
        recs = [len(cr.run_one(d)) // 4 for d in inputs]
        if max(recs) * 4 >= (1 << 18) - 1:
            raise RuntimeError("the comparison area clipped: raise its size")
        if max(recs) == 0:
            raise RuntimeError("no comparison recorded")
        info["records_per_exec"] = statistics.fmean(recs)
        cr.close()
    info["modules"] = [m.__name__ for m in mods]
    return {"times": times, **info}


def _probe_carrier(x: int) -> int:
    """Instrumented by the calibration worker, to see what a probe looks like."""
    if x:
        return 1
    return 0


def _probe_shape() -> tuple[Any, str, int]:
    """The object instrumented code records with, how it uses it (``call``: ``P(pc)``,
    ``subscript``: ``P[i]``, i a block's index in its unit) and the constant one probe
    passes."""
    import dis

    import kcovx
    from kcovx.instrument import PROBE

    kcovx.instrument_func(_probe_carrier)
    ins = list(dis.get_instructions(_probe_carrier))
    for k, x in enumerate(ins):
        if x.opname == "LOAD_GLOBAL" and str(x.argval).startswith(PROBE):
            const = next(y for y in ins[k + 1 :] if y.opname == "LOAD_CONST")
            after = ins[ins.index(const) + 1 :]
            used = next(y.opname for y in after if y.opname not in ("CACHE", "PUSH_NULL"))
            how = "subscript" if "SUBSCR" in used else "call"
            return _probe_carrier.__globals__[x.argval], how, int(const.argval)
    raise RuntimeError("no probe found in an instrumented function")


def worker_calib() -> dict[str, Any]:
    """Net ns per iteration of abs(i) and of the probe (as instrumented code uses it, with a
    small int and with a real PC), linux device enabled, in a loop."""
    import kcovx

    probe, how, pc = _probe_shape()
    use = "f[{}]" if how == "subscript" else "f({})"
    r = list(range(CALIB_N))
    dev = kcovx.open("linux")
    dev.init_trace((CALIB_N + 1 + 511) // 512 * 512)
    words = dev.mmap()
    dev.enable()
    if how == "subscript":
        # probe[i] for every i of the loop: a probe of the same class holding CALIB_N PCs
        # (the real PC each time).
        wide = type(probe)([probe.pcs[pc]] * CALIB_N)
        loops = {
            "empty": (fresh_loop("pass"), None),
            "abs": (fresh_loop("f(i)"), abs),
            "probe_i": (fresh_loop(use.format("i")), wide),
            "probe_pc": (fresh_loop(use.format(pc)), probe),
        }
    else:
        loops = {
            "empty": (fresh_loop("pass"), None),
            "abs": (fresh_loop("f(i)"), abs),
            "probe_i": (fresh_loop(use.format("i")), probe),
            "probe_pc": (fresh_loop(use.format(hex(pc))), probe),
        }
    clock = time.perf_counter_ns
    names = list(loops)
    res: dict[str, list[float]] = {name: [] for name in names}
    with gc_paused():
        for k in range(2 + 2 * REPS):
            t = {}
            for name in rotated(names, k):
                words[0] = 0
                f, arg = loops[name]
                t[name] = f(r, arg, clock)
            if k >= 2:
                for name in names:
                    net = t[name] - (0 if name == "empty" else t["empty"])
                    res[name].append(net / CALIB_N)
    dev.disable()
    dev.close()
    out: dict[str, Any] = {k: statistics.median(v) for k, v in res.items()}
    out["how"] = f"{use.format('pc')} with {_name_of(probe)}"
    return out


def _name_of(probe: Any) -> str:
    return getattr(probe, "__qualname__", None) or type(probe).__qualname__


def worker_import(wl: Workload, mode: str, deps: list[str]) -> dict[str, Any]:
    import kcovx

    for d in deps:
        with contextlib.suppress(Exception):
            importlib.import_module(d)
    already = sorted(m for m in sys.modules if under(m, wl.include))
    if already:
        raise RuntimeError(f"{already} imported before the timed import")
    if mode == "source":
        # No .pyc found (an empty prefix): the import compiles from source.
        sys.pycache_prefix = os.environ["BENCH_PYCACHE_PREFIX"]
    clock = time.perf_counter
    hook = load = 0.0
    if mode in ("warm", "cold"):
        # Loading kcovx's instrumentation (ast, dis, ...) happens once per process, on first
        # use of a kcovx.instrument name, not per import: timed apart, as `import kcovx` is.
        t0 = clock()
        instrument_imports = kcovx.instrument_imports
        load = clock() - t0
        t0 = clock()
        with instrument_imports(include=list(wl.include)):
            hook = clock() - t0  # creating and installing the hook
            import_all(wl)
        t = clock() - t0
    else:
        t0 = clock()
        import_all(wl)
        t = clock() - t0
    mods = [sys.modules[m] for m in sorted(sys.modules) if under(m, wl.include)]
    if mode in ("warm", "cold"):
        bad = [m.__name__ for m in mods if not _is_kcovx_instrumented(m)]
        if bad:
            raise RuntimeError(f"not instrumented by kcovx: {bad}")
    lines = 0
    for m in mods:
        with open(m.__file__ or "", "rb") as f:
            lines += len(f.read().splitlines())
    return {
        "seconds": t,
        "hook": hook,
        "load": load,
        "lines": lines,
        "modules": [m.__name__ for m in mods],
    }


def worker_deps(wl: Workload) -> dict[str, Any]:
    """The modules importing the target brings in, outside its packages."""
    import kcovx  # noqa: F401  (the same starting set as the import workers)

    before = set(sys.modules)
    import_all(wl)
    return {"deps": sorted(m for m in set(sys.modules) - before if not under(m, wl.include))}


def worker_main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "exec":
        out = worker_exec(WORKLOADS[argv[1]], argv[2])
    elif kind == "calib":
        out = worker_calib()
    elif kind == "import":
        out = worker_import(WORKLOADS[argv[1]], argv[2], argv[3].split(",") if argv[3] else [])
    elif kind == "deps":
        out = worker_deps(WORKLOADS[argv[1]])
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main([a for a in sys.argv[1:] if a != "--quick"]))
