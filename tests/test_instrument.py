"""Instrumentation of Python code (kcovx.instrument_func / instrument_module / instrument_imports):
instrumented code behaves exactly as the same code plain, and its blocks record the right PCs.

Behaviour is compared on twins: the same source written to two files, one imported plain and
one under ``instrument_imports``, every comparison also with ``cmp=True`` (tests ``[cmp...]``:
comparison operands wrapped in recording calls; comparison-heavy code:
test_cmp_semantics.py).  Both must give the same results and exceptions, the same
tracebacks (lines and columns), the same ``sys.settrace`` event sequence (also over batteries
of generated snippets that put probes in every kind of position), the same coverage.py lines
and arcs, the same code-object structure (names, flags, variables, line sets; 3.12+
comprehensions stay inlined), docstrings, annotations (also ``from __future__ import
annotations``), class namespaces (a ``__prepare__`` mapping never sees the probe), source and
pickling, and the depth at which RecursionError is raised.  The corpus is
tests/instrument_corpus.py.  (The entry points and the import hook: test_instrument_entry.py;
code under other globals and at import: test_instrument_globals.py; deep nesting:
test_instrument_deep.py; the code cache: test_cache.py.)  Recording: a linux device gets the
blocks in execution order with repeats, a gvisor one each covered block once per flush; PCs
are deterministic across processes, and threads record only where the profile says.
"""

from __future__ import annotations

import dataclasses
import dis
import functools
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import pickle
import subprocess
import sys
import threading
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import coverage
import pytest
from _instrument_support import (
    CMP_PREFIXES,
    CORPUS,
    HEADER,
    HEADER_FUTURE,
    Twins,
    cases,
    code_objects,
    forget,
    has_probe,
    instrumented,
    is_cmp,
    is_kcovx_name,
    linux,
    load_twins,
    loads_cmp,
    outcome,
    probe_of,
    take,
    twins_factory,
    uid,
    write_module,
)
from _kcovx_support import TIMEOUT, Devices

import kcovx
from kcovx import instrument

PROBE = instrument.PROBE


# ---------------------------------------------------------------------------------------------
# The corpus (tests/instrument_corpus.py): one module exercising every construct the rewrite
# touches.  Functions whose name starts with "case_" are called by the tests (no arguments).


def _probe_indices(code: types.CodeType) -> list[int]:
    """The indices ``code``'s probes pass: the constant loaded right after a probe name."""
    out = []
    ins = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "PUSH_NULL")]
    for a, b in itertools.pairwise(ins):
        if isinstance(a.argval, str) and a.argval.startswith(PROBE) and b.opname == "LOAD_CONST":
            out.append(b.argval)
    return out


# Every plain-vs-instrumented comparison runs twice: instrumented as usual, and with
# cmp=True (comparison operands wrapped in recording calls; ids ``cmp``).
CMP_PARAMS = [pytest.param(False, id="nocmp"), pytest.param(True, id="cmp")]


@pytest.fixture(params=CMP_PARAMS)
def cmp(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
def twins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmp: bool
) -> Iterator[Callable[..., Twins]]:
    """Factory: twins(stem, source) -> Twins imported from tmp_path (forgotten afterwards),
    instrumented with and without cmp=True."""
    for make in twins_factory(tmp_path, monkeypatch):
        yield functools.partial(make, cmp=cmp)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Twins]]:
    folder = tmp_path_factory.mktemp("corpus")
    sys.path.insert(0, str(folder))
    made: dict[str, Twins] = {}
    try:
        made["plain"] = load_twins(folder, "corpus", HEADER + CORPUS)
        made["future"] = load_twins(folder, "corpusf", HEADER_FUTURE + CORPUS)
        made["cmp"] = load_twins(folder, "corpusc", HEADER + CORPUS, cmp=True)
        made["cmp-future"] = load_twins(folder, "corpusfc", HEADER_FUTURE + CORPUS, cmp=True)
        yield made
    finally:
        sys.path.remove(str(folder))
        forget(*(m.__name__ for pair in made.values() for m in pair))


@pytest.fixture(params=["plain", "future", "cmp", "cmp-future"])
def corpus(request: pytest.FixtureRequest, corpora: dict[str, Twins]) -> Twins:
    return corpora[request.param]


def _simple(value: Any) -> Any:
    if value is None or type(value) in (int, str, bool, float):
        return value
    return type(value).__name__


def _traced(fn: Callable[[], Any], filename: str) -> tuple[list[tuple[Any, ...]], Any]:
    """Run fn under sys.settrace; the events of frames of ``filename`` and fn's outcome."""
    events: list[tuple[Any, ...]] = []

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        entry: tuple[Any, ...] = (event, frame.f_code.co_qualname, frame.f_lineno)
        if event == "exception":
            entry += (arg[0].__name__,)
        elif event == "return":
            entry += (_simple(arg),)
        events.append(entry)
        return local

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != filename:
            return None
        return local(frame, event, arg)

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = outcome(fn)
    finally:
        sys.settrace(old)
    return events, result


_iter_code = code_objects


def _lines(code: types.CodeType) -> set[int]:
    return {line for _, _, line in code.co_lines() if line is not None}


# ---------------------------------------------------------------------------------------------
# Behaviour: plain and instrumented twins are indistinguishable


