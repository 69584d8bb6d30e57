"""Comparison records (cmp=True) change nothing a program can see, also while they are made.

The comparison-heavy cases of the corpus (tests/instrument_corpus.py: ``case_compare_*`` and
the ``case_raise_*`` that raise from a comparison or a match) run plain and instrumented with
``cmp=True`` on a thread that records in KCOV_TRACE_CMP: the same results, exceptions (type and
message), rich comparison and attribute lookup counts (the cases return their logs), formatted
tracebacks (carets included) and ``sys.settrace`` events, and the records were made, at the
instrumented file's comparison sites.  (test_instrument.py runs every plain-vs-instrumented
comparison with cmp=True too, with nothing recording.)  Differences found and fixed keep their
minimal reproducer here.
"""

from __future__ import annotations

import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _instrument_support import (
    CORPUS,
    HEADER,
    Twins,
    cases,
    forget,
    load_twins,
    outcome,
    twins_factory,
)
from _kcovx_support import TIMEOUT

import kcovx


@pytest.fixture(scope="module")
def twins_cmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    folder = tmp_path_factory.mktemp("cmpcorpus")
    sys.path.insert(0, str(folder))
    pair = None
    try:
        pair = load_twins(folder, "cmpsem", HEADER + CORPUS, cmp=True)
        yield pair
    finally:
        sys.path.remove(str(folder))
        if pair is not None:
            forget(*(m.__name__ for m in pair))


@pytest.fixture
def twins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Twins]]:
    yield from twins_factory(tmp_path, monkeypatch)


COMPARING = ("case_compare_", "case_raise_compare", "case_raise_unhashable", "case_raise_pattern")


def _comparing(mod: types.ModuleType) -> list[str]:
    names = [n for n in cases(mod) if n.startswith(COMPARING)]
    assert len(names) >= 9
    return names


def _traceback_text(fn: Callable[[], Any], filename: str) -> str | None:
    try:
        fn()
    except Exception as e:
        return "".join(traceback.format_exception(e)).replace(filename, "F")
    return None


def _line_events(fn: Callable[[], Any], filename: str) -> tuple[list[tuple[Any, ...]], Any]:
    events: list[tuple[Any, ...]] = []

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        events.append((event, frame.f_code.co_qualname, frame.f_lineno))
        return local

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        return local(frame, event, arg) if frame.f_code.co_filename == filename else None

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = outcome(fn)
    finally:
        sys.settrace(old)
    return events, result


def _observe(mod: types.ModuleType, name: str) -> dict[str, Any]:
    """Everything the tests compare about case ``name`` of ``mod`` (file names replaced)."""
    fn = getattr(mod, name)
    events, traced = _line_events(fn, mod.__file__ or "")
    return {
        "outcome": outcome(fn),
        "traceback": _traceback_text(fn, mod.__file__ or ""),
        "events": events,
        "traced": traced,
    }


def _recording_thread(target: Callable[[], Any]) -> tuple[Any, list[kcovx.Comparison]]:
    """Run ``target`` on a new thread recording with KCOV_TRACE_CMP: its result and the
    comparisons recorded."""
    kc = kcovx.open(profile="linux")
    try:
        kc.init_trace(1 << 20)
        area = kc.mmap()
        box: dict[str, Any] = {}

        def run() -> None:
            kc.enable(kcovx.KCOV_TRACE_CMP)
            try:
                area[0] = 0
                box["result"] = target()
                box["records"] = kcovx.comparisons(area)
            finally:
                kc.disable()

        t = threading.Thread(target=run)
        t.start()
        t.join(TIMEOUT)
        assert not t.is_alive() and "records" in box, box
        return box["result"], box["records"]
    finally:
        kc.close()


def test_comparison_cases_are_the_same_while_recording(twins_cmp: Twins) -> None:
    plain, inst = twins_cmp
    names = _comparing(inst)
    expected = {n: _observe(plain, n) for n in names}
    got, records = _recording_thread(lambda: {n: _observe(inst, n) for n in names})
    for n in names:
        assert got[n] == expected[n], n
    # the cases that raise do, with carets under the failing expression where CPython has them
    raising = [n for n in names if got[n]["outcome"][0] == "raised"]
    assert raising == [n for n in names if n.startswith("case_raise_")]
    assert all("^" in (got[n]["traceback"] or "") for n in raising)
    assert not any("__kcovx" in (got[n]["traceback"] or "") for n in raising)
    # the records were made, at this file's comparison sites
    assert len(records) > 50
    sites = {s.pc: s for s in kcovx.pcs.comparison_sites()}
    assert {sites[r.pc].file for r in records} == {inst.__file__}
    assert any(r.const for r in records) and any(not r.const for r in records)
    assert any(r.size == 0 for r in records)  # str/bytes operands too


