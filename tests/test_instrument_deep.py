"""Deeply nested code instruments and runs as plain code does.

The rewrite and the position oracle walk chains that nest one AST level per link with loops,
not recursion: long elif chains, ``x if c else ...`` chains, operand chains (``a + b + ...``,
``a < b < ...``, ``and``/``or``), ``not not ...``, attribute and call chains.  Each is
checked at the sizes of the bug report (250 elifs, 500 terms) and at sizes well beyond the
recursion limit, through the import hook, ``instrument_module`` and ``kcovx run``; the results
must equal plain code's, and every branch taken must record.  (3.12 refuses AST trees about
1,500 levels deep that its source compiler accepts; there the largest size is below that.)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _instrument_support import (
    Twins,
    forget,
    has_probe,
    probe_of,
    twins_factory,
    uid,
    write_module,
)
from _kcovx_support import Devices

import kcovx

# Beyond the default recursion limit (1000), within what CPython compiles from source.
DEEP = 1200 if sys.version_info[:2] == (3, 12) else 2000


def _elifs(n: int) -> str:
    lines = ["def f(x):", "    if x == 0:", "        return 'zero'"]
    for i in range(1, n):
        lines += [f"    elif x == {i}:", f"        return {i} * 2"]
    lines += ["    else:", "        return -1"]
    return "\n".join(lines) + "\n"


def _else_if(n: int) -> str:
    """An elif chain spelled as nested ``else: if`` blocks is indentation-limited; this is
    the expression form: ``a if c else b if d else ...``."""
    arms = " else ".join(f"{i} * 3 if x == {i}" for i in range(n))
    return f"def f(x):\n    return {arms} else -1\n"


def _chain(op: str, n: int, term: str = "x") -> str:
    return f"def f(x):\n    return {f' {op} '.join([term] * n)}\n"


def _multiline_sum(n: int) -> str:
    terms = " +\n        ".join(f"x * {i}" for i in range(n))
    return f"def f(x):\n    return (\n        {terms}\n    )\n"


def _nots(n: int) -> str:
    return f"def f(x):\n    if {'not ' * n}x:\n        return 'odd'\n    return 'even'\n"


def _calls(n: int) -> str:
    return (
        "class C:\n    def __init__(self, v):\n        self.v = v\n"
        "    def inc(self):\n        return C(self.v + 1)\n"
        f"def f(x):\n    return C(x){'.inc()' * n}.v\n"
    )


def _cond_or(n: int) -> str:
    terms = " or ".join(f"x == {i} and {i}" for i in range(n))
    return f"def f(x):\n    return ({terms}) or -1\n"


SHAPES: dict[str, Callable[[int], str]] = {
    "elifs": _elifs,
    "ifexp": _else_if,
    "plus": lambda n: _chain("+", n),
    "compare": lambda n: _chain("<=", n),
    "and": lambda n: _chain("and", n),
    "or": lambda n: _chain("or", n),
    "and_or": _cond_or,
    "multiline_sum": _multiline_sum,
    "nots": _nots,
    "calls": lambda n: _calls(n // 2),  # two levels a link
}
SIZES = {"elifs": 250, "plus": 500, "and": 500, "or": 500}


def _cases() -> list[tuple[str, int]]:
    out = []
    for shape in SHAPES:
        out += [(shape, SIZES.get(shape, 500)), (shape, DEEP)]
    return out


def _inputs(size: int) -> list[int]:
    return [0, 1, 2, size // 2, size - 1, size, size + 7]


@pytest.fixture
def twins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Twins]]:
    """Factory: twins(stem, source) -> Twins imported from tmp_path (forgotten afterwards)."""
    monkeypatch.setenv("KCOVX_CACHE_DIR", "")
    yield from twins_factory(tmp_path, monkeypatch)


def _results(f: Callable[[int], object], size: int) -> list[object]:
    out: list[object] = []
    for x in _inputs(size):
        try:
            out.append(f(x))
        except Exception as e:  # the same exception both ways
            out.append((type(e).__name__, str(e)))
    return out


@pytest.mark.parametrize(("shape", "size"), _cases())
def test_deep_code_imports_and_runs_instrumented(
    twins: Callable[..., Twins], shape: str, size: int
) -> None:
    plain, inst = twins(f"deep_{shape}", SHAPES[shape](size))
    assert has_probe(inst.f.__code__.co_names)
    assert _results(inst.f, size) == _results(plain.f, size)


def test_every_branch_of_a_long_elif_chain_records(
    twins: Callable[..., Twins], devices: Devices
) -> None:
    _, inst = twins("deep_rec", _elifs(DEEP))
    dev = devices.open()  # gvisor: each covered block once per flush
    dev.init_trace(1 << 16)
    area = dev.mmap()
    dev.enable()
    for x in range(DEEP + 1):
        inst.f(x)
    dev.flush()
    got = {int(v) for v in area[1 : int(area[0]) + 1]}
    pcs = set(probe_of(vars(inst)).pcs)
    assert got <= pcs
    assert len(got) >= DEEP  # a probe per elif body reached, and more


@pytest.mark.parametrize("shape", ["elifs", "plus", "ifexp"])
def test_instrument_module_handles_deep_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KCOVX_CACHE_DIR", "")
    name = f"kcx_deep_live_{shape}_{uid()}"
    write_module(tmp_path, name, SHAPES[shape](DEEP))
    importlib.invalidate_caches()
    try:
        mod = importlib.import_module(name)
        before = _results(mod.f, DEEP)
        kcovx.instrument_module(mod)
        assert has_probe(mod.f.__code__.co_names)
        assert _results(mod.f, DEEP) == before
    finally:
        forget(name)


def test_kcovx_run_of_a_deep_script(tmp_path: Path) -> None:
    script = tmp_path / "deep_prog.py"
    calls = "import sys\nprint(f(int(sys.argv[1])), g(3))\n"
    script.write_text(_elifs(DEEP) + _chain("+", DEEP).replace("def f", "def g") + calls)
    out = subprocess.run(
        [sys.executable, "-m", "kcovx", "run", "--output", str(tmp_path / "c"), str(script), "7"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"14 {3 * DEEP}"