def test_corpus_is_instrumented_everywhere(corpus: Twins) -> None:
    plain, inst = corpus
    for name in cases(inst):
        assert instrumented(getattr(inst, name)), name
        assert not instrumented(getattr(plain, name)), name
    assert instrumented(inst.Tool.s) and instrumented(inst.Outer.Inner.Deepest.where)
    assert instrumented(inst.Tool.__dict__["v"].fset)
    assert instrumented(inst.decorated.__wrapped__) and instrumented(inst.decorated)
    assert instrumented(inst.cached.__wrapped__) and instrumented(inst.managed.__wrapped__)
    # with cmp=True (only), the comparisons make comparison calls
    comparing = [n for n in cases(inst) if n.startswith("case_compare_")]
    assert len(comparing) >= 6
    for fn in [*(getattr(inst, n) for n in comparing), inst.raiser, inst.matcher, inst.fib]:
        assert loads_cmp(fn.__code__) == is_cmp(inst), fn
    assert not any(loads_cmp(getattr(plain, n).__code__) for n in cases(plain))


def test_results_and_exceptions_are_the_same(corpus: Twins) -> None:
    plain, inst = corpus
    assert cases(plain) == cases(inst) and len(cases(inst)) > 30
    raised = set()
    for name in cases(inst):
        expected = outcome(getattr(plain, name))
        got = outcome(getattr(inst, name))
        if name == "case_raise_recursion":
            _check_recursion_error(got, expected)
        else:
            assert got == expected, name
        if got[0] == "raised":
            raised.add(name)
    # the cases that raise do raise, the others do not
    assert raised == {n for n in cases(inst) if n.startswith("case_raise_")}
    # module-level code ran the same branches
    assert (inst.MODE, inst.HAVE) == (plain.MODE, plain.HAVE) == ("module-level else", False)


# A probe is a subscript of a C object, not a call: on 3.11 a call of a builtin would count a
# level against the recursion limit and make instrumented code hit it one frame earlier.
# Instrumented code reaches the limit exactly where plain code does, on every version.
RECURSION_SHORTFALL = 0