def test_comparison_cases_record_nothing_on_threads_not_tracing_cmp(twins_cmp: Twins) -> None:
    """Only the thread enabled with KCOV_TRACE_CMP records; a thread enabled in TRACE_PC
    mode gets blocks, never comparison records, and the same results."""
    plain, inst = twins_cmp
    names = _comparing(inst)
    kc = kcovx.open(profile="linux")
    try:
        kc.init_trace(1 << 16)
        area = kc.mmap()
        kc.enable()
        area[0] = 0
        got = {n: outcome(getattr(inst, n)) for n in names}
        pcs = [int(x) for x in area[1 : int(area[0]) + 1]]
        kc.disable()
    finally:
        kc.close()
    assert got == {n: outcome(getattr(plain, n)) for n in names}
    sites = {s.pc for s in kcovx.pcs.comparison_sites()}
    assert pcs and not sites & set(pcs)


DEEP = """\
def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)
"""


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


@pytest.mark.parametrize("tracing", [False, True], ids=["untraced", "settrace"])
def test_comparison_calls_do_not_count_against_the_recursion_limit(
    twins: Callable[..., Twins], tracing: bool
) -> None:
    """Each frame of deep() makes a comparison call before it recurses; RecursionError comes
    at the same depth as plain (on 3.11 too, where calls of METH_O builtins count a level;
    the comparison calls are METH_FASTCALL), also under a local trace function (3.11 then
    runs unspecialised calls)."""
    plain, inst = twins("deep", DEEP, cmp=True)

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        return local

    def depths() -> tuple[int, int]:
        old = sys.gettrace()
        if tracing:
            sys.settrace(local)
        try:
            return _max_depth(plain.deep), _max_depth(inst.deep)
        finally:
            sys.settrace(old)

    here = depths()
    assert here[1] == here[0]
    assert sys.getrecursionlimit() - 100 < here[0] < sys.getrecursionlimit()
    on_thread, records = _recording_thread(depths)  # while recording
    assert on_thread[1] == on_thread[0]
    assert records


# ---------------------------------------------------------------------------------------------
# Differences found and fixed: their minimal reproducers

CHAIN_LIST = """\
def f(v):
    return v


def middle_list(x):
    return x in [f(1)] == [1]
"""


def test_list_after_in_in_the_middle_of_a_chain(twins: Callable[..., Twins]) -> None:
    # cmp=True made the list a tuple (CPython makes only a comparison's last operand one)
    plain, inst = twins("chainlist", CHAIN_LIST, cmp=True)
    assert plain.middle_list(1) is True
    assert inst.middle_list(1) is True


PREPARE = """\
class Log(dict):
    def __init__(self):
        super().__init__()
        self.gets = []

    def __getitem__(self, key):
        self.gets.append(key)
        return super().__getitem__(key)


class Meta(type):
    @classmethod
    def __prepare__(mcs, name, bases, **kw):
        return Log()

    def __new__(mcs, name, bases, ns, **kw):
        cls = super().__new__(mcs, name, bases, dict(ns))
        cls.gets = list(ns.gets)
        return cls


class C(metaclass=Meta):
    a = 1
    b = a == 1


def one(x):
    return x == 1
"""


def test_class_namespace_never_sees_comparison_calls(twins: Callable[..., Twins]) -> None:
    # the class body looked __kcovx_cmp_* up in its namespace (now declared global there)
    plain, inst = twins("prepare", PREPARE, cmp=True)
    assert plain.C.gets[-1] == "a"
    assert inst.C.gets == plain.C.gets


def test_reproducers_are_plain_python() -> None:
    """The reproducers above behave as their asserts say when not instrumented."""
    for source, check in (
        (CHAIN_LIST, lambda ns: ns["middle_list"](1) is True),
        (PREPARE, lambda ns: ns["C"].gets[-1] == "a"),
    ):
        ns: dict[str, Any] = {"__name__": "kcx_reproducer"}
        exec(compile(source, "<reproducer>", "exec"), ns)
        assert check(ns)
