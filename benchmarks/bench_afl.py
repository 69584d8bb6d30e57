"""AFL++ drives a Python target: kcovx (``kcovx afl``) against python-afl (PyPI), same target,
same AFL++, same machine, run one after the other.

Owns: issue 12's figures.  Two measurements per workload (a stdlib parser fed stdin,
``_afl_target.py``; tomllib and email by default):

1. **Same inputs**: a fixed set of inputs (the workload's seeds from ``data/`` and mutations
   of them made with a seeded RNG, so every run and both engines get the same bytes) goes
   through each engine's fork server, driven by ``drive()`` as afl-fuzz drives it.  Wall
   time per input, medians over rounds; the ratio python-afl / kcovx is the engines' cost
   alone, with AFL++'s scheduling and its own per-input work out of the picture.  ``plain``
   is ``kcovx afl`` with nothing instrumented: the floor (the driver's, the fork server's
   and the parser's cost).
2. **Campaigns**: ``afl-fuzz -V SECONDS -s 1 -t 1000`` per engine and mode from the same
   seeds, persistent (the same program for both engines, ``while afl.loop(N)``, kcovx under
   ``kcovx afl --deferred``; and, info, ``kcovx afl --persistent N`` on the program without
   the API) and forked (both: ``afl.init()`` after the imports).  Reported: execs/s and
   edges from ``fuzzer_stats``; and, because the two engines' edges are different units
   (python-afl hashes line-to-line transitions of every Python line run, kcovx
   block-to-block transitions of the instrumented package only), each final corpus measured
   again in *both* units with ``afl-showmap -C``.  Then, info, one instance per core
   (``-M``/``-S``) for both persistent engines: total execs/s.

Judged (issue 12): persistent campaigns of the same program, kcovx execs/s >= 3x python-afl's,
and kcovx's corpus covering at least as many edges as python-afl's, in python-afl's unit and
in kcovx's.  The same-input figures and the other campaigns are info.

Needs ``afl-fuzz``, ``afl-showmap`` (Debian's ``afl++``) and python-afl (``pip install
python-afl``) for this interpreter; without one it prints "skipped" and exits 0.  Usage:
``python benchmarks/bench_afl.py [--quick] [--seconds S] [--workload W]...``; about
workloads x 7 x SECONDS plus a minute each (default 60 s, two workloads: about 16 minutes).
Single-threaded driver; each campaign runs alone (AFL_NO_AFFINITY, nothing else should run).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import DATA, cpu_model, rotated
from _report import EXIT_MET, Judge, Table, Target, median, versions

HERE = Path(__file__).resolve().parent
TARGET = HERE / "_afl_target.py"
BIN = Path(sys.executable).parent
PERSIST_N = 10000
AFL_ENV = {
    "AFL_NO_UI": "1",
    "AFL_SKIP_CPUFREQ": "1",
    "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1",
    "AFL_SKIP_BIN_CHECK": "1",  # the targets are Python entry points, not instrumented ELFs
    "AFL_NO_AFFINITY": "1",
    "AFL_NO_AUTODICT": "1",
}
PYAFL_ENV = {"PYTHON_AFL_PERSISTENT": "1", "PYTHON_AFL_SIGNAL": "SIGUSR1"}  # py-afl-fuzz's


@dataclass(frozen=True)
class Engine:
    """One way to run the target: argv after ``--`` and the environment it needs."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


def engines(workload: str) -> dict[str, Engine]:
    kcovx_bin, py = str(BIN / "kcovx"), sys.executable
    t, inc = str(TARGET), ("--include", workload)
    n = str(PERSIST_N)
    none, ka = {"KCOVX_BENCH_ENGINE": "none"}, {"KCOVX_BENCH_ENGINE": "kcovx"}
    pa = {"KCOVX_BENCH_ENGINE": "python-afl", **PYAFL_ENV}
    plain = ("--include", "kcovx_bench_nothing")
    return {
        e.name: e
        for e in (
            Engine("plain", (kcovx_bin, "afl", "--persistent", n, *plain, t, workload), none),
            Engine("kcovx", (kcovx_bin, "afl", "--persistent", n, *inc, t, workload), none),
            Engine("kcovx loop", (kcovx_bin, "afl", "--deferred", *inc, t, workload, n), ka),
            Engine("python-afl", (py, t, workload, n), pa),
            Engine("kcovx fork", (kcovx_bin, "afl", "--deferred", *inc, t, workload), ka),
            Engine("python-afl fork", (py, t, workload), pa),
        )
    }


