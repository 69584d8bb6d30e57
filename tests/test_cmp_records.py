"""Comparison records from instrumented Python code (``cmp=True``): what records, with which
encoding, at which PC, and where the records go.

Covers: int operands at the smallest width holding both (signed or unsigned, modulo 2**(8w)),
KCOV_CMP_CONST with the literal as arg1 on either side, ints outside 64 bits and other types
recording nothing; str (UTF-8, non-ASCII, lone surrogates), bytes and bytearray operands as a
header and 8-byte chunks, bounded at STR_MAX bytes, mixed kinds recording nothing; chained
comparisons (each link once, short-circuit kept), ``in``/``not in`` against literal and
non-literal displays and str literals, ``match`` literal and value patterns; each record's PC
symbolizing to its operator's span; records only in a linux area in KCOV_TRACE_CMP mode of
the calling thread (not TRACE_PC, not gvisor, not other threads); clipping at the area's end;
the stash surviving operands that raise, generators suspended between operands, recursion and
overflow; ``kcovx.comparisons``/``records`` on untrusted areas; ``Comparisons`` refusing bad
tables; the cache keeping cmp units apart and intact; ``instrument_func(cmp=True)`` forms;
``kcovx run --cmp``.  Semantics (results, exceptions, tracebacks, line events the same as plain
code) are test_cmp_semantics.py's and test_instrument.py's.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _instrument_support import forget, uid
from _kcovx_support import Devices, in_thread, python

import kcovx
from kcovx import KCOV_CMP_CONST, KCOV_CMP_SIZE, KCOV_TRACE_CMP, Comparison, _area
from kcovx.errors import InstrumentError
from kcovx.records import STR_MAX, comparisons, records

C = KCOV_CMP_CONST
S = [KCOV_CMP_SIZE(n) for n in range(4)]

SOURCE = """
import enum

class Color(enum.IntEnum):
    RED = 1
    GREEN = 0x4B434F56

def eq_lit(x):
    return x == 0x4B434F56

def lit_eq(x):
    return 300 == x

def lt(a, b):
    return a < b

def ne_neg(x):
    return x != -2

def eq_str(s):
    return s == "KCOVMAGIC"

def eq_bytes(b):
    return b[:4] == b"KCOV"

def eq_any(a, b):
    return a == b

def chain(x, n):
    return 0 <= x < n

def chain3(a, b, c):
    return a < b < c

def in_tuple(x):
    return x in (1, 300, "s")

def not_in_list(x):
    return x not in [7, 70000]

def in_text(s):
    return s in "hello kcov"

def in_display(x, a, b):
    return x in (a, b)

def in_dict(x):
    return x in {"k": 1, "v": 2}

def in_set(x):
    return x in {5, 6}

def matcher(x):
    match x:
        case 1 | 2:
            return "small"
        case 0x4B434F56:
            return "magic"
        case Color.GREEN:
            return "green"
        case "text":
            return "text"
        case _:
            return "other"

def is_none(x):
    return x is None

def float_cmp(x):
    return x == 1.5

def spans(a, b):
    return ((a) ==
            (b)), a not   in (b,), a in [b]
"""


@pytest.fixture
def load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], types.ModuleType]]:
    """load(stem, source): a fresh module of that source, imported with cmp=True."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(stem: str, source: str) -> types.ModuleType:
        name = f"kcx_{stem}_{uid()}"
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        with kcovx.instrument_imports(include=[name], cmp=True):
            return importlib.import_module(name)

    yield make
    forget(*names)


Load = Callable[[str, str], types.ModuleType]


@pytest.fixture
def mod(load: Load) -> types.ModuleType:
    return load("cmprec", SOURCE)


@pytest.fixture
def cmp_area(devices: Devices) -> Any:
    """This thread's area, enabled in KCOV_TRACE_CMP mode."""
    return devices.enabled("linux", size=1 << 14, mode=KCOV_TRACE_CMP)[1]


@pytest.fixture
def raw(cmp_area: Any) -> Callable[..., list[tuple[int, int, int, int]]]:
    """raw(fn, *args): the records fn makes (this thread, KCOV_TRACE_CMP), undecoded."""

    def run(fn: Callable[..., Any], *args: Any) -> list[tuple[int, int, int, int]]:
        cmp_area[0] = 0
        fn(*args)
        out = records(cmp_area)
        cmp_area[0] = 0
        return out

    return run


