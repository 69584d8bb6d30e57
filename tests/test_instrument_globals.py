"""Instrumented code outside its module's globals, and at import time.

A code object of an instrumented function runs under other globals
(``types.FunctionType(code, {...})``, ``exec(code, {})``, cloudpickle's by-value rebuild) as
plain code does, and still records; the probe stays a LOAD_GLOBAL that finds the module's
binding first.  Importing an instrumented module gives the warnings (``stacklevel``) and the
tracebacks plain Python gives: no kcovx or extra importlib frames.  ``importlib.reload`` of an
instrumented module runs its new code.
"""

from __future__ import annotations

import builtins
import dis
import importlib
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _instrument_support import (
    Twins,
    forget,
    probe_of,
    twins_factory,
    uid,
    write_module,
)
from _kcovx_support import Devices

import kcovx
from kcovx import instrument

SOURCE = '''\
"""Functions to run under other globals."""

import math

K = 10


def f(x):
    if x > 2:
        return [y * 2 for y in range(x) if y % 2]
    return math.floor(x + 0.5) or K


def outer(n):
    def inner(m):
        return n + m if m else -n
    return inner
'''


@pytest.fixture
def twins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Twins]]:
    """Factory: twins(stem, source) -> Twins imported from tmp_path (forgotten afterwards)."""
    yield from twins_factory(tmp_path, monkeypatch)


def _rebuilt(fn: Any, globals_: dict[str, Any]) -> Any:
    """``fn`` rebuilt from its code under ``globals_``, as serialisers rebuild functions."""
    return types.FunctionType(fn.__code__, globals_, fn.__name__, fn.__defaults__, fn.__closure__)


def _under_other_globals(mod: types.ModuleType) -> list[Any]:
    out: list[Any] = []
    g = {"math": mod.math, "K": 7, "__builtins__": builtins}
    out += [_rebuilt(mod.f, g)(x) for x in (0, 1, 5)]
    out += [_rebuilt(mod.f, {"math": mod.math, "K": 3})(0)]  # builtins from the caller
    inner = mod.outer(4)
    out += [_rebuilt(inner, {})(m) for m in (0, 2)]
    ns: dict[str, Any] = {}
    exec(_module_code(mod), ns)
    out += [ns["f"](6), ns["outer"](1)(1), ns["K"]]
    return out


def _module_code(mod: types.ModuleType) -> types.CodeType:
    code = mod.__spec__.loader.get_code(mod.__name__)
    assert isinstance(code, types.CodeType)
    return code


def test_code_runs_under_other_globals_as_plain_code(twins: Callable[..., Twins]) -> None:
    plain, inst = twins("globals", SOURCE)
    assert _under_other_globals(inst) == _under_other_globals(plain)


def _linux(devices: Devices) -> Any:
    dev = devices.open("linux")
    dev.init_trace(4096)
    area = dev.mmap()
    dev.enable()
    return area


def test_code_under_other_globals_records_the_same_pcs(
    twins: Callable[..., Twins], devices: Devices
) -> None:
    _, inst = twins("globals_rec", SOURCE)
    area = _linux(devices)
    inst.f(5)
    n = int(area[0])
    direct = [int(x) for x in area[1 : n + 1]]
    area[0] = 0
    _rebuilt(inst.f, {"math": inst.math, "K": 1})(5)
    n = int(area[0])
    rebuilt = [int(x) for x in area[1 : n + 1]]
    area[0] = 0
    assert direct and rebuilt == direct
    assert set(direct) <= set(probe_of(vars(inst)).pcs)


def test_probe_is_found_in_module_globals_first(twins: Callable[..., Twins]) -> None:
    """The probe is a plain global load, bound in the module (LOAD_GLOBAL's fast path) and,
    for code under other globals, in builtins: both the same Probe."""
    _, inst = twins("globals_fast", SOURCE)
    probe = probe_of(vars(inst))
    names = [n for n in vars(inst) if n.startswith(instrument.PROBE)]
    assert builtins.__dict__[names[0]] is probe
    loads = [i for i in dis.get_instructions(inst.f) if i.argval == names[0]]
    assert loads and all(i.opname == "LOAD_GLOBAL" for i in loads)


def test_cloudpickle_by_value_round_trip(twins: Callable[..., Twins]) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    plain, inst = twins("globals_cp", SOURCE)
    got = []
    for mod in (plain, inst):
        cloudpickle.register_pickle_by_value(mod)
        try:
            f = cloudpickle.loads(cloudpickle.dumps(mod.f))
            inner = cloudpickle.loads(cloudpickle.dumps(mod.outer(3)))
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
        assert f is not mod.f
        got.append([f(0), f(5), inner(0), inner(2)])
    assert got[0] == got[1]


# ---- at import -------------------------------------------------------------------------------

WARNS = '''\
"""Warns about its own import, as deprecated modules do."""

import warnings

warnings.warn("this module is deprecated", DeprecationWarning, stacklevel=2)


def helper():
    warnings.warn("helper is deprecated", DeprecationWarning, stacklevel=2)


helper()
'''

RAISES = '''\
"""Fails at import."""


def check(value):
    if value < 0:
        raise ValueError(f"negative: {value}")
    return value


LIMIT = check(-1)
'''


def _import(name: str, instrumented: bool) -> types.ModuleType:
    """Import ``name`` (from one call site for both twins, so that what a warning or a
    traceback points at in this file is the same)."""
    hook = instrument.ImportHook(include=[name]).install() if instrumented else None
    try:
        return importlib.import_module(name)
    finally:
        if hook is not None:
            hook.remove()


def _twin_names(tmp_path: Path, stem: str, source: str) -> tuple[str, str]:
    n = uid()
    names = (f"kcx_{stem}_{n}_plain", f"kcx_{stem}_{n}_inst")
    for name in names:
        write_module(tmp_path, name, source)
    importlib.invalidate_caches()
    return names


def test_warnings_at_import_are_attributed_as_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    names = _twin_names(tmp_path, "warns", WARNS)
    seen = []
    try:
        for name, instrumented in zip(names, (False, True), strict=True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _import(name, instrumented)
            seen.append([(str(w.message), w.filename, w.lineno) for w in caught])
    finally:
        forget(*names)
    assert len(seen[0]) == 2
    assert seen[1] == [(m, f.replace(names[0], names[1]), n) for m, f, n in seen[0]]
    assert not any("kcovx" in f for _, f, _ in seen[1])


def test_tracebacks_at_import_are_the_same_as_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    names = _twin_names(tmp_path, "raises", RAISES)
    texts = []
    try:
        for name, instrumented in zip(names, (False, True), strict=True):
            with pytest.raises(ValueError, match="negative") as info:
                _import(name, instrumented)
            texts.append("".join(traceback.format_exception(info.value)))
    finally:
        forget(*names)
    assert texts[1] == texts[0].replace(names[0], names[1])
    assert kcovx.__file__.rsplit("/", 1)[0] not in texts[1]


def test_reload_runs_the_new_source_instrumented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"kcx_reload_{uid()}"
    path = write_module(tmp_path, name, "def f():\n    return 1\n")
    importlib.invalidate_caches()
    try:
        with kcovx.instrument_imports(include=[name]):
            mod = importlib.import_module(name)
            assert mod.f() == 1
            path.write_text("def f():\n    if True:\n        return 2\n")
            importlib.invalidate_caches()
            mod = importlib.reload(mod)
        assert mod.f() == 2
        assert any(n.startswith(instrument.PROBE) for n in mod.f.__code__.co_names)
    finally:
        forget(name)
