"""The code cache is untrusted input: whatever is at an entry's name, an import uses a valid
entry of its own module or instruments from source, and never crashes, hangs, or runs code
that is not its own.

Checked on real entries (made by importing under the hook with ``KCOVX_CACHE_DIR`` set): a
flipped bit, another module's entry, a well-digested entry whose code is a string, a FIFO
and a symlink to /dev/zero at the name (in a subprocess, under a timeout), ``python -O`` and
plain Python not sharing entries, stores that leave no temporary file behind, oversized
entries refused unread; and a seeded fuzz of a few hundred corruptions (tests/_cache_fuzz.py,
in a subprocess so that a crash fails the test instead of killing pytest).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _instrument_support import forget, has_probe, uid, write_module

import kcovx
from kcovx.errors import CacheEntryError
from kcovx.instrument import cache, source

SOURCE = '''\
"""Cache test module {n}."""

MARK = []


def f(x):
    if x:
        return {n} * x
    return -{n}
'''


class Env:
    """A source folder on sys.path and a cache folder of the test's own."""

    def __init__(self, tmp_path: Path) -> None:
        self.src = tmp_path / "src"
        self.cache = tmp_path / "cache"
        self.src.mkdir()
        self.names: list[str] = []

    def module(self, n: int) -> str:
        name = f"kcx_cache_{uid()}"
        write_module(self.src, name, SOURCE.format(n=n))
        importlib.invalidate_caches()
        self.names.append(name)
        return name

    def entries(self) -> set[str]:
        if not self.cache.exists():
            return set()
        return {p.name for p in self.cache.iterdir() if not p.name.startswith(".")}

    def load(self, name: str) -> Any:
        """Import ``name`` instrumented (again); the entry it stored, if a new one."""
        forget(name)
        with kcovx.instrument_imports(include=[name]):
            return importlib.import_module(name)

    def entry_of(self, name: str) -> Path:
        before = self.entries()
        self.load(name)
        (key,) = self.entries() - before
        return self.cache / key


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    e = Env(tmp_path)
    monkeypatch.syspath_prepend(str(e.src))
    monkeypatch.setenv("KCOVX_CACHE_DIR", str(e.cache))
    yield e
    forget(*e.names)


def _behaves(mod: Any, n: int) -> None:
    assert (mod.f(0), mod.f(3)) == (-n, 3 * n)
    assert mod.MARK == []
    assert has_probe(vars(mod))


def test_warm_import_uses_the_entry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    name = env.module(2)
    env.entry_of(name)
    rewrites = []
    real = source.rewrite_source
    monkeypatch.setattr(source, "rewrite_source", lambda *a: rewrites.append(a) or real(*a))
    _behaves(env.load(name), 2)
    assert rewrites == []


@pytest.mark.parametrize("where", [0, 5, 30, 60, -1, -40])
def test_a_flipped_bit_falls_back_to_the_source(env: Env, where: int) -> None:
    name = env.module(3)
    entry = env.entry_of(name)
    data = bytearray(entry.read_bytes())
    data[where] ^= 0x10
    entry.write_bytes(bytes(data))
    _behaves(env.load(name), 3)
    assert entry.read_bytes() != bytes(data)  # a good entry was stored again


def test_swapped_entries_never_run_the_other_module(env: Env) -> None:
    a, b = env.module(4), env.module(5)
    entry_a, entry_b = env.entry_of(a), env.entry_of(b)
    blob_a, blob_b = entry_a.read_bytes(), entry_b.read_bytes()
    entry_a.write_bytes(blob_b)
    entry_b.write_bytes(blob_a)
    _behaves(env.load(a), 4)
    _behaves(env.load(b), 5)