@pytest.fixture
def rec(raw: Callable[..., list[tuple[int, int, int, int]]]) -> Callable[..., list[Comparison]]:
    """rec(fn, *args): fn's comparisons, decoded."""

    def run(fn: Callable[..., Any], *args: Any) -> list[Comparison]:
        recs = raw(fn, *args)
        return comparisons([len(recs), *(w for r in recs for w in r)])

    return run


def ints(cs: list[Comparison]) -> list[tuple[bool, Any, Any, int]]:
    return [(c.const, c.arg1, c.arg2, c.size) for c in cs]


Raw = Callable[..., list[tuple[int, int, int, int]]]
Rec = Callable[..., list[Comparison]]


# -- ints ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "size", "arg2"),
    [
        (5, 4, 5),  # the literal needs 4 bytes: both are recorded at 4
        (-1, 4, 0xFFFFFFFF),
        (2**40, 8, 2**40),
        (2**64 - 1, 8, 2**64 - 1),
        (-(2**63), 8, 2**63),
        (True, 4, 1),
    ],
)
def test_int_literal_comparison_is_one_const_record(
    mod: types.ModuleType, rec: Rec, x: int, size: int, arg2: int
) -> None:
    assert ints(rec(mod.eq_lit, x)) == [(True, 0x4B434F56, arg2, size)]


def test_literal_on_the_left_is_still_arg1(mod: types.ModuleType, rec: Rec) -> None:
    assert ints(rec(mod.lit_eq, 7)) == [(True, 300, 7, 2)]
    assert ints(rec(mod.ne_neg, 3)) == [(True, 0xFE, 3, 1)]  # -2 as one byte


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        (1, 2, (1, 2, 1)),
        (-1, 200, (0xFF, 200, 1)),
        (255, 256, (255, 256, 2)),
        (-129, 0, (0xFF7F, 0, 2)),
        (65536, 1, (65536, 1, 4)),
        (2**32, 0, (2**32, 0, 8)),
        (-(2**31) - 1, 0, (2**64 - 2**31 - 1, 0, 8)),
    ],
)
def test_non_literal_ints_take_the_smallest_width_holding_both(
    mod: types.ModuleType, rec: Rec, a: int, b: int, want: tuple[int, int, int]
) -> None:
    assert ints(rec(mod.lt, a, b)) == [(False, *want)]


def test_types_that_give_no_record(mod: types.ModuleType, rec: Rec) -> None:
    assert rec(mod.lt, 2**64, 1) == []  # beyond 64 bits
    assert rec(mod.lt, -(2**63) - 1, 1) == []
    assert rec(mod.lt, 1.5, 2.5) == []
    assert rec(mod.eq_any, "a", b"a") == []  # str with bytes
    assert rec(mod.eq_any, 1, "1") == []
    assert rec(mod.eq_any, None, None) == []
    assert rec(mod.is_none, 3) == []  # is / is not record nothing
    assert rec(mod.float_cmp, 3) == []  # a literal that cannot record: left alone


def test_int_subclasses_record_their_int_value_without_running_code(
    mod: types.ModuleType, rec: Rec
) -> None:
    class Loud(int):
        def __index__(self) -> int:
            raise AssertionError("kcovx must not call __index__")

    assert ints(rec(mod.lt, Loud(3), mod.Color.RED)) == [(False, 3, 1, 1)]


# -- str and bytes -----------------------------------------------------------------------------


def test_str_literal_comparison_recovers_both_prefixes(
    mod: types.ModuleType, rec: Rec, raw: Raw
) -> None:
    (c,) = rec(mod.eq_str, "KCOVx")
    assert (c.const, c.arg1, c.arg2, c.size) == (True, b"KCOVMAGIC", b"KCOVx", 0)
    # On the wire: a header {SIZE(3)|CONST, 9, 5}, then an 8-byte and a 1-byte chunk.
    words = raw(mod.eq_str, "KCOVx")
    assert [(t, a1, a2) for t, a1, a2, _ in words] == [
        (S[3] | C, 9, 5),
        (S[3] | C, int.from_bytes(b"KCOVMAGI", "little"), int.from_bytes(b"KCOVx", "little")),
        (S[0] | C, ord("C"), 0),
    ]
    assert len({pc for *_, pc in words}) == 1


def test_short_bytes_chunks_are_as_wide_as_needed(
    mod: types.ModuleType, rec: Rec, raw: Raw
) -> None:
    words = raw(mod.eq_bytes, b"GIF89a")
    assert [(t, a1, a2) for t, a1, a2, _ in words] == [
        (S[3] | C, 4, 4),
        (S[2] | C, int.from_bytes(b"KCOV", "little"), int.from_bytes(b"GIF8", "little")),
    ]
    (c,) = rec(mod.eq_bytes, bytearray(b"KC"))
    assert (c.arg1, c.arg2) == (b"KCOV", b"KC")