def seeds(workload: str) -> list[bytes]:
    folder = Path(DATA) / workload
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def mutations(base: Sequence[bytes], count: int, seed: int = 12) -> list[bytes]:
    """``count`` inputs made from ``base`` by a few havoc-like edits each (bit flips, byte
    sets, deletions, insertions, splices), with a seeded RNG: the same bytes every run."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data[pos:]:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1 and data[pos:]:
                data[pos] = rng.choice(b"\x00\xff\n =[]\"'{}:,.#-")
            elif op == 2:
                del data[pos : pos + rng.randint(1, 16)]
            elif op == 3:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                other = rng.choice(base)
                cut = rng.randrange(len(other) + 1)
                data[pos:] = other[cut:]
        out.append(bytes(data))
    return out


def showmap(engine: Engine, inputs: Path, out: Path) -> int:
    """Run every file in ``inputs`` through ``engine`` with ``afl-showmap -C``: the number of
    edges the whole set covers, in that engine's unit."""
    env = {**os.environ, **AFL_ENV, **engine.env}
    cmd = ["afl-showmap", "-q", "-C", "-t", "5000", "-i", str(inputs), "-o", str(out), "--"]
    r = subprocess.run(
        [*cmd, *engine.argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
        stdin=subprocess.DEVNULL,
    )
    if not out.is_file():
        raise RuntimeError(f"afl-showmap failed for {engine.name}: {r.stdout[-800:]}")
    return sum(1 for line in out.read_text().splitlines() if line.strip())


_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.restype = ctypes.c_int
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drive(engine: Engine, inputs: Sequence[bytes], map_size: int = 1 << 16) -> float:
    """Seconds to run ``inputs`` (after one warm-up pass) through ``engine``'s fork server,
    driven as afl-fuzz drives it (a SysV map cleared per input, the input in a file on
    stdin, a command on fd 198, pid and status back on fd 199; stderr to /dev/null and no
    core files, as afl-fuzz sets them), without afl-fuzz's own per-input work, which is the
    same for every engine.  A crashed or ended child is replaced by the server as usual."""
    shm = _libc.shmget(0, map_size, 0o1000 | 0o600)
    if shm < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    addr = _libc.shmat(shm, None, 0)
    ctl_r, ctl = os.pipe()
    st, st_w = os.pipe()
    stdin = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    os.dup2(ctl_r, 198)
    os.dup2(st_w, 199)
    try:
        proc = subprocess.Popen(
            list(engine.argv),
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(198, 199),
            env={**os.environ, **engine.env, "__AFL_SHM_ID": str(shm)},
            preexec_fn=_no_core,  # noqa: PLW1509 (the driver has no threads)
        )
    finally:
        for fd in (198, 199, ctl_r, st_w):
            os.close(fd)

    def word() -> int:
        data = b""
        while len(data) < 4:
            chunk = os.read(st, 4 - len(data))
            if not chunk:
                raise RuntimeError(f"{engine.name}: the fork server closed its pipe")
            data += chunk
        value: int = struct.unpack("=I", data)[0]
        return value

    def one(data: bytes) -> None:
        stdin.seek(0)
        stdin.truncate()
        stdin.write(data)
        stdin.flush()
        stdin.seek(0)
        ctypes.memset(addr, 0, map_size)
        os.write(ctl, b"\0\0\0\0")
        word()  # the child's pid
        word()  # its status

    try:
        word()  # the hello
        for data in inputs:
            one(data)
        t0 = time.perf_counter()
        for data in inputs:
            one(data)
        return time.perf_counter() - t0
    finally:
        os.close(ctl)  # the server ends (and ends a child waiting for its next input)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(st)
        stdin.close()
        _libc.shmdt(ctypes.c_void_p(addr))
        _libc.shmctl(shm, 0, None)


def fuzzer_stats(path: Path) -> dict[str, str]:
    stats = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        stats[key.strip()] = value.strip()
    return stats


@dataclass
class Campaign:
    execs_per_s: float
    edges: int
    corpus: int
    crashes: int
    edges_in: dict[str, int]  # the final corpus measured in each engine's unit


def campaign(
    engine: Engine, seed_dir: Path, work: Path, seconds: int, units: list[Engine]
) -> Campaign:
    work.mkdir(parents=True)
    out = work / "out"
    afl_fuzz = "afl-fuzz"
    if engine.name.startswith("python-afl"):
        afl_fuzz = str(BIN / "py-afl-fuzz") if (BIN / "py-afl-fuzz").exists() else afl_fuzz
    cmd = [afl_fuzz, "-i", str(seed_dir), "-o", str(out), "-s", "1", "-t", "1000"]
    cmd += ["-V", str(seconds), "--", *engine.argv]
    r = subprocess.run(
        cmd,
        env={**os.environ, **AFL_ENV, **engine.env},
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 600,
        stdin=subprocess.DEVNULL,
    )
    stats_file = out / "default" / "fuzzer_stats"
    if not stats_file.is_file():
        raise RuntimeError(f"afl-fuzz failed for {engine.name}: {r.stdout[-1500:]}")
    stats = fuzzer_stats(stats_file)
    run_time = max(float(stats["run_time"]), 1.0)
    queue = out / "default" / "queue"
    edges_in = {u.name: showmap(u, queue, work / f"map-{u.name}") for u in units}
    return Campaign(
        int(stats["execs_done"]) / run_time,
        int(stats["edges_found"]),
        int(stats["corpus_count"]),
        int(stats["saved_crashes"]),
        edges_in,
    )


def missing_tools() -> list[str]:
    missing = [t for t in ("afl-fuzz", "afl-showmap") if shutil.which(t) is None]
    probe = subprocess.run([sys.executable, "-c", "import afl"], capture_output=True, check=False)
    if probe.returncode != 0:
        missing.append("python-afl (pip install python-afl)")
    return missing


def same_inputs(workload: str, work: Path, rounds: int, count: int) -> None:
    base = seeds(workload)
    inputs = [*base, *mutations(base, count)]
    folder = work / "inputs"
    folder.mkdir()
    for i, data in enumerate(inputs):
        (folder / f"{i:05d}").write_bytes(data)
    eng = engines(workload)
    names = ["plain", "kcovx", "kcovx loop", "python-afl", "kcovx fork", "python-afl fork"]
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in rotated(names, r):
            times[name].append(drive(eng[name], inputs) / len(inputs) * 1e6)
    edges = {name: showmap(eng[name], folder, work / "map") for name in ("kcovx", "python-afl")}
    print(
        f"\n{workload}: the same {len(inputs)} inputs (seeds and seeded mutations) through each "
        f"fork server, medians of {rounds} rounds; edges of the set (afl-showmap -C): kcovx "
        f"{edges['kcovx']}, python-afl {edges['python-afl']}"
    )
    table = Table("engine<16 | us/input>9.0f | vs plain>8.2f | python-afl/this>15.2f")
    table.print_head()
    plain = median(times["plain"])
    for name in names:
        us = median(times[name])
        peer = "python-afl fork" if "fork" in name else "python-afl"
        table.print_row(name, us, us / plain, median(times[peer]) / us)


def per_core(engine: Engine, seed_dir: Path, work: Path, seconds: int) -> float:
    """Total execs/s of one afl-fuzz instance per core sharing one output folder (``-M main``
    and ``-S sN``), as AFL++ is meant to be run: the single-instance campaigns above leave
    cores idle while afl-fuzz and the target wait for each other."""
    work.mkdir(parents=True)
    out = work / "out"
    afl_fuzz = "afl-fuzz"
    if engine.name.startswith("python-afl") and (BIN / "py-afl-fuzz").exists():
        afl_fuzz = str(BIN / "py-afl-fuzz")
    cores = max(os.cpu_count() or 1, 2)
    procs = []
    for i in range(cores):
        role = ["-M", "main"] if i == 0 else ["-S", f"s{i}"]
        cmd = [afl_fuzz, "-i", str(seed_dir), "-o", str(out), *role, "-s", str(i + 1)]
        cmd += ["-t", "1000", "-V", str(seconds), "--", *engine.argv]
        procs.append(
            subprocess.Popen(
                cmd,
                env={**os.environ, **AFL_ENV, **engine.env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        )
    for p in procs:
        p.wait(timeout=seconds + 600)
    total = 0.0
    for i in range(cores):
        stats = fuzzer_stats(out / ("main" if i == 0 else f"s{i}") / "fuzzer_stats")
        total += int(stats["execs_done"]) / max(float(stats["run_time"]), 1.0)
    return total


def floor(work: Path, seconds: int) -> float:
    """execs/s of a persistent campaign whose target does nothing (``noop``: reads stdin),
    under kcovx: what afl-fuzz and the fork server protocol cost per input on this machine.
    No engine can go faster, so ``floor / python-afl's execs/s`` bounds the ratio any engine
    could reach against python-afl on a workload."""
    seed_dir = work / "floor-seeds"
    seed_dir.mkdir()
    (seed_dir / "seed").write_bytes(b"x" * 64)
    eng = engines("noop")["kcovx loop"]
    return campaign(eng, seed_dir, work / "floor", seconds, []).execs_per_s


def campaigns(workload: str, work: Path, seconds: int, judge: Judge, ceiling: float) -> None:
    seed_dir = work / "seeds"
    seed_dir.mkdir()
    for i, data in enumerate(seeds(workload)):
        (seed_dir / f"seed{i:02d}").write_bytes(data)
    eng = engines(workload)
    units = [eng["kcovx"], eng["python-afl"]]
    results = {}
    for name in ("kcovx loop", "kcovx", "python-afl", "kcovx fork", "python-afl fork"):
        results[name] = campaign(eng[name], seed_dir, work / name.replace(" ", "-"), seconds, units)
    print(
        f"\n{workload}: afl-fuzz campaigns of {seconds} s each from {len(seeds(workload))} "
        "seeds (-s 1 -t 1000); corpus edges: the final queue through afl-showmap -C"
    )
    table = Table(
        "engine<16 | execs/s>8.0f | edges (own)>11 | corpus>6 | crashes>7 | "
        "corpus edges, kcovx unit>24 | python-afl unit>15"
    )
    table.print_head()
    for name, c in results.items():
        table.print_row(
            name,
            c.execs_per_s,
            c.edges,
            c.corpus,
            c.crashes,
            c.edges_in["kcovx"],
            c.edges_in["python-afl"],
        )
    k, p = results["kcovx loop"], results["python-afl"]
    print(
        f"ceiling: a zero-cost engine at the floor ({ceiling:.0f} execs/s) would be "
        f"{ceiling / p.execs_per_s:.2f}x python-afl here"
    )
    verdicts = Table("persistent: kcovx loop vs python-afl<40 | ratio>7.2f", judged=True)
    print()
    verdicts.print_head()
    for what, value, target in (
        ("execs/s ratio", k.execs_per_s / p.execs_per_s, ">=3.0"),
        (
            "corpus edges ratio, python-afl's unit",
            k.edges_in["python-afl"] / max(p.edges_in["python-afl"], 1),
            ">=1.0",
        ),
        (
            "corpus edges ratio, kcovx's unit",
            k.edges_in["kcovx"] / max(p.edges_in["kcovx"], 1),
            ">=1.0",
        ),
    ):
        verdicts.print_row(what, value, target, judge.verdict(value, Target(target)))
    pk = per_core(eng["kcovx loop"], seed_dir, work / "per-core-kcovx", seconds)
    pp = per_core(eng["python-afl"], seed_dir, work / "per-core-python-afl", seconds)
    print(
        f"one instance per core (-M/-S, {max(os.cpu_count() or 1, 2)} instances; info): kcovx "
        f"loop {pk:.0f} execs/s, python-afl {pp:.0f}, ratio {pk / pp:.2f}; x one instance: "
        f"kcovx {pk / k.execs_per_s:.2f}, python-afl {pp / p.execs_per_s:.2f}"
    )
    fk, fp = results["kcovx fork"], results["python-afl fork"]
    kp = results["kcovx"]
    print(
        f"kcovx --persistent (info): execs/s ratio {kp.execs_per_s / p.execs_per_s:.2f}, corpus "
        f"edges ratio (python-afl's unit) "
        f"{kp.edges_in['python-afl'] / max(p.edges_in['python-afl'], 1):.2f}"
    )
    fork_edges = fk.edges_in["python-afl"] / max(fp.edges_in["python-afl"], 1)
    print(
        f"forked (info): execs/s ratio {fk.execs_per_s / fp.execs_per_s:.2f}, corpus edges "
        f"ratio (python-afl's unit) {fork_edges:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="10 s campaigns, fewer rounds")
    ap.add_argument("--seconds", type=int, default=None, help="per campaign (default 60)")
    ap.add_argument("--workload", action="append", choices=("tomllib", "email", "shlex"))
    ap.add_argument("--no-campaign", action="store_true", help="the same-input part only")
    opts = ap.parse_args(argv)
    seconds = opts.seconds or (10 if opts.quick else 60)
    workloads = opts.workload or ["tomllib", "email"]
    print(f"bench_afl: {versions(numpy=False)}; CPU {cpu_model()}")
    missing = missing_tools()
    if missing:
        # Optional tools, like bench_instrument.py's peers: skipped, said so, not a failure.
        print(f"bench_afl: skipped: needs {', '.join(missing)}")
        return EXIT_MET
    judge = Judge()
    ceiling = 0.0
    if not opts.no_campaign:
        with tempfile.TemporaryDirectory(prefix="kcovx-bench-afl-floor-") as tmp:
            ceiling = floor(Path(tmp), min(seconds, 20))
        print(f"floor: a persistent campaign of a target that does nothing: {ceiling:.0f} execs/s")
    for workload in workloads:
        with tempfile.TemporaryDirectory(prefix=f"kcovx-bench-afl-{workload}-") as tmp:
            same_inputs(workload, Path(tmp), 3 if opts.quick else 7, 150 if opts.quick else 600)
            if not opts.no_campaign:
                campaigns(workload, Path(tmp), seconds, judge, ceiling)
    return judge.status()


if __name__ == "__main__":
    sys.exit(main())