def test_an_entry_whose_code_is_a_string_is_not_executed(env: Env) -> None:
    """Nor code compiled from another file (the digest is right: the entry is well-formed)."""
    name = env.module(6)
    entry = env.entry_of(name)
    unit = env.load(name).__spec__.loader.unit(name)
    for code in ("MARK.append('pwned')", compile("MARK.append('pwned')", "other.py", "exec")):
        forged = dataclasses.replace(unit, code=code)
        entry.write_bytes(cache.entry_bytes(entry.name, forged))
        _behaves(env.load(name), 6)


def test_an_entry_with_a_renamed_scope_is_refused(env: Env) -> None:
    """Well-formed, digested again, but a scope no code object of the entry has: its blocks
    would have another identity (other PCs)."""
    name = env.module(7)
    entry = env.entry_of(name)
    unit = env.load(name).__spec__.loader.unit(name)
    scopes = list(unit.scopes)
    scopes[-1] = ("a", scopes[-1][1])
    entry.write_bytes(cache.entry_bytes(entry.name, dataclasses.replace(unit, scopes=scopes)))
    with pytest.raises(CacheEntryError, match="scope 'a'"):
        cache.read_entry(str(entry), entry.name, name, unit.filename)
    mod = env.load(name)
    _behaves(mod, 7)
    assert [b.pc for b in mod.__spec__.loader.unit(name).blocks] == [b.pc for b in unit.blocks]


_NO_HANG = """
import importlib, sys, kcovx
sys.path.insert(0, sys.argv[1])
with kcovx.instrument_imports(include=[sys.argv[2]]):
    mod = importlib.import_module(sys.argv[2])
print(mod.f(0), mod.f(3))
"""


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_no_hang_on_what_is_not_a_regular_file(env: Env, kind: str) -> None:
    name = env.module(7)
    entry = env.entry_of(name)
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)
    elif kind == "dev_zero":
        entry.symlink_to("/dev/zero")
    else:
        entry.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _NO_HANG, str(env.src), name],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["-7", "21"]


_ASSERTS = """\
def f():
    if __debug__:
        return "debug"
    return "optimized"


def g():
    assert False, "asserts are on"
    return "asserts are off"
"""

_RUN = """
import importlib, sys, kcovx
sys.path.insert(0, sys.argv[1])
with kcovx.instrument_imports(include=[sys.argv[2]]):
    mod = importlib.import_module(sys.argv[2])
try:
    g = mod.g()
except AssertionError as e:
    g = str(e)
print(mod.f(), "|", g)
"""


def test_python_dash_o_and_plain_python_do_not_share_entries(env: Env) -> None:
    name = f"kcx_cache_opt_{uid()}"
    write_module(env.src, name, _ASSERTS)
    seen = []
    for flags in ([], ["-O"], [], ["-O"]):
        out = subprocess.run(
            [sys.executable, *flags, "-c", _RUN, str(env.src), name],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        seen.append(out.stdout.strip())
    plain, optimized = "debug | asserts are on", "optimized | asserts are off"
    assert seen == [plain, optimized, plain, optimized]
    assert len(env.entries()) == 2


def test_a_failed_store_leaves_no_temporary_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    name = env.module(8)
    _behaves(env.load(name), 8)
    assert env.cache.exists()
    assert list(env.cache.iterdir()) == []


def test_an_oversized_entry_is_refused_unread(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    name = env.module(9)
    entry = env.entry_of(name)
    monkeypatch.setattr(cache, "MAX_ENTRY", entry.stat().st_size - 1)
    with pytest.raises(CacheEntryError, match="size"):
        cache.read_entry(str(entry), entry.name, name, "")
    _behaves(env.load(name), 9)


@pytest.mark.parametrize("seed", [1, 2])
def test_cache_fuzz(tmp_path: Path, seed: int) -> None:
    driver = Path(__file__).with_name("_cache_fuzz.py")
    out = subprocess.run(
        [sys.executable, str(driver), str(seed), "150", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    counts = json.loads(out.stdout.splitlines()[-1])
    assert sum(counts.values()) == 150
    assert len(counts) >= 8  # most kinds of corruption were tried