def _check_recursion_error(got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert got[:2] == expected[:2] == ("raised", "RecursionError")
    assert got == expected


def _max_depth(fn: Callable[[int], Any]) -> int:
    lo, hi = 1, sys.getrecursionlimit() + 10
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            fn(mid)
            lo = mid
        except RecursionError:
            hi = mid - 1
    return lo


def test_recursion_depth_and_recursion_error(corpus: Twins) -> None:
    plain, inst = corpus
    assert inst.fib(15) == plain.fib(15) == 610
    assert inst.deep(500) == plain.deep(500) == 500
    depth = _max_depth(plain.deep)
    assert sys.getrecursionlimit() - 50 < depth < sys.getrecursionlimit()
    assert _max_depth(inst.deep) == depth - RECURSION_SHORTFALL
    _check_recursion_error(outcome(inst.case_raise_recursion), outcome(plain.case_raise_recursion))


def _frames(exc: BaseException, filename: str) -> list[tuple[Any, ...]]:
    out = []
    for f in traceback.extract_tb(exc.__traceback__):
        if f.filename == filename:
            out.append((f.name, f.lineno, f.end_lineno, f.colno, f.end_colno, f.line))
    return out


def _reraise(exc: BaseException) -> None:
    raise exc


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError(f"{fn} did not raise")


@pytest.mark.parametrize(
    "case",
    [
        "key", "attr", "zero", "nested", "lambda", "gen", "group", "assert", "compare",
        "unhashable", "pattern", "recursion",
    ],
)  # fmt: skip
def test_tracebacks_are_the_same(corpus: Twins, case: str) -> None:
    plain, inst = corpus
    e_plain = _raised(getattr(plain, f"case_raise_{case}"))
    e_inst = _raised(getattr(inst, f"case_raise_{case}"))
    assert type(e_inst) is type(e_plain)
    frames = _frames(e_inst, inst.__file__)
    if case == "recursion":
        _check_recursion_error(
            outcome(lambda: _reraise(e_inst)), outcome(lambda: _reraise(e_plain))
        )
        plain_frames = _frames(e_plain, plain.__file__)
        if not RECURSION_SHORTFALL:
            assert frames == plain_frames
            return
        # 3.11: raised by the probe of a frame at most one level up; the same frames above
        # it, and that one on the same line (at the probe's columns: the whole statement)
        inner = len(frames) - 1
        assert len(plain_frames) - len(frames) in {0, 1}
        assert frames[:inner] == plain_frames[:inner]
        assert frames[inner][:3] == plain_frames[inner][:3]
        assert frames[inner][5] == plain_frames[inner][5]
        return
    assert str(e_inst) == str(e_plain)
    assert frames == _frames(e_plain, plain.__file__)
    assert frames and all(f[3] is not None for f in frames)  # columns are known
    text_plain = "".join(traceback.format_exception(e_plain)).replace(plain.__file__, "F")
    text_inst = "".join(traceback.format_exception(e_inst)).replace(inst.__file__, "F")
    assert text_inst == text_plain
    assert "__kcovx" not in text_inst


def test_settrace_events_are_the_same(corpus: Twins) -> None:
    plain, inst = corpus
    for name in cases(inst):
        if name == "case_raise_recursion":
            continue  # a thousand identical frames: covered by its traceback
        ev_plain, out_plain = _traced(getattr(plain, name), plain.__file__)
        ev_inst, out_inst = _traced(getattr(inst, name), inst.__file__)
        assert out_inst == out_plain, name
        assert ev_inst == ev_plain, name
        assert any(e[0] == "line" for e in ev_inst), name


def test_settrace_events_of_module_and_class_bodies_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmp: bool
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    events = {}
    for kind in ("plain", "inst"):
        name = f"kcx_import_trace_{uid()}_{kind}"
        path = write_module(tmp_path, name, HEADER + CORPUS)
        importlib.invalidate_caches()
        if kind == "plain":
            ev, out = _traced(lambda n=name: importlib.import_module(n), str(path))
        else:
            with kcovx.instrument_imports(include=[name], cmp=cmp):
                ev, out = _traced(lambda n=name: importlib.import_module(n), str(path))
            assert instrumented(out[1].case_straight)
            assert loads_cmp(out[1].case_compare_chain.__code__) == cmp
        assert out[0] == "ok"
        events[kind] = ev
        del sys.modules[name]
    assert events["inst"] == events["plain"]
    scopes = {e[1] for e in events["inst"]}
    assert {"<module>", "Point", "Color", "Outer.Inner.Deepest", "Tool"} <= scopes


# ---------------------------------------------------------------------------------------------
# sys.settrace batteries: every position a probe can take, with calls into Python code (after
# which CPython 3.12 starts extra line events at jump targets), multi-line operands, tested
# and used values, joins, folded constants, and statements whose first instruction is not on
# their first line or has no position at all.

BATTERY_HEAD = """\
import contextlib, types
def f(v):
    return v
def g(v):
    return not v
def deco(fn):
    return fn
@types.coroutine
def tick():
    yield 1
class CM:
    def __enter__(self): return f(self)
    def __exit__(self, *a): return f(False)
    async def __aenter__(self): await tick(); return 1
    async def __aexit__(self, *a): return False
async def agen(n):
    for i in range(n):
        yield f(i)
def drive(c):
    try:
        while True: c.send(None)
    except StopIteration as e:
        return e.value
G = 0
def case():
    """


def _battery(source: str, monkeypatch: pytest.MonkeyPatch, cmp: bool = False) -> bool:
    """Run case() of ``source`` plain and instrumented (``cmp``: with cmp=True) under
    sys.settrace; same events.  Whether the instrumented code makes comparison calls."""
    monkeypatch.setenv("KCOVX_CACHE_DIR", "")  # thousands of throwaway sources
    filename = f"/virtual/kcx_battery_{uid()}.py"
    plain: dict[str, Any] = {}
    exec(compile(source, filename, "exec", dont_inherit=True), plain)
    unit = instrument.instrument_source(source, filename, "kcx_battery", register=False, cmp=cmp)
    assert has_probe(unit.code.co_names)
    inst: dict[str, Any] = {}
    unit.install(inst)
    exec(unit.code, inst)
    events_plain = _traced(plain["case"], filename)
    events_inst = _traced(inst["case"], filename)
    assert events_inst == events_plain, source
    assert any(e[0] == "line" for e in events_inst[0])
    return loads_cmp(unit.code)


OPERANDS = {
    "call": "f({v})",
    "const": "{v}",
    "multiline": "(f(\n        {v}))",
    "compare": "f({v}) == 1",
    "multiline-compare": "(f({v})\n        == 1)",
    "not": "not g({v})",
}
CONTEXTS = [
    "x = {A} and {B}\n    return x",
    "x = {A} or {B} or {C}\n    return x",
    "return {A} and {B}",
    "x = ({A}\n         and {B})\n    return x",
    "x = {B} if {A} else {C}\n    return x",
    "return {B} if {A} else {C}",
    "x = ({B}\n         if {A}\n         else {C})\n    return x",
    "return [{B} for _ in range(2)]",
    "return [{B} for _ in range(2) if {A}]",
    "return [_ for _ in range(2) if {A} and {B}]",
    "return {{{A}: {B} for _ in range(2)}}",
    "return sum({B} for _ in range(2) if {A})",
    "h = lambda: {B}\n    return h()",
    "h = lambda: {A} or {B}\n    return h()",
    "if {A} and {B}:\n        return 1\n    return 2",
    "if {A} or {B}:\n        return 1\n    return 2",
    "if not ({A} or {B}):\n        return 1\n    return 2",
    "if ({A}\n            and {B}):\n        return 1\n    return 2",
    "n = 0\n    while {A} and n < 2:\n        n += 1\n    return n",
    "if ({B} if {A} else {C}):\n        return 1\n    return 2",
    "x = ({A} and {B}) or {C}\n    return x",
    "x = {A} and ({B} if {C} else {A})\n    return x",
    "x = f({A} or {B})\n    return x",
    "x = [{A} or {B}, {C}]\n    return x",
    "try:\n        assert {A}, {B}\n    except AssertionError as e:\n        return e.args\n"
    "    return 0",
    "match {A}:\n        case 1 if {B}:\n            return 1\n"
    "        case _:\n            return 2",
    "return {A} and {B} and {C}",
    "x = {A} + ({B} or {C})\n    return x",
]
OPERAND_MIXES = [
    ("call", "call", "call"),
    ("const", "call", "multiline"),
    ("multiline", "compare", "not"),
    ("compare", "not", "call"),
    ("not", "multiline", "compare"),
    ("call", "multiline-compare", "const"),
    ("multiline-compare", "const", "multiline-compare"),
]


@pytest.mark.parametrize("context", range(len(CONTEXTS)))
def test_settrace_battery_expressions(
    context: int, monkeypatch: pytest.MonkeyPatch, cmp: bool
) -> None:
    template = CONTEXTS[context]
    compared = []
    for mix in OPERAND_MIXES:
        for values in itertools.product((0, 1), repeat=3):
            ops = {
                name: OPERANDS[kind].format(v=v)
                for name, kind, v in zip("ABC", mix, values, strict=True)
            }
            compared.append(
                _battery(BATTERY_HEAD + template.format(**ops) + "\n", monkeypatch, cmp)
            )
    assert any(compared) == cmp  # the mixes with comparisons made comparison calls


STATEMENTS = [
    "x = (\n        f({a})\n    )\n    return x",
    "global G\n    G = f({a})\n    return G",
    "y: int\n    return f({a})",
    '"""doc"""',
    "...",
    'msg = "v=%s" % (f({a}),)\n    return msg',
    'return "m%s" % (f({a}),)',
    'msg = "v=%s %s" % (f({a}), {b})\n    if f({b}):\n        msg = "w%s" % (msg,)\n    return msg',
    'if f({a}):\n        return "%s-%s" % (f({b}), 1)\n    raise ValueError("e%s" % (f({b}),))',
    "@deco\n    @deco\n    def inner(y=f({a})):\n        return y\n    return inner()",
    "if f({a}):\n        x = 1\n    elif f({b}):\n        x = 2\n    else:\n        x = 3\n"
    "    return x",
    "for i in range(f({a}) + 1):\n        if i == f({b}):\n            break\n    else:\n"
    '        return "else"\n    return i',
    "n = 0\n    while n < f(2):\n        n += 1\n        if f({a}):\n            continue\n"
    "    else:\n        n += 10\n    return n",
    "try:\n        if f({a}):\n            raise ValueError(f({b}))\n"
    "    except ValueError as e:\n        return e.args\n    else:\n"
    '        return "else"\n    finally:\n        f({b})',
    "with CM() as c, contextlib.suppress(KeyError):\n        if f({a}):\n"
    "            raise KeyError\n        x = c\n    return f({b})",
    'match f({a}), f({b}):\n        case (1, 1):\n            return "11"\n'
    '        case (x, y) if f(x) or f(y):\n            return "x"\n        case _:\n'
    '            return "other"',
    "return [(i, j) for i in range(2) if f({a}) or i\n"
    "            for j in range(f(2)) if j != f({b})]",
    'return {{k: (v if f({a}) else -v) for k, v in zip("ab", (1, 2)) if k}}',
    "return sum((y := f(x)) * 2 for x in range(3) if f({a}) or x), {a}",
    "if (n := f({a})) and f({b}):\n        return n\n    return -1",
    "return (lambda x=f({a}): x and f({b}))()",
    "async def co():\n        async with CM() as c:\n            t = 0\n"
    "            async for v in agen(f(2) + {a}):\n                t += v if f({b}) else -v\n"
    "        return t, c\n    return drive(co())",
    "def gen():\n        x = yield f({a})\n        while x:\n            x = yield (f({b}) or x)\n"
    "    gg = gen()\n    return [next(gg), gg.send(1), gg.send(0) if {b} else None]",
    'class K:\n        """doc"""\n        a = f({a}) or 5\n        if a:\n'
    "            b = [i for i in range(2) if f(i)]\n        def m(self):\n"
    "            return self.a\n    return K().m(), K.b if {a} or {b} else 0",
    'assert f({a}) or f({b}), ("msg", f({a}))\n    return 1',
    "x = f({a}) < f(1) <= f({b})\n    if f({a}) < f(1) <= f({b}):\n        return x\n"
    "    return not x",
    "return f\"{{f({a}) or 'z'}}-{{f({b}) if {a} else 'q'}}\"",
    "x = [\n        f({a}),\n        f({b})\n        and f({a}),\n    ]\n    return x",
    "if not f({a}):\n        return (\n            f({b})\n            or f({a})\n        )\n"
    '    return {{\n        "k": f({b}) or None,\n    }}',
    'try:\n        raise ExceptionGroup("g", [ValueError(1), TypeError(2)])\n'
    "    except* ValueError:\n        x = f({a})\n    except* TypeError:\n"
    "        x = f({b})\n    return 0",
    "x = f({a})\n    while x:\n        x = x - 1\n        if not x: break\n    return x",
    "return (f({a}) if f({b}) else\n            f({b}) if f({a}) else\n"
    "            (f(1) +\n             f(2)))",
]


@pytest.mark.parametrize("statement", range(len(STATEMENTS)))
def test_settrace_battery_statements(
    statement: int, monkeypatch: pytest.MonkeyPatch, cmp: bool
) -> None:
    compared = []
    for a, b in itertools.product((0, 1), repeat=2):
        body = STATEMENTS[statement].format(a=a, b=b)
        compared.append(_battery(BATTERY_HEAD + body + "\n", monkeypatch, cmp))
    if not cmp:
        assert not any(compared)


def test_code_objects_keep_their_structure(corpus: Twins) -> None:
    """Every code object keeps its names, flags, variables and line set; instrumentation
    adds no code object (3.12+ comprehensions stay inlined) and no line."""
    inst = corpus.inst
    source = Path(inst.__file__).read_bytes()
    plain_code = compile(source, inst.__file__, "exec", dont_inherit=True)
    unit = instrument.instrument_source(
        source, inst.__file__, inst.__name__, register=False, cmp=is_cmp(inst)
    )
    assert loads_cmp(unit.code) == is_cmp(inst)
    pairs = list(zip(_iter_code(plain_code), _iter_code(unit.code), strict=True))
    assert len(pairs) > 60
    comps = [p.co_qualname for p, _ in pairs if p.co_name.endswith("comp>")]
    assert bool(comps) == (sys.version_info < (3, 12))
    for p, i in pairs:
        where = p.co_qualname
        for attr in (
            "co_qualname", "co_name", "co_firstlineno", "co_argcount", "co_posonlyargcount",
            "co_kwonlyargcount", "co_flags", "co_freevars", "co_cellvars",
        ):  # fmt: skip
            assert getattr(i, attr) == getattr(p, attr), (where, attr)
        varnames = i.co_varnames
        if any(is_kcovx_name(v) for v in varnames):
            # 3.12+ gives every name used in a comprehension inlined in a class body a hidden
            # fast-local slot (plain code does it too, e.g. for len below); no namespace access
            local = where in ("make_class.<locals>.Local", "Compared")
            assert sys.version_info >= (3, 12) and local, where
            assert p.co_varnames  # (plain: the comprehension's variable and ``len``)
            varnames = tuple(v for v in varnames if not is_kcovx_name(v))
        assert varnames == p.co_varnames, where
        assert _lines(i) == _lines(p), where
        names = {n for n in i.co_names if not is_kcovx_name(n)}
        if any(n.startswith(CMP_PREFIXES[1]) for n in i.co_names):
            names -= {"v"} - set(p.co_names)  # a match value pattern reads ``held(...).v``
        assert names == set(p.co_names), where
        assert has_probe(i.co_names), where  # every scope records its entry
        if p.co_consts and isinstance(p.co_consts[0], str) and not p.co_name.startswith("<"):
            assert i.co_consts[0] == p.co_consts[0], where  # the docstring


def test_docstrings_source_and_signatures_are_kept(corpus: Twins) -> None:
    plain, inst = corpus
    assert inst.__doc__ == plain.__doc__ == "Corpus docstring."
    for path in ("straight", "gen", "only_doc", "Tool", "make_class", "Tool.v", "matcher"):
        p: Any = plain
        i: Any = inst
        for part in path.split("."):
            p, i = getattr(p, part), getattr(i, part)
        assert inspect.getdoc(i) == inspect.getdoc(p), path
        target_i = i.fget if isinstance(i, property) else i
        target_p = p.fget if isinstance(p, property) else p
        assert inspect.getsource(target_i) == inspect.getsource(target_p), path
        assert PROBE not in inspect.getsource(target_i)
        if callable(target_i) and not isinstance(target_i, type):
            assert inspect.signature(target_i) == inspect.signature(target_p), path
    assert inspect.isgeneratorfunction(inst.gen) and inspect.iscoroutinefunction(inst.coro)
    assert inspect.isasyncgenfunction(inst.agen)
    assert inst.straight.__code__.co_consts[0] == "Docstring of straight."


def test_annotations_are_the_same(corpus: Twins) -> None:
    plain, inst = corpus
    assert inst.annotated.__annotations__ == plain.annotated.__annotations__
    assert inst.Annotated.__annotations__ == plain.Annotated.__annotations__
    assert inst.__annotations__ == plain.__annotations__
    if inst.__name__.startswith("kcx_corpusf"):
        # from __future__ import annotations: the source text is the value
        assert inst.annotated.__annotations__["key"] == "int or str"
        assert inst.annotated.__annotations__["return"] == "list[int] if True else None"
        assert inst.__annotations__["MODULE_VAR"] == "int or None"
        hints = {
            mod: {k: v.__qualname__ for k, v in typing.get_type_hints(mod.Annotated).items()}
            for mod in (plain, inst)
        }
        assert hints[inst] == hints[plain] == {"a": "int", "b": "str", "c": "Point"}
    else:
        assert inst.annotated.__annotations__["key"] is int
    for value in [*inst.annotated.__annotations__.values(), *inst.__annotations__.values()]:
        assert PROBE not in str(value)


def test_pickling_by_reference(corpus: Twins) -> None:
    for mod in corpus:  # both, so that both classes get the same pickle caches
        for obj in (mod.straight, mod.gen, mod.Tool.s, mod.Tool.m, mod.Outer.Inner.Deepest):
            assert pickle.loads(pickle.dumps(obj)) is obj
        item = mod.Item("x", 2, ["a"])
        assert pickle.loads(pickle.dumps(item)) == item
        assert pickle.loads(pickle.dumps(mod.Color.BLUE)) is mod.Color.BLUE
        bound = mod.Tool(3).m
        assert pickle.loads(pickle.dumps(bound))(1) == 4
    by_name = pickle.dumps(corpus.plain.straight, protocol=0).replace(b"_plain", b"_inst")
    assert pickle.dumps(corpus.inst.straight, protocol=0) == by_name


def test_enum_dataclass_and_classes_never_hold_the_probe(corpus: Twins) -> None:
    plain, inst = corpus
    for cls in ("Point", "Color", "Item", "Outer", "Tool", "Annotated", "AsyncCM"):
        assert list(vars(getattr(inst, cls))) == list(vars(getattr(plain, cls))), cls
        assert probe_of(vars(getattr(inst, cls))) is None
    assert list(inst.Color.__members__) == ["RED", "GREEN", "BLUE"]
    assert [f.name for f in dataclasses.fields(inst.Item)] == ["name", "qty", "tags"]
    # dataclass-made methods are not instrumented (no source) but work
    assert inst.Item.__init__.__code__.co_filename != inst.__file__
    local = inst.make_class(True)
    assert not has_probe(local[-1]) and local == plain.make_class(True)
    assert inst.Outer.Inner.Deepest.__qualname__ == "Outer.Inner.Deepest"


METACLASS_SOURCE = '''\
class Recorder(dict):
    def __init__(self):
        super().__init__()
        self.log = []

    def __getitem__(self, key):
        self.log.append(("get", key))
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.log.append(("set", key))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.log.append(("del", key))
        super().__delitem__(key)

    def __missing__(self, key):
        self.log.append(("missing", key))
        if key.startswith("auto_"):
            self[key] = key.upper()
            return self[key]
        raise KeyError(key)


class Meta(type):
    @classmethod
    def __prepare__(mcs, name, bases, **kw):
        return Recorder()

    def __new__(mcs, name, bases, ns, **kw):
        cls = super().__new__(mcs, name, bases, dict(ns))
        cls.log = list(ns.log)
        cls.keys = list(ns)
        return cls


def build(flag):
    class Rec(metaclass=Meta):
        """Rec doc."""

        first = auto_one
        if flag and auto_two == "AUTO_TWO":
            second = [i for i in range(3) if i != 0]
        else:
            second = None
        third = (lambda: len("xyz"))()
        for k in range(2):
            fourth = k
        else:
            del k
        try:
            fifth = auto_five
        finally:
            sixth = print is not None and fifth in ("AUTO_FIVE", auto_one)

        def method(self):
            return (self.first, auto_never if False else 1)

        class Nested(metaclass=Meta):
            value = auto_nested

    return Rec


def build_plain():
    class Bare(metaclass=Meta):
        pass

    return Bare
'''


def test_prepare_namespace_never_sees_the_probe(twins: Callable[..., Twins]) -> None:
    plain, inst = twins("meta", METACLASS_SOURCE)
    for flag in (True, False):
        cp, ci = plain.build(flag), inst.build(flag)
        assert ci.log == cp.log and ci.keys == cp.keys, flag
        assert ci.Nested.log == cp.Nested.log and ci.Nested.keys == cp.Nested.keys
        for entry in [*ci.log, *ci.Nested.log]:
            assert not has_probe(entry)
        assert not has_probe(ci.keys) and probe_of(vars(ci)) is None
        assert ("missing", "auto_one") in ci.log and ci.first == "AUTO_ONE"
        assert ci().method() == ("AUTO_ONE", 1)
    bare_p, bare_i = plain.build_plain(), inst.build_plain()
    assert bare_i.log == bare_p.log and bare_i.keys == bare_p.keys
    assert instrumented(inst.build)


def test_coroutine_objects_behave_the_same(corpus: Twins) -> None:
    plain, inst = corpus
    for mod in (plain, inst):
        c = mod.coro(2)
        assert c.send(None) == "tick"
        with pytest.raises(ZeroDivisionError):
            c.throw(ZeroDivisionError())
        a = mod.agen(3)
        assert mod.run(a.__anext__()) == (1, 0)
        assert mod.run(a.aclose()) == (0, None)
    g_plain, g_inst = plain.gen(3), inst.gen(3)
    assert g_inst.gi_frame.f_lineno == g_plain.gi_frame.f_lineno
    next(g_plain)
    next(g_inst)
    assert g_inst.gi_frame.f_lineno == g_plain.gi_frame.f_lineno


# ---------------------------------------------------------------------------------------------
# coverage.py, and recording while another tracer runs


def _coverage_cores() -> list[Any]:
    cores: list[Any] = ["ctrace", "pytrace"]
    if sys.version_info >= (3, 12):
        cores.append("sysmon")
    return cores


@pytest.mark.parametrize("core", _coverage_cores())
def test_coverage_py_reports_the_same_lines_and_arcs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: str, cmp: bool
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("COVERAGE_CORE", raising=False)
    branch = core != "sysmon"  # sysmon measures branches only on 3.14+
    cov = coverage.Coverage(
        data_file=None, config_file=False, branch=branch, include=[str(tmp_path / "*.py")]
    )
    cov.set_option("run:core", core)
    cov.start()
    try:
        plain, inst = load_twins(tmp_path, "cov", HEADER + CORPUS, cmp)
        for name in cases(inst):
            if name != "case_raise_recursion":
                assert outcome(getattr(inst, name)) == outcome(getattr(plain, name))
    finally:
        cov.stop()
    forget(plain.__name__, inst.__name__)
    data = cov.get_data()
    lines_plain = data.lines(plain.__file__)
    lines_inst = data.lines(inst.__file__)
    assert lines_plain and len(lines_plain) > 300
    assert sorted(lines_inst or []) == sorted(lines_plain)
    if branch:
        assert sorted(data.arcs(inst.__file__) or []) == sorted(data.arcs(plain.__file__) or [])
    _, statements, _, missing, _ = cov.analysis2(inst.__file__)
    _, statements_p, _, missing_p, _ = cov.analysis2(plain.__file__)
    assert (statements, missing) == (statements_p, missing_p)


# ---------------------------------------------------------------------------------------------
# Recording: the blocks of a known function, in order


RECORDED = """\
def loop(n):
    total = 0                              # @entry
    for i in range(n):
        if i % 2:                          # @body
            total += i                     # @odd
        else:
            total -= 1                     # @even
    return total                           # @after


def cond(flag):
    x = 1                                  # @c-entry
    if flag:
        x = 2                              # @c-taken
    return x                               # @c-join


def pick(xs):
    return [x * 2 for x in xs if x > 1]    # @pick


def logic(a, b):
    return a and b                         # @logic


def spin(n):
    for _ in range(n):
        pass                               # @spin
    return n
"""


def _marker_line(source: str, marker: str) -> int:
    for number, line in enumerate(source.splitlines(), 1):
        if line.rstrip().endswith(f"# @{marker}"):
            return number
    raise AssertionError(marker)


@pytest.fixture
def rec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"kcx_rec_{uid()}"
    write_module(tmp_path, name, RECORDED)
    importlib.invalidate_caches()
    with kcovx.instrument_imports(include=[name]):
        mod = importlib.import_module(name)
    yield mod
    del sys.modules[name]


def _pcs_by_line(mod: types.ModuleType, function: str) -> dict[int, int]:
    out = {}
    for b in kcovx.blocks():
        if b.file == mod.__file__ and b.function == function:
            assert b.start_line not in out, "one block per line in this source"
            out[b.start_line] = b.pc
    return out


def test_linux_records_blocks_in_order_with_repeats(
    rec: types.ModuleType, devices: Devices
) -> None:
    line = functools.partial(_marker_line, RECORDED)
    pcs = _pcs_by_line(rec, "loop")
    names = ("entry", "body", "odd", "even", "after")
    assert set(pcs) == {line(m) for m in names}  # exactly these blocks
    entry, body, odd, even, after = (pcs[line(m)] for m in names)
    _, area = linux(devices)
    assert rec.loop(4) == 2
    got = take(area)
    assert got == [entry, body, even, body, odd, body, even, body, odd, after]
    for pc in got:
        block = kcovx.symbolize(pc)
        assert block.function == "loop" and block.file == rec.__file__
    assert [kcovx.symbolize(pc).start_line for pc in got[:3]] == [
        line("entry"),
        line("body"),
        line("even"),
    ]
    # untaken branches record nothing
    c = _pcs_by_line(rec, "cond")
    assert rec.cond(False) == 1
    assert take(area) == [c[line("c-entry")], c[line("c-join")]]
    assert rec.cond(True) == 2
    assert take(area) == [c[line("c-entry")], c[line("c-taken")], c[line("c-join")]]
    assert rec.loop(0) == 0
    assert take(area) == [entry, after]


def test_linux_records_expression_blocks(rec: types.ModuleType, devices: Devices) -> None:
    text = RECORDED.splitlines()
    pick_line = _marker_line(RECORDED, "pick")
    col_cond = text[pick_line - 1].index("x > 1") + 1
    col_elt = text[pick_line - 1].index("x * 2") + 1
    blocks = [b for b in kcovx.blocks() if b.file == rec.__file__ and b.start_line == pick_line]
    by_col = {b.start_col: b for b in blocks}
    assert set(by_col) == {5, col_cond, col_elt}  # entry (the return), condition, element
    entry, cond, elt = by_col[5].pc, by_col[col_cond].pc, by_col[col_elt].pc
    assert by_col[5].function == "pick"
    assert by_col[col_elt].function == by_col[col_cond].function == "pick.<locals>.<listcomp>"
    _, area = linux(devices)
    assert rec.pick([1, 2, 3]) == [4, 6]
    assert take(area) == [entry, cond, cond, elt, cond, elt]
    logic_line = _marker_line(RECORDED, "logic")
    lb = {
        b.start_col: b.pc
        for b in kcovx.blocks()
        if b.file == rec.__file__ and b.start_line == logic_line
    }
    b_col = text[logic_line - 1].index("and b") + len("and ") + 1
    assert set(lb) == {5, b_col}
    assert rec.logic(0, 1) == 0
    assert take(area) == [lb[5]]
    assert rec.logic(1, 0) == 0
    assert take(area) == [lb[5], lb[b_col]]


def test_gvisor_records_each_covered_block_once_per_flush(
    rec: types.ModuleType, devices: Devices
) -> None:
    line = functools.partial(_marker_line, RECORDED)
    pcs = _pcs_by_line(rec, "loop")
    entry, body, odd, even, after = (
        pcs[line(m)] for m in ("entry", "body", "odd", "even", "after")
    )
    dev = devices.open()
    dev.init_trace(4096)
    area = dev.mmap()
    dev.enable()
    for _ in range(2):
        area[0] = 0
        rec.loop(5)
        dev.flush()
        assert take(area) == [entry, body, even, odd, after]  # in first-covered order
    rec.loop(1)
    dev.flush()
    assert take(area) == [entry, body, even, after]
    dev.disable()


def test_recording_is_the_same_under_settrace_and_coverage(
    rec: types.ModuleType, devices: Devices, tmp_path: Path
) -> None:
    _, area = linux(devices)
    rec.loop(6)
    rec.pick([3, 0])
    expected = take(area)
    events, _ = _traced(lambda: (rec.loop(6), rec.pick([3, 0])), rec.__file__)
    assert take(area) == expected
    assert any(e[0] == "line" for e in events)
    cov = coverage.Coverage(data_file=None, config_file=False, include=[rec.__file__])
    cov.start()
    try:
        rec.loop(6)
        rec.pick([3, 0])
    finally:
        cov.stop()
    assert take(area) == expected
    assert _marker_line(RECORDED, "odd") in (cov.get_data().lines(rec.__file__) or [])


# ---------------------------------------------------------------------------------------------
# PCs: deterministic, non-zero, distinct


_PRINT_BLOCKS = """
import importlib, json, sys
import kcovx
sys.path.insert(0, sys.argv[1])
with kcovx.instrument_imports(include=[sys.argv[2]]):
    mod = importlib.import_module(sys.argv[2])
print(json.dumps([list(b) for b in kcovx.blocks() if b.file == mod.__file__]))
"""


def test_pcs_are_deterministic_across_processes(tmp_path: Path) -> None:
    name = f"kcx_det_{uid()}"
    write_module(tmp_path, name, HEADER + CORPUS)
    runs = []
    for cache in ("", str(tmp_path / "cache"), str(tmp_path / "cache")):  # off, cold, warm
        env = dict(os.environ, KCOVX_CACHE_DIR=cache)
        out = subprocess.run(
            [sys.executable, "-c", _PRINT_BLOCKS, str(tmp_path), name],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        runs.append([tuple(b) for b in json.loads(out.stdout)])
    assert runs[0] == runs[1] == runs[2]
    blocks = runs[0]
    pcs = [b[0] for b in blocks]
    assert len(blocks) > 200
    assert len(set(pcs)) == len(pcs) and all(0 < pc < 2**64 for pc in pcs)
    # ... and this process, importing the same file under the same name, agrees
    sys.path.insert(0, str(tmp_path))
    try:
        with kcovx.instrument_imports(include=[name]):
            mod = importlib.import_module(name)
        here = sorted(tuple(b) for b in kcovx.blocks() if b.file == mod.__file__)
        assert here == sorted(blocks)
        for b in here:
            assert kcovx.symbolize(b[0]) == kcovx.Block(*b)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_block_functions_are_the_code_objects_qualnames(corpus: Twins) -> None:
    """Every probe in a code object symbolizes to that code object's qualname (3.12+
    inlined comprehensions are the exception: their probes live in the enclosing code)."""
    _, inst = corpus
    fns = [inst.closures, inst.comprehensions, inst.coro, inst.make_class, inst.Tool.v.fget]
    pcs_of_inst = probe_of(vars(inst)).pcs
    checked = 0
    for fn in fns:
        for code in _iter_code(fn.__code__):
            for index in _probe_indices(code):
                block = kcovx.symbolize(pcs_of_inst[index])
                checked += 1
                if "comp>" in block.function and sys.version_info >= (3, 12):
                    assert block.function.startswith(code.co_qualname + ".")
                    assert block.function.endswith("comp>")
                else:
                    assert block.function == code.co_qualname, (block, code.co_qualname)
                assert code.co_firstlineno <= block.start_line
    assert checked > 20


# ---------------------------------------------------------------------------------------------
# Threads


def test_linux_blocks_of_other_threads_never_reach_the_owner(
    rec: types.ModuleType, devices: Devices
) -> None:
    _, area = linux(devices)
    t = threading.Thread(target=rec.loop, args=(50,))
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert int(area[0]) == 0
    rec.spin(1)
    assert int(area[0]) == 3


def test_gvisor_blocks_of_other_threads_are_global(rec: types.ModuleType, devices: Devices) -> None:
    pcs = _pcs_by_line(rec, "loop")
    dev = devices.open()
    dev.init_trace(4096)
    area = dev.mmap()
    dev.enable()
    area[0] = 0
    t = threading.Thread(target=rec.loop, args=(3,))
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    dev.flush()
    assert sorted(take(area)) == sorted(pcs.values())
    dev.disable()


def test_many_threads_running_the_same_code(rec: types.ModuleType, devices: Devices) -> None:
    _, area = linux(devices, size=16384)
    rec.loop(20)
    one_run = take(area)
    assert len(one_run) == 42
    k = 100
    start = threading.Barrier(9, timeout=TIMEOUT)
    results: list[Any] = []

    def worker() -> None:
        start.wait()
        results.append([rec.loop(20) for _ in range(200)])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    start.wait()
    mine = [rec.loop(20) for _ in range(k)]
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert int(area[0]) == k * len(one_run)
    assert take(area) == one_run * k
    assert mine == [90] * k
    assert len(results) == 8 and all(r == [90] * 200 for r in results)
