"""The code-cache fuzz driver, run by tests/test_cache.py in a subprocess (so that a crash is
a failed test, not a dead pytest): ``python _cache_fuzz.py SEED TRIALS WORKDIR``.

It writes a few small modules, imports each once under the import hook to get real cache
entries, then for each trial corrupts one entry in a seeded random way (bit flips,
truncation, extension, another module's entry, well-formed entries with fields of the wrong
type or value, junk, a FIFO, a symlink to /dev/zero, a directory), imports that module again
and checks that it behaves as its own source says, recorded through its own probe, and that
the entry left behind is good again (or the corruption is still there where it cannot be
replaced).  Prints one JSON line of counts; exits non-zero on the first wrong behaviour.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import marshal
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import kcovx
from kcovx.instrument import cache
from kcovx.instrument.unit import Unit

MODULES = 4
SOURCE = '''\
"""Fuzz module {i}."""

MARK = []


def f(x):
    if x > {i}:
        return x * {k}
    elif x < 0:
        return -{k}
    return [y + {i} for y in range(x)]
'''


def expected(i: int, x: int) -> Any:
    k = 10 + i
    if x > i:
        return x * k
    if x < 0:
        return -k
    return [y + i for y in range(x)]


def _entry_names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if not p.name.startswith(".")}


def _import(name: str) -> Any:
    sys.modules.pop(name, None)
    with kcovx.instrument_imports(include=[name]):
        return importlib.import_module(name)


def _retyped(unit: Unit, rng: random.Random) -> Unit:
    """A unit whose entry is well-formed and correctly digested but whose content is wrong."""
    first = unit.blocks[0]
    other = compile("MARK.append('other code')", unit.filename + "x", "exec")
    bad: list[dict[str, Any]] = [
        {"code": "MARK.append('exec of a str')"},
        {"code": other},
        {"module": unit.module + "x"},
        {"probe_name": "__kcovx_pc_other__"},
        {"scopes": [("f", 5)]},
        {"blocks": [dataclasses.replace(first, pc=0)]},
        {"blocks": [dataclasses.replace(first, scope=len(unit.scopes))]},
        {"blocks": [dataclasses.replace(first, extent=(1, 2, 3))]},
    ]
    return dataclasses.replace(unit, **rng.choice(bad))


_WRONG: list[Any] = [None, -1, 2**70, 1.5, "x", b"x", [], (), {}, [("f", -1, 0)], ("a", 1)]


def _reformed(key: str, blob: bytes, rng: random.Random) -> bytes:
    """``blob`` with one payload field (or an item of one) replaced by a value of a wrong
    type, digested again: well-formed bytes that are not a valid entry."""
    data = list(marshal.loads(blob[cache._HEADER :]))
    i = rng.randrange(len(data))
    field = data[i]
    if isinstance(field, list | tuple) and field and rng.random() < 0.5:
        items = list(field)
        items[rng.randrange(len(items))] = rng.choice(_WRONG)
        data[i] = type(field)(items)
    else:
        data[i] = rng.choice(_WRONG)
    payload = marshal.dumps(tuple(data))
    raw_key = bytes.fromhex(key)
    return cache.MAGIC + raw_key + cache._digest(raw_key, payload) + payload


def _corrupt(path: Path, how: str, i: int, ctx: Context, rng: random.Random) -> None:
    """Put a corrupted entry (or something else) at module i's entry name."""
    blob = ctx.good[i]
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if how in ("flip", "flip_header"):
        data = bytearray(blob)
        top = 60 if how == "flip_header" else len(data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(top)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(blob[: rng.randrange(len(blob))])
    elif how == "extend":
        path.write_bytes(blob + rng.randbytes(rng.randint(1, 64)))
    elif how == "swap":
        path.write_bytes(ctx.good[(i + rng.randrange(1, MODULES)) % MODULES])
    elif how == "retype":
        path.write_bytes(cache.entry_bytes(ctx.keys[i], _retyped(ctx.units[i], rng)))
    elif how == "reform":
        path.write_bytes(_reformed(ctx.keys[i], blob, rng))
    elif how == "junk":
        path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "zero":
        path.symlink_to("/dev/zero")
    elif how == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"")


def _check(path: Path, how: str, i: int, ctx: Context) -> str | None:
    """Import module i again; what is wrong with the result, or None."""
    unit = ctx.units[i]
    mod = _import(unit.module)
    for x in (-3, 0, 2, i, i + 1, 50):
        if mod.f(x) != expected(i, x):
            return f"module {i} f({x}) = {mod.f(x)!r}"
    if mod.MARK:
        return f"foreign code ran: {mod.MARK}"
    probe = mod.__dict__.get(unit.probe_name)
    if probe is None or list(probe.pcs) != [b.pc for b in unit.blocks]:
        return f"module {i} records through a wrong probe"
    if how != "dir":  # a directory cannot be replaced: the entry stays missing
        again = cache.read_entry(str(path), ctx.keys[i], unit.module, unit.filename)
        if again is None or again.code.co_filename != unit.filename:
            return "no good entry was stored again"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    return f"temporary files left: {leftovers}" if leftovers else None


@dataclasses.dataclass
class Context:
    keys: list[str]
    good: list[bytes]
    units: list[Unit]


def _setup(seed: int, work: Path) -> tuple[Path, Context]:
    src, d = work / "src", work / "cache"
    src.mkdir()
    os.environ["KCOVX_CACHE_DIR"] = str(d)
    sys.path.insert(0, str(src))
    ctx = Context([], [], [])
    for i in range(MODULES):
        name = f"kcx_fuzz_{seed}_{i}"
        (src / f"{name}.py").write_text(SOURCE.format(i=i, k=10 + i))
        importlib.invalidate_caches()
        before = _entry_names(d) if d.exists() else set()
        mod = _import(name)
        (key,) = _entry_names(d) - before
        ctx.keys.append(key)
        ctx.good.append((d / key).read_bytes())
        ctx.units.append(mod.__spec__.loader.unit(name))
    return d, ctx


HOW = ["flip", "flip_header", "truncate", "extend", "swap", "retype", "junk", "fifo", "zero",
       "dir", "empty", "reform"]  # fmt: skip


def main() -> int:
    seed, trials, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    rng = random.Random(seed)
    d, ctx = _setup(seed, work)
    counts: dict[str, int] = {}
    for trial in range(trials):
        i = rng.randrange(MODULES)
        how = rng.choice(HOW)
        counts[how] = counts.get(how, 0) + 1
        path = d / ctx.keys[i]
        _corrupt(path, how, i, ctx, rng)
        wrong = _check(path, how, i, ctx)
        if wrong is not None:
            print(f"trial {trial} ({how}): {wrong}", flush=True)
            return 1
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