@pytest.mark.parametrize(
    "s",
    ["", "a", "é", "日本語テキスト", "\U0001f600 emoji", "lone \ud800 surrogate", "x" * 100],
)
def test_str_operands_are_their_utf8_prefix(mod: types.ModuleType, rec: Rec, s: str) -> None:
    (c,) = rec(mod.eq_any, s, "k")
    assert c.arg1 == s.encode("utf-8", "surrogatepass")[:STR_MAX]
    assert c.arg2 == b"k"


def test_bytes_beyond_the_bound_are_cut(mod: types.ModuleType, rec: Rec, raw: Raw) -> None:
    a, b = bytes(range(100)), b"\0" * 40
    (c,) = rec(mod.eq_any, a, b)
    assert (c.arg1, c.arg2) == (a[:STR_MAX], b[:STR_MAX])
    assert len(raw(mod.eq_any, a, b)) == 1 + STR_MAX // 8


# -- chains, in, match -------------------------------------------------------------------------


def test_chain_records_each_link_once_and_keeps_short_circuit(
    mod: types.ModuleType, rec: Rec
) -> None:
    assert ints(rec(mod.chain, 5, 10)) == [(True, 0, 5, 1), (False, 5, 10, 1)]
    assert ints(rec(mod.chain, -5, 10)) == [(True, 0, 0xFB, 1)]  # 0 <= -5 is false: stop
    assert ints(rec(mod.chain3, 1, 2, 3)) == [(False, 1, 2, 1), (False, 2, 3, 1)]
    assert ints(rec(mod.chain3, 3, 2, 1)) == [(False, 3, 2, 1)]
    pcs = [c.pc for c in rec(mod.chain3, 1, 2, 3)]
    assert len(set(pcs)) == 2  # one PC per link


def test_in_literal_container_records_each_item(mod: types.ModuleType, rec: Rec) -> None:
    cs = rec(mod.in_tuple, 300)
    assert ints(cs[:2]) == [(True, 1, 300, 2), (True, 300, 300, 2)]
    assert rec(mod.in_tuple, "s")[-1][1:] == (True, b"s", b"s", 0)
    assert ints(rec(mod.not_in_list, 7)) == [(True, 7, 7, 1), (True, 70000, 7, 4)]
    assert [c.arg1 for c in rec(mod.in_dict, "v")] == [b"k", b"v"]
    assert sorted(c.arg1 for c in rec(mod.in_set, 9)) == [5, 6]
    (c,) = rec(mod.in_text, "kc")
    assert (c.const, c.arg1, c.arg2) == (True, b"hello kcov", b"kc")


def test_in_non_literal_display_records_each_item_value(mod: types.ModuleType, rec: Rec) -> None:
    assert ints(rec(mod.in_display, 3, 70000, -1)) == [(False, 3, 70000, 4), (False, 3, 0xFF, 1)]


def test_match_records_literal_patterns_at_once_and_value_patterns_as_tried(
    mod: types.ModuleType, rec: Rec
) -> None:
    cs = rec(mod.matcher, 9)
    lits = [(c.arg1, c.arg2) for c in cs if c.const]
    assert lits == [(1, 9), (2, 9), (0x4B434F56, 9)]  # "text" with an int: no record
    assert [(c.arg1, c.arg2) for c in cs if not c.const] == [(9, 0x4B434F56)]  # Color.GREEN
    # a literal match stops before the value pattern is evaluated
    assert [c for c in rec(mod.matcher, 1) if not c.const] == []
    assert mod.matcher(0x4B434F56) == "magic" and mod.matcher(mod.Color.GREEN) == "magic"


def test_match_str_subject_against_str_pattern(mod: types.ModuleType, rec: Rec) -> None:
    cs = [c for c in rec(mod.matcher, "tex") if c.size == 0]
    assert [(c.const, c.arg1, c.arg2) for c in cs] == [(True, b"text", b"tex")]


# -- PCs -------------------------------------------------------------------------------------


def _text(block: kcovx.Block) -> str:
    lines = Path(block.file).read_bytes().splitlines()
    if block.start_line == block.end_line:
        return lines[block.start_line - 1][block.start_col - 1 : block.end_col - 1].decode()
    first = lines[block.start_line - 1][block.start_col - 1 :]
    return (first + b"\n" + lines[block.end_line - 1][: block.end_col - 1]).decode()


