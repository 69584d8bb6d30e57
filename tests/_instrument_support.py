"""Shared helpers for the instrumentation tests: twins (the same source imported plain and
instrumented, with or without ``cmp=True``), writing and forgetting throwaway modules, finding
a module's probe and comparison calls, and the corpus (tests/instrument_corpus.py, read from
disk as source text).

Owns no kcovx state; every module it imports is given a unique name (``uid()``) so tests
never see each other's modules.  ``CMP_MODULES`` holds the names of the instrumented twins
imported with ``cmp=True``.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _kcovx_support import Devices

import kcovx
from kcovx import instrument
from kcovx._area import Probe

PROBE = instrument.PROBE
# The prefixes of the names comparison calls load (cmp=True; kcovx.instrument.unit.cmp_names).
CMP_PREFIXES = ("__kcovx_cmp", "__kcovx_held")
# Names of instrumented twins imported with cmp=True.
CMP_MODULES: set[str] = set()

# The corpus: a module exercising every kind of block, as source text, and the module
# docstrings put before it (with and without ``from __future__ import annotations``).
CORPUS = Path(__file__).with_name("instrument_corpus.py").read_text()
HEADER = '"""Corpus docstring."""\n\n'
HEADER_FUTURE = '"""Corpus docstring."""\n\nfrom __future__ import annotations\n\n'

_ids = itertools.count()


def uid() -> int:
    """A number no other module of this test session was named with."""
    return next(_ids)


def has_probe(names: Any) -> bool:
    """Whether any of ``names`` (strings or anything else) is a probe name."""
    return any(isinstance(n, str) and n.startswith(PROBE) for n in names)


def is_kcovx_name(name: Any) -> bool:
    """Whether ``name`` is one kcovx's rewrite loads: a probe or a comparison call."""
    return isinstance(name, str) and name.startswith((PROBE, *CMP_PREFIXES))


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in it."""
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from code_objects(c)


def loads_cmp(code: types.CodeType) -> bool:
    """Whether ``code`` or code nested in it loads a comparison call (``__kcovx_cmp_*``)."""
    return any(n.startswith(CMP_PREFIXES[0]) for c in code_objects(code) for n in c.co_names)


def module_loads_cmp(mod: types.ModuleType) -> bool:
    """Whether a function or method of ``mod`` (as its namespace holds them) loads a
    comparison call."""
    for value in list(vars(mod).values()):
        items = [value]
        if isinstance(value, type) and value.__module__ == mod.__name__:
            items = list(vars(value).values())
        for v in items:
            f = getattr(v, "__func__", getattr(v, "fget", v))
            code = getattr(f, "__code__", None)
            if isinstance(code, types.CodeType) and loads_cmp(code):
                return True
    return False


def is_cmp(mod: types.ModuleType) -> bool:
    """Whether ``mod`` is an instrumented twin imported with cmp=True."""
    return mod.__name__ in CMP_MODULES


def probe_of(namespace: Any) -> Any:
    """The probe bound in ``namespace`` (a kcovx.Probe), or None."""
    found = [v for k, v in namespace.items() if isinstance(k, str) and k.startswith(PROBE)]
    assert len(found) <= 1, found
    return found[0] if found else None


class Twins(typing.NamedTuple):
    plain: types.ModuleType
    inst: types.ModuleType


def write_module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def load_twins(folder: Path, stem: str, source: str, cmp: bool = False) -> Twins:
    """Write ``source`` twice to ``folder`` (on sys.path) and import it plain and under
    ``instrument_imports`` (with ``cmp``: ``cmp=True``; the source must then have a
    comparison that records, so that the twin does make comparison calls)."""
    n = uid()
    plain_name, inst_name = f"kcx_{stem}_{n}_plain", f"kcx_{stem}_{n}_inst"
    write_module(folder, plain_name, source)
    write_module(folder, inst_name, source)
    importlib.invalidate_caches()
    plain = importlib.import_module(plain_name)
    with kcovx.instrument_imports(include=[inst_name], cmp=cmp):
        inst = importlib.import_module(inst_name)
    assert isinstance(probe_of(vars(inst)), Probe)
    assert probe_of(vars(plain)) is None
    assert module_loads_cmp(inst) == cmp, (inst_name, cmp)
    assert not module_loads_cmp(plain)
    if cmp:
        CMP_MODULES.add(inst_name)
    return Twins(plain, inst)


def forget(*names: str) -> None:
    """Drop these modules (and their submodules) from sys.modules."""
    for name in list(sys.modules):
        if name in names or name.split(".")[0] in names:
            del sys.modules[name]
    CMP_MODULES.difference_update(names)


def twins_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], Twins]]:
    """The body of a ``twins`` fixture: yields make(stem, source, cmp=False) -> Twins imported
    from tmp_path; forgets them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[Twins] = []

    def make(stem: str, source: str, cmp: bool = False) -> Twins:
        made.append(load_twins(tmp_path, stem, source, cmp))
        return made[-1]

    yield make
    forget(*(m.__name__ for pair in made for m in pair))


def cases(mod: types.ModuleType) -> list[str]:
    return sorted(n for n in vars(mod) if n.startswith("case_"))


def instrumented(fn: Any) -> bool:
    return has_probe(fn.__code__.co_names)


def linux_cmp(devices: Devices, size: int = 1 << 16) -> tuple[kcovx.Device, Any]:
    """A linux-profile device of ``devices``, initialised, mapped and enabled with
    KCOV_TRACE_CMP on the calling thread."""
    dev = devices.open("linux")
    dev.init_trace(size)
    area = dev.mmap()
    dev.enable(kcovx.KCOV_TRACE_CMP)
    area[0] = 0
    return dev, area


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except Exception as e:
        return ("raised", type(e).__name__, str(e))


def linux(devices: Devices, size: int = 4096) -> tuple[kcovx.Device, Any]:
    """A linux-profile device of ``devices``, initialised, mapped and enabled."""
    dev = devices.open("linux")
    dev.init_trace(size)
    area = dev.mmap()
    dev.enable()
    return dev, area


def take(area: Any) -> list[int]:
    """The PCs in ``area``, which is then reset."""
    n = int(area[0])
    out = [int(x) for x in area[1 : n + 1]]
    area[0] = 0
    return out
