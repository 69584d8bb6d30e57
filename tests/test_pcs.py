"""PCs of instrumented code: the documented encoding, determinism across processes, collision
resolution (inside a module and across modules), the registry, symbolize() and PC tables.

Collisions are forced by narrowing the hash (monkeypatching kcovx.pcs._h32 / unit_hash), so
the resolution rules are exercised for real, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import kcovx
from kcovx import instrument, pcs
from kcovx.instrument.rewrite import rewrite_source

SOURCE = textwrap.dedent(
    """\
    def f(x):
        if x:
            return 1
        return 2

    def g(y):
        return [i for i in range(y) if i % 2]

    def f(x):  # a second code object with the same qualname
        while x:
            x -= 1
        return x
    """
)


def test_encoding_is_the_documented_one() -> None:
    h = int.from_bytes(hashlib.blake2b(b"kcovx-unit\0pkg.mod", digest_size=4).digest(), "little")
    unit = h & 0x7FFFFFFF
    assert pcs.unit_hash("pkg.mod") == unit
    key = b"kcovx-block\0C.m\x000\x003\x000"
    low = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")
    assert pcs.block_pc(unit, "C.m", 0, 3) == (unit << 32) | low
    assert pcs.block_pc(unit, "C.m", 0, 3, salt=1) != pcs.block_pc(unit, "C.m", 0, 3)


def test_unit_hash_is_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcs, "_h32", lambda data: 0)
    assert pcs.unit_hash("anything") == 1
    monkeypatch.setattr(pcs, "_h32", lambda data: 0x80000000)  # bit 31 alone: cleared, then 1
    assert pcs.unit_hash("anything") == 1


def test_python_units_never_have_the_native_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcs, "_h32", lambda data: 0xFFFFFFFF)
    assert pcs.unit_hash("anything") == 0x7FFFFFFF
    assert pcs.block_pc(pcs.unit_hash("anything"), "f", 0, 0) >> 63 == 0


def _blocks_of(module: str, source: str = SOURCE, name: str = "m.py") -> list[pcs.Block]:
    unit = instrument.instrument_source(source, f"/virtual/{name}", module)
    return [b for b, _ in unit.entries()]


def test_pcs_are_nonzero_distinct_and_share_the_unit_half() -> None:
    blocks = _blocks_of("pcs_test_distinct")
    got = [b.pc for b in blocks]
    assert len(got) == len(set(got)) >= 8
    assert all(pc != 0 for pc in got)
    assert {pc >> 32 for pc in got} == {pcs.unit_hash("pcs_test_distinct")}
    # The two functions named f have different occurrences, hence different PCs.
    fs = [b for b in blocks if b.function == "f"]
    assert len(fs) >= 4 and len({b.pc for b in fs}) == len(fs)


def test_same_source_same_pcs_in_another_process(tmp_path: Path) -> None:
    mod = tmp_path / "pcs_same_mod.py"
    mod.write_text(SOURCE)
    script = textwrap.dedent(
        f"""\
        import sys, kcovx
        sys.path.insert(0, {str(tmp_path)!r})
        with kcovx.instrument_imports(include=["pcs_same_mod"]):
            import pcs_same_mod
        for b in kcovx.blocks():
            print(hex(b.pc), b.function, b.start_line, b.start_col, b.end_line, b.end_col)
        """
    )
    outs = []
    for cache in ("", str(tmp_path / "cache")):  # no cache, then a cold and a warm cache
        for _ in range(2 if cache else 1):
            env = {**os.environ, "KCOVX_CACHE_DIR": cache}
            r = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
            )
            outs.append(r.stdout)
    assert outs[0].count("\n") >= 8
    assert outs[0] == outs[1] == outs[2]
    # And in this process: the same PCs.
    here = {hex(b.pc) for b in _blocks_of("pcs_same_mod", name="pcs_same_mod.py")}
    there = {line.split()[0] for line in outs[0].splitlines()}
    assert here == there


def test_reinstrumenting_the_same_source_registers_the_same_blocks() -> None:
    a = _blocks_of("pcs_test_again")
    n = len(kcovx.blocks())
    b = _blocks_of("pcs_test_again")
    assert a == b
    assert len(kcovx.blocks()) == n


def test_collisions_inside_a_module_are_resolved_deterministically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Five bits of block hash: 32 values for ~12 blocks, so several blocks collide.
    real = pcs._h32
    monkeypatch.setattr(pcs, "_h32", lambda data: real(data) & 31)
    first = _blocks_of("pcs_collide_in", name="a.py")
    pcs_first = [b.pc for b in first]
    assert len(pcs_first) == len(set(pcs_first))
    # Deterministic: rewriting the same source (no cache, fresh rewriter) gives the same PCs.
    again = rewrite_source(SOURCE, "/virtual/a.py", "pcs_collide_in", set())
    assert [b.pc for b in again.blocks] == pcs_first
    unit = pcs.unit_hash("pcs_collide_in")
    moved = [
        b for b in again.blocks if b.pc != pcs.block_pc(unit, b.function, b.occurrence, b.ordinal)
    ]
    assert moved, "the narrowed hash should have forced at least one collision"
    # Salted PCs are still in the module's unit.
    assert all(pc >> 32 == pcs.unit_hash("pcs_collide_in") for pc in pcs_first)


def test_collisions_across_modules_move_the_later_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pcs, "unit_hash", lambda module: 0x7E57)
    monkeypatch.setenv("KCOVX_CACHE_DIR", str(tmp_path / "cache"))
    first = _blocks_of("pcs_collide_a", name="a.py")
    second = _blocks_of("pcs_collide_b", name="b.py")  # same qualnames, same unit: collide
    a, b = {x.pc for x in first}, {x.pc for x in second}
    assert len(first) == len(a) and len(second) == len(b)
    assert not a & b
    for block in first + second:
        assert kcovx.symbolize(block.pc) == block
    # The first module kept its unsalted PCs; the moved one was not cached.
    assert [x.pc for x in first] == [
        x.pc for x in rewrite_source(SOURCE, "/virtual/a.py", "pcs_collide_a", set()).blocks
    ]
    cached = os.listdir(tmp_path / "cache")
    assert len(cached) == 1


def test_symbolize_errors() -> None:
    with pytest.raises(LookupError, match="unknown PC 0x1"):
        kcovx.symbolize(1)
    with pytest.raises(TypeError, match="must be an int"):
        kcovx.symbolize("0x1")  # type: ignore[arg-type]


def test_block_fields() -> None:
    src = "def h(a):\n    if a:\n        x = 1\n        y = 2\n    return a\n"
    blocks = {b.start_line: b for b in _blocks_of("pcs_test_fields", src, "h.py")}
    body = blocks[3]
    assert body.function == "h" and body.file == "/virtual/h.py"
    # Lines and columns 1-based; the end column is one past the block's last byte.
    assert (body.start_line, body.start_col, body.end_line, body.end_col) == (3, 9, 4, 14)
    assert pcs.format_block(body) == f"{body.pc:#x}\n/virtual/h.py:3.9,4.14"


def test_pcs_table_roundtrip_and_errors(tmp_path: Path) -> None:
    blocks = _blocks_of("pcs_test_table")
    path = tmp_path / "t.pcs"
    assert kcovx.write_pcs_table(path, blocks) == len(blocks)
    loaded = kcovx.load_pcs_table(path)
    assert sorted(loaded.values()) == sorted(blocks)
    everything = tmp_path / "all.pcs"
    kcovx.write_pcs_table(everything)
    assert set(kcovx.load_pcs_table(everything)) >= {b.pc for b in blocks}
    bad = tmp_path / "bad.pcs"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a kcovx PC table"):
        kcovx.load_pcs_table(bad)
    bad.write_text(json.dumps({"format": "kcovx-pcs-table", "version": 99, "blocks": []}))
    with pytest.raises(ValueError, match="version 99"):
        kcovx.load_pcs_table(bad)
    bad.write_text(json.dumps({"format": "kcovx-pcs-table", "version": 1, "blocks": [[1, 2]]}))
    with pytest.raises(ValueError, match="malformed"):
        kcovx.load_pcs_table(bad)


# -- writing only over regular files ---------------------------------------------------------------


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(set(os.listdir(folder)) - keep)


def test_write_pcs_table_never_replaces_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "t.pcs"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO"):
        kcovx.write_pcs_table(fifo, _blocks_of("pcs_test_fifo"))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _leftovers(tmp_path, {"t.pcs"}) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_write_pcs_table_never_replaces_a_device_node(tmp_path: Path) -> None:
    # A node of our own (the null device's numbers) in a temporary folder: the machine's
    # /dev/null is never touched.
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(OSError, match="device"):
        kcovx.write_pcs_table(node, _blocks_of("pcs_test_node"))
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert _leftovers(tmp_path, {"null"}) == []


def test_write_pcs_table_never_replaces_a_directory_or_symlink(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("d", "link"):
        with pytest.raises(OSError, match="not a regular file"):
            kcovx.write_pcs_table(tmp_path / name, [])
    assert (tmp_path / "d").is_dir() and (tmp_path / "link").is_symlink()
    assert (tmp_path / "target").read_text() == "keep"
    assert _leftovers(tmp_path, {"d", "link", "target"}) == []


def test_write_pcs_table_leaves_no_temporary_file_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.pcs"
    path.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        kcovx.write_pcs_table(path, _blocks_of("pcs_test_fail"))
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert _leftovers(tmp_path, {"t.pcs"}) == []
    # A regular file is replaced, a new one created.
    assert kcovx.write_pcs_table(path, []) == 0
    assert kcovx.load_pcs_table(path) == {}
    assert kcovx.write_pcs_table(tmp_path / "new.pcs", []) == 0
    assert _leftovers(tmp_path, {"t.pcs", "new.pcs"}) == []


# -- reading tables as untrusted input -------------------------------------------------------------


def test_load_pcs_table_errors_are_typed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcs"
    bad.write_text("[" * 100_000)
    with pytest.raises(kcovx.PCsTableError, match="nested too deeply"):
        kcovx.load_pcs_table(bad)
    with pytest.raises(kcovx.UnknownPCError):
        kcovx.symbolize(1)
    assert issubclass(kcovx.UnknownPCError, LookupError)
    assert issubclass(kcovx.PCsTableError, ValueError)
    with pytest.raises(OSError, match="device"):
        kcovx.load_pcs_table("/dev/zero")  # opened read-only without blocking, then refused


def test_pcs_table_fuzz(tmp_path: Path) -> None:
    """Seeded corruption of a real table: every result is a table of Blocks or a
    PCsTableError, never another exception, a hang or a large allocation."""
    blocks = _blocks_of("pcs_test_fuzz")
    good = tmp_path / "good.pcs"
    kcovx.write_pcs_table(good, blocks)
    data = good.read_bytes()
    rng = random.Random(7)
    path = tmp_path / "t.pcs"
    deadline = time.monotonic() + 20
    outcomes = {"table": 0, "error": 0}
    trials = 0
    while trials < 400 and time.monotonic() < deadline:
        trials += 1
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            i = rng.randrange(len(buf))
            if op == 0:
                buf[i] = rng.randrange(256)
            elif op == 1:
                buf[i] = buf[i] ^ (1 << rng.randrange(8))
            elif op == 2:
                del buf[i : i + rng.randint(1, 20)]
            else:
                snippet = rng.choice([b"1e999", b"NaN", b"[[[[", b'"\\ud800"', b"-1", b"\xff"])
                buf[i:i] = snippet
        path.write_bytes(bytes(buf))
        try:
            table = kcovx.load_pcs_table(path)
        except kcovx.PCsTableError:
            outcomes["error"] += 1
            continue
        assert all(isinstance(b, kcovx.Block) and b.pc == pc for pc, b in table.items())
        for b in table.values():
            assert 0 <= b.pc < 2**64 and all(type(n) is int for n in b[3:])
        outcomes["table"] += 1
    assert trials >= 100
    assert outcomes["error"] > 0


# -- version 2: native objects ---------------------------------------------------------------------


def test_pcs_table_version_2_keeps_native_objects(tmp_path: Path) -> None:
    from kcovx.sancov import NativeObject, native_unit

    blocks = _blocks_of("pcs_test_objects")
    objs = [
        NativeObject(
            "/lib/a.so", "0123" * 5, 0x7F0000001000, native_unit(bytes.fromhex("0123" * 5))
        ),
        NativeObject("/lib/\udcff b.so", "", 0, native_unit(None, "/lib/\udcff b.so")),
    ]
    path = tmp_path / "t.pcs"
    assert kcovx.write_pcs_table(path, blocks, objects=objs) == len(blocks)
    doc = json.loads(path.read_text(encoding="ascii"))
    assert doc["version"] == pcs.TABLE_VERSION == 2
    table = pcs.read_pcs_table(path)
    assert table.objects == objs
    assert table.blocks == kcovx.load_pcs_table(path) == {b.pc: b for b in blocks}
    # By default, the objects this process recorded from.
    kcovx.write_pcs_table(path, blocks)
    assert pcs.read_pcs_table(path).objects == kcovx.sancov.objects()


def test_pcs_table_version_1_still_reads(tmp_path: Path) -> None:
    blocks = _blocks_of("pcs_test_v1")
    rows = [[f"{b.pc:#018x}", *b[1:]] for b in blocks]
    path = tmp_path / "v1.pcs"
    path.write_text(json.dumps({"format": "kcovx-pcs-table", "version": 1, "blocks": rows}))
    assert kcovx.load_pcs_table(path) == {b.pc: b for b in blocks}
    assert pcs.read_pcs_table(path).objects == []
    # A version 1 table with objects does not have them read; version 2 needs them.
    for version, want in ((True, "version True"), (2, "no list of at most")):
        path.write_text(
            json.dumps({"format": "kcovx-pcs-table", "version": version, "blocks": rows})
        )
        with pytest.raises(kcovx.PCsTableError, match=want):
            kcovx.load_pcs_table(path)