def test_each_pc_symbolizes_to_its_operator(mod: types.ModuleType, rec: Rec) -> None:
    ops = [_text(kcovx.symbolize(c.pc)) for c in rec(mod.spans, 1, 2)]
    assert ops == ["==", "not   in", "in"]
    for fn, args, op in ((mod.chain, (1, 5), "<="), (mod.eq_str, ("x",), "==")):
        assert _text(kcovx.symbolize(rec(fn, *args)[0].pc)) == op
    sites = {b.pc for b in kcovx.pcs.comparison_sites()}
    assert {c.pc for c in rec(mod.chain3, 1, 2, 3)} <= sites
    assert not sites & {b.pc for b in kcovx.blocks()}  # sites are not blocks
    m = rec(mod.matcher, 9)
    assert _text(kcovx.symbolize(m[0].pc)) == "1"
    assert _text(kcovx.symbolize(m[-1].pc)) == "Color.GREEN"


def test_pcs_are_the_same_in_another_process(mod: types.ModuleType, rec: Rec) -> None:
    mine = [c.pc for c in rec(mod.chain3, 1, 2, 3)]
    code = textwrap.dedent(
        f"""
        import importlib, sys, kcovx
        sys.path.insert(0, {os.path.dirname(mod.__file__ or "")!r})
        with kcovx.instrument_imports(include=[{mod.__name__!r}], cmp=True):
            m = importlib.import_module({mod.__name__!r})
        kc = kcovx.open("linux"); kc.init_trace(1024); a = kc.mmap()
        kc.enable(kcovx.KCOV_TRACE_CMP)
        m.chain3(1, 2, 3)
        print([c.pc for c in kcovx.comparisons(a)])
        """
    )
    out = python("-c", code, env={**os.environ, "KCOVX_CACHE_DIR": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(mine)


# -- where records go ---------------------------------------------------------------------------


def test_trace_pc_mode_records_blocks_not_comparisons(
    mod: types.ModuleType, devices: Devices
) -> None:
    _, area = devices.enabled("linux", size=4096)
    mod.eq_lit(5)
    pcs = [int(x) for x in area[1 : int(area[0]) + 1]]
    assert pcs and all(kcovx.symbolize(pc) in kcovx.blocks() for pc in pcs)


def test_gvisor_profile_and_no_device_record_no_comparison(
    mod: types.ModuleType, devices: Devices
) -> None:
    assert mod.eq_lit(0x4B434F56) is True  # nothing enabled: the operand passes through
    dev, area = devices.enabled("gvisor", size=4096)
    mod.eq_lit(5)
    dev.flush()
    assert all(kcovx.symbolize(int(pc)) in kcovx.blocks() for pc in area[1 : int(area[0]) + 1])


def test_other_threads_record_into_their_own_area(
    mod: types.ModuleType, rec: Rec, cmp_area: Any
) -> None:
    def other() -> list[tuple[int, int, int, int]]:
        with kcovx.open("linux") as kc:
            kc.init_trace(1024)
            area = kc.mmap()
            kc.enable(KCOV_TRACE_CMP)
            mod.lt(7, 8)
            kc.disable()
            return records(area)

    cmp_area[0] = 0
    assert [(a1, a2) for _, a1, a2, _ in in_thread(other)] == [(7, 8)]
    assert int(cmp_area[0]) == 0  # nothing of the other thread's here
    assert ints(rec(mod.lt, 1, 2)) == [(False, 1, 2, 1)]
    mine = cmp_area
    t = threading.Thread(target=mod.lt, args=(3, 4))  # no device: records nowhere
    t.start()
    t.join()
    assert int(mine[0]) == 0


def test_records_stop_at_the_end_of_the_area(mod: types.ModuleType, devices: Devices) -> None:
    _, area = devices.enabled("linux", size=512, mode=KCOV_TRACE_CMP)  # 127 records fit
    area[0] = 125
    mod.eq_any("a" * 20, "b" * 20)  # a header and 3 chunks: only 2 records fit
    assert int(area[0]) == 127
    assert all(c.size for c in comparisons(area))  # the cut str comparison decodes to nothing
    area[0] = 124
    for i in range(5):
        mod.lt(i, 9)
    assert int(area[0]) == 127
    assert [c.arg1 for c in comparisons(area)[124:]] == [0, 1, 2]


# -- the stash -------------------------------------------------------------------------------


STASH_SOURCE = """
def boom():
    raise KeyError("x")

def left_raises(a):
    try:
        return a == boom()
    except KeyError:
        return "caught"

def gen(a):
    got = a == (yield)
    yield got

def deep(n):
    if n == 0:
        return 0
    return n + 0 == deep(n - 1) + n

def nest(n):
    return n if n > 40 else (n == nest(n + 1))
"""


def test_stash_survives_raising_operands_generators_recursion_and_overflow(
    load: Load, rec: Rec
) -> None:
    m = load("stash", STASH_SOURCE)
    assert rec(m.left_raises, 5) == []  # the left operand was stashed, the right raised

    def run_gen() -> object:
        g = m.gen(3)
        next(g)
        return g.send(3)

    assert ints(rec(run_gen)) == [(False, 3, 3, 1)]
    cs = rec(m.deep, 5)
    # n == 0 (const) for each level, then deep's == at each level, innermost first
    assert [c.arg1 for c in cs if not c.const] == [1, 2, 3, 4, 5]
    # 41 left operands stashed at once: the oldest are dropped, the newest still pair up
    assert m.nest(0) is True  # (40 == 41) is False, 39 == False is False, ... 0 == False
    cs = rec(m.nest, 0)
    assert (False, 40, 41, 1) in ints(cs)


# -- the decoder on untrusted areas ------------------------------------------------------------


def test_records_and_comparisons_on_bad_areas() -> None:
    assert records([]) == []
    assert records([5]) == []  # a count past the area's end
    assert records([2, 1, 2, 3, 4, 5, 6]) == [(1, 2, 3, 4)]
    assert comparisons([1, 99, 1, 2, 7]) == []  # a type kcov never writes: skipped
    # a header whose chunks have another PC is not ours: dropped, the rest still decodes
    words = [3, S[3], 4, 4, 10, S[2], 1, 2, 11, S[0], 5, 6, 12]
    assert comparisons(words) == [Comparison(12, False, 5, 6, 1)]
    # native PCs (bit 63) are never taken for a header
    assert comparisons([1, S[3], 1, 2, 1 << 63]) == [Comparison(1 << 63, False, 1, 2, 8)]


def test_comparisons_table_refuses_bad_actions() -> None:
    with pytest.raises(TypeError):
        _area.Comparisons([(0, 0, 0)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _area.Comparisons([(0, 0, 0, 0, 0, [])])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _area.Comparisons([(0, 0, 0, 0, 0, ((1.5, 3),))])
    with pytest.raises(ValueError):
        _area.Comparisons([(3, 0, 0, 0, 0, ())])
    with pytest.raises(ValueError):
        _area.Comparisons([(0, 0, 0, 1, 0, ())])  # items compared with nothing
    with pytest.raises(ValueError):
        _area.Comparisons([(0, 0, 0, 0, 0, ((2**64, 3),))])
    with pytest.raises(OverflowError):
        _area.Comparisons([(0, -1, 0, 0, 0, ())])
    with pytest.raises(ValueError):
        _area.Comparisons([(0, 0, 0, 0, 0, tuple((i, 1) for i in range(257)))])
    t = _area.Comparisons([(0, 0, 0, 0, 0, ((5, 9),))])
    assert t.cmp(7, "x") == "x" and t.cmp(-1, 3) == 3  # out of range: only the operand back
    assert len(t) == 1 and t.actions == ((0, 0, 0, 0, 0, ((5, 9),)),)


# -- ways in ---------------------------------------------------------------------------------


def test_instrument_func_cmp_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rec: Rec
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"kcx_cmpfunc_{uid()}"
    (tmp_path / f"{name}.py").write_text(
        "def f(x):\n    return x == 7\n\ndef g(x):\n    return x > 9\n"
    )
    m = importlib.import_module(name)
    try:
        assert kcovx.instrument_func(cmp=True)(m.f) is m.f  # the decorator form
        assert ints(rec(m.f, 3)) == [(True, 7, 3, 1)]
        kcovx.instrument_func(m.g)
        with pytest.raises(InstrumentError, match="without cmp"):
            kcovx.instrument_func(m.g, cmp=True)
        with pytest.raises(TypeError):
            kcovx.instrument_func(m.f, cmp=1)  # type: ignore[call-overload]
        assert kcovx.instrument_func(m.f, cmp=True) is m.f  # idempotent
    finally:
        forget(name)


def test_cmp_units_are_cached_apart(tmp_path: Path) -> None:
    src = tmp_path / "kcx_cached_cmp.py"
    src.write_text("def f(x):\n    return x == 12345\n")
    code = textwrap.dedent(
        f"""
        import sys, kcovx
        sys.path.insert(0, {str(tmp_path)!r})
        cmp = sys.argv[1] == "1"
        with kcovx.instrument_imports(include=["kcx_cached_cmp"], cmp=cmp):
            import kcx_cached_cmp as m
        kc = kcovx.open("linux"); kc.init_trace(1024); a = kc.mmap()
        kc.enable(kcovx.KCOV_TRACE_CMP)
        m.f(3)
        print(kcovx.comparisons(a))
        """
    )
    env = {**os.environ, "KCOVX_CACHE_DIR": str(tmp_path / "cache")}
    outs = [python("-c", code, arg, env=env) for arg in ("0", "1", "1", "0")]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    plain, cmp1, cmp2, plain2 = (o.stdout.strip() for o in outs)
    assert plain == plain2 == "[]"
    assert cmp1 == cmp2 and "12345" in cmp1  # the second came from the cache
    assert len(os.listdir(tmp_path / "cache")) == 2


def test_kcovx_run_cmp_writes_records(tmp_path: Path) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text("import sys\nx = len(sys.argv)\nprint(x == 0x4B434F56, 'a' + 'b' * x < 'ac')\n")
    cover, table = tmp_path / "c.cover", tmp_path / "t.json"
    cmd = [sys.executable, "-m", "kcovx", "run", "--profile", "linux", "--cmp"]
    out = subprocess.run(
        [*cmd, "--output", str(cover), "--pcs-table", str(table), str(prog)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "3 comparison records" in out.stderr  # an int record, a str header and a chunk
    data = cover.read_bytes()
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]
    cs = comparisons(words)
    assert [(c.const, c.arg1, c.arg2) for c in cs] == [
        (True, 0x4B434F56, 1),
        (True, b"ac", b"ab"),  # the literal is arg1
    ]
    table_blocks = kcovx.load_pcs_table(table)
    assert all(c.pc in table_blocks for c in cs)
    bad = subprocess.run(
        [sys.executable, "-m", "kcovx", "run", "--cmp", str(prog)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and "--profile linux" in bad.stderr


def test_pc_tables_keep_sites_apart_from_blocks(
    mod: types.ModuleType, rec: Rec, tmp_path: Path
) -> None:
    pcs = {c.pc for c in rec(mod.chain3, 1, 2, 3)}
    path = tmp_path / "t.json"
    n = kcovx.write_pcs_table(path)
    table = kcovx.pcs.read_pcs_table(path)
    assert pcs <= table.sites and pcs <= set(table.blocks)
    assert table.sites == {b.pc for b in kcovx.pcs.comparison_sites()}
    assert n == len(table.blocks) == len(kcovx.blocks()) + len(table.sites)
    assert not table.sites & {b.pc for b in kcovx.blocks()}
    # a table of blocks only (as older kcovx wrote) reads with no sites
    kcovx.write_pcs_table(path, kcovx.blocks())
    assert kcovx.pcs.read_pcs_table(path).sites == frozenset()


CLASS_SOURCE = """
class Spy(dict):
    def __getitem__(self, k):
        if k.startswith("__kcovx"):
            raise AssertionError(f"the class namespace was asked for {k}")
        return super().__getitem__(k)

class Meta(type):
    @classmethod
    def __prepare__(mcs, name, bases):
        return Spy()

class K:
    V = 7

def make(x):
    class C(metaclass=Meta):
        a = x == 5
        b = x in (1, 2)
        match x:
            case 5:
                c = 1
            case K.V:
                c = 2
            case _:
                c = 3
    return C
"""


def test_class_bodies_find_the_recorders_as_globals(load: Load, rec: Rec) -> None:
    m = load("cmpcls", CLASS_SOURCE)
    c = m.make(7)
    assert (c.a, c.b, c.c) == (False, False, 2)
    cs = rec(m.make, 7)
    assert (True, 5, 7, 1) in ints(cs) and (False, 7, 7, 1) in ints(cs)


def test_list_display_in_the_middle_of_a_chain_records_its_items(load: Load, rec: Rec) -> None:
    m = load("midlist", "def f(x, a):\n    return x in [a, 2] == [a, 2]\n")
    assert m.f(2, 300) is True  # the list stays a list: it is compared again
    assert ints(rec(m.f, 2, 300)) == [(False, 2, 300, 2), (False, 2, 2, 1)]
