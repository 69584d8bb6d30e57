"""Shared helpers for the instrumentation tests: twins (the same source imported plain and
instrumented), writing and forgetting throwaway modules, finding a module's probe, and the
corpus (tests/instrument_corpus.py, read from disk as source text).

Owns no kcovx state; every module it imports is given a unique name (``uid()``) so tests
never see each other's modules.
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


def load_twins(folder: Path, stem: str, source: str) -> Twins:
    """Write ``source`` twice to ``folder`` (on sys.path) and import it plain and under
    ``instrument_imports``."""
    n = uid()
    plain_name, inst_name = f"kcx_{stem}_{n}_plain", f"kcx_{stem}_{n}_inst"
    write_module(folder, plain_name, source)
    write_module(folder, inst_name, source)
    importlib.invalidate_caches()
    plain = importlib.import_module(plain_name)
    with kcovx.instrument_imports(include=[inst_name]):
        inst = importlib.import_module(inst_name)
    assert isinstance(probe_of(vars(inst)), Probe)
    assert probe_of(vars(plain)) is None
    return Twins(plain, inst)


def forget(*names: str) -> None:
    """Drop these modules (and their submodules) from sys.modules."""
    for name in list(sys.modules):
        if name in names or name.split(".")[0] in names:
            del sys.modules[name]


def twins_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], Twins]]:
    """The body of a ``twins`` fixture: yields make(stem, source) -> Twins imported from
    tmp_path; forgets them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[Twins] = []

    def make(stem: str, source: str) -> Twins:
        made.append(load_twins(tmp_path, stem, source))
        return made[-1]

    yield make
    forget(*(m.__name__ for pair in made for m in pair))


def cases(mod: types.ModuleType) -> list[str]:
    return sorted(n for n in vars(mod) if n.startswith("case_"))


def instrumented(fn: Any) -> bool:
    return has_probe(fn.__code__.co_names)


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
