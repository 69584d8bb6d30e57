"""The ways into instrumentation: ``instrument_func`` (functions, methods, closures, lambdas on
one line, as a decorator; what it refuses), ``instrument_module`` (every function of an
imported module; its errors) and the import hook (``instrument_imports``/``ImportHook``: which
modules match, that imported modules are left alone, the standard library only when named,
kcovx never, clean-up and argument errors).
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _instrument_support import (
    CORPUS,
    HEADER_FUTURE,
    cases,
    forget,
    instrumented,
    linux,
    outcome,
    probe_of,
    take,
    uid,
    write_module,
)
from _kcovx_support import Devices

import kcovx
from kcovx._area import Probe

# ---------------------------------------------------------------------------------------------
# instrument_func


FUNCS = '''\
import functools

import kcovx


def plain(x):
    """Plain doc."""
    if x:
        return x * 2
    return -1


def outer(n):
    def inner(k):
        return [k + i for i in range(n)]

    return inner


class K:
    def m(self, x):
        return ("m", x)

    @staticmethod
    def s(x):
        return ("s", x)

    @classmethod
    def c(cls, x):
        return ("c", cls.__name__, x)


first, second = (lambda: "first"), (lambda: "second")


def nested_lambdas():
    return [lambda: i for i in range(2)]


@kcovx.instrument_func
def decorated_at_def(x):
    return [x + i for i in range(2)]


def defined_global():
    global made_global

    def made_global():
        return "made"

    return made_global
'''


@pytest.fixture
def funcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A fresh plainly imported module (FUNCS) for each test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"kcx_funcs_{uid()}"
    write_module(tmp_path, name, FUNCS)
    importlib.invalidate_caches()
    yield importlib.import_module(name)
    del sys.modules[name]


def test_instrument_func_instruments_in_place(funcs: types.ModuleType, devices: Devices) -> None:
    f = funcs.plain
    code = f.__code__
    assert kcovx.instrument_func(f) is f
    assert instrumented(f) and f.__code__ is not code
    assert isinstance(probe_of(vars(funcs)), Probe)
    assert (f(3), f(0), f.__doc__, f.__name__) == (6, -1, "Plain doc.", "plain")
    before = kcovx.blocks()
    new_code = f.__code__
    assert kcovx.instrument_func(f) is f  # idempotent
    assert f.__code__ is new_code and kcovx.blocks() == before
    # only that function's blocks (and those of the one instrumented at import)
    mine = {b.function for b in before if b.file == funcs.__file__}
    assert mine == {"plain", "decorated_at_def", "decorated_at_def.<locals>.<listcomp>"}
    _, area = linux(devices)
    f(1)
    got = take(area)
    assert [kcovx.symbolize(pc).function for pc in got] == ["plain", "plain"]
    assert not instrumented(funcs.outer)  # nothing else was touched


def test_instrument_func_as_decorator_and_on_closures(funcs: types.ModuleType) -> None:
    assert instrumented(funcs.decorated_at_def) and funcs.decorated_at_def(1) == [1, 2]
    lone, other = funcs.outer(2), funcs.outer(2)  # closures made by the plain outer
    assert kcovx.instrument_func(lone) is lone
    assert instrumented(lone) and lone(5) == [5, 6]
    assert not instrumented(other) and not instrumented(funcs.outer)
    assert other(5) == [5, 6] and lone.__closure__[0].cell_contents == 2
    outer = kcovx.instrument_func(funcs.outer)
    inner = outer(3)  # made by the instrumented outer: instrumented too
    assert instrumented(inner) and inner(1) == [1, 2, 3]


def test_instrument_func_on_methods(funcs: types.ModuleType) -> None:
    obj = funcs.K()
    bound = obj.m
    assert kcovx.instrument_func(bound) is bound
    assert instrumented(funcs.K.m) and obj.m(1) == ("m", 1)
    sm = funcs.K.__dict__["s"]
    cm = funcs.K.__dict__["c"]
    assert kcovx.instrument_func(sm) is sm and kcovx.instrument_func(cm) is cm
    assert instrumented(funcs.K.s) and instrumented(funcs.K.c)
    assert funcs.K.s(2) == ("s", 2) and funcs.K.c(3) == ("c", "K", 3)
    assert kcovx.instrument_func(funcs.K.s) is funcs.K.s  # the plain function: idempotent


def test_instrument_func_tells_apart_lambdas_on_one_line(funcs: types.ModuleType) -> None:
    kcovx.instrument_func(funcs.second)
    assert funcs.second() == "second" and not instrumented(funcs.first)
    kcovx.instrument_func(funcs.first)
    assert (funcs.first(), funcs.second()) == ("first", "second")
    made = funcs.nested_lambdas()
    for f in made:
        kcovx.instrument_func(f)
    assert [f() for f in made] == [1, 1] and all(instrumented(f) for f in made)
    g = funcs.defined_global()
    assert g.__qualname__ == "made_global"
    assert kcovx.instrument_func(g)() == "made" and instrumented(g)


def test_instrument_func_rejects_what_it_cannot_instrument(
    funcs: types.ModuleType, tmp_path: Path
) -> None:
    for bad in (len, 3, None, funcs.K, functools.partial(funcs.plain, 1), "plain", funcs):
        with pytest.raises(TypeError):
            kcovx.instrument_func(bad)
    ns: dict[str, Any] = {}
    exec("def from_string(x):\n    return x\n", ns)
    with pytest.raises(ValueError, match="no source"):
        kcovx.instrument_func(ns["from_string"])
    assert ns["from_string"](4) == 4 and not instrumented(ns["from_string"])
    # the file changed after the import (same first line, other body): refused, untouched
    path = Path(funcs.__file__)
    path.write_text(FUNCS.replace("return x * 2", "return x * 3"))
    os.utime(path, ns=(1, 10**18))
    with pytest.raises(ValueError, match="does not match"):
        kcovx.instrument_func(funcs.plain)
    assert funcs.plain(2) == 4 and not instrumented(funcs.plain)
    # instrument_module skips it too instead of running the new code
    kcovx.instrument_module(funcs)
    assert funcs.plain(2) == 4 and not instrumented(funcs.plain)
    assert instrumented(funcs.outer) and funcs.outer(1)(0) == [0]


# ---------------------------------------------------------------------------------------------
# instrument_module


def test_instrument_module_reaches_every_function(tmp_path: Path) -> None:
    name = f"kcx_mod_{uid()}"
    path = write_module(tmp_path, name, HEADER_FUTURE + CORPUS)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        _check_instrument_module(mod)
    finally:
        del sys.modules[name]


def _check_instrument_module(mod: types.ModuleType) -> None:
    expected = {n: outcome(getattr(mod, n)) for n in cases(mod) if n != "case_raise_recursion"}
    assert kcovx.instrument_module(mod) is mod
    assert isinstance(probe_of(vars(mod)), Probe)
    tool = vars(mod.Tool)
    reached = [
        mod.straight, mod.gen, mod.coro, mod.agen, mod.Point.__init__, mod.Color.describe,
        mod.Color.__dict__["first"].__func__, mod.Item.total, mod.Outer.Inner.Deepest.where,
        tool["s"].__func__, tool["c"].__func__, tool["v"].fget, tool["v"].fset,
        tool["v"].fdel, tool["m"], mod.square, mod.decorated, mod.deco,
        mod.decorated.__wrapped__, mod.cached.__wrapped__, mod.managed.__wrapped__,
        *(getattr(mod, n) for n in cases(mod)),
    ]  # fmt: skip
    for fn in reached:
        assert instrumented(fn), fn
    assert not instrumented(mod.managed)  # contextlib's helper, not defined in the module
    assert not instrumented(mod.Item.__init__)  # made by dataclasses from a string
    assert not instrumented(mod.functools.wraps)  # not defined in the module
    got = {n: outcome(getattr(mod, n)) for n in expected}
    assert got == expected
    assert kcovx.instrument_module(mod) is mod  # again: nothing changes
    assert mod.case_loops() == expected["case_loops"][1]


def test_instrument_module_errors(tmp_path: Path) -> None:
    for bad in ("os", 3, None, len, kcovx.instrument_func):
        with pytest.raises(TypeError):
            kcovx.instrument_module(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kcovx.instrument_module(sys)  # built in: no file
    with pytest.raises(ValueError):
        kcovx.instrument_module(types.ModuleType("kcx_nofile"))
    for own in (kcovx, kcovx.pcs, kcovx.instrument):
        with pytest.raises(ValueError, match="kcovx itself"):
            kcovx.instrument_module(own)
    assert not instrumented(kcovx.pcs.symbolize)
    gone = types.ModuleType("kcx_gone")
    gone.__file__ = str(tmp_path / "kcx_gone.py")
    with pytest.raises(ValueError):
        kcovx.instrument_module(gone)


# ---------------------------------------------------------------------------------------------
# instrument_imports


def _package(root: Path, pkg: str) -> None:
    body = "def f():\n    return __name__\n"
    (root / pkg).mkdir()
    (root / pkg / "__init__.py").write_text(body)
    for sub in ("sub", "other"):
        (root / pkg / f"{sub}.py").write_text(body)
    (root / f"{pkg}x.py").write_text(body)  # a name that only starts like the package
    (root / f"{pkg}_out.py").write_text(body)


def _package_names(pkg: str) -> tuple[str, ...]:
    return (pkg, f"{pkg}x", f"{pkg}_out")


def _import_all(pkg: str) -> dict[str, bool]:
    out = {}
    for name in (pkg, f"{pkg}.sub", f"{pkg}.other", f"{pkg}x", f"{pkg}_out"):
        mod = importlib.import_module(name)
        assert mod.f() == name
        out[name] = instrumented(mod.f)
    return out


@pytest.mark.parametrize(
    ("include", "exclude", "instrumented"),
    [
        (["P"], [], {"P", "P.sub", "P.other"}),
        (["P"], ["P.other"], {"P", "P.sub"}),
        (["P.sub"], [], {"P.sub"}),
        (["P.*"], [], {"P.sub", "P.other"}),
        (["P*"], ["Px", "P.sub"], {"P", "P.other", "P_out"}),
        (["P.sub"], ["P"], set()),  # exclude wins, also for a submodule
        (["P", "P_out"], ["P"], {"P_out"}),
        (None, [], {"P", "P.sub", "P.other", "Px", "P_out"}),  # under the directory
        (None, ["P"], {"Px", "P_out"}),
    ],
)
def test_import_hook_matching(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    include: list[str] | None,
    exclude: list[str],
    instrumented: set[str],
) -> None:
    pkg = f"kcx_pkg{uid()}"
    _package(tmp_path, pkg)
    monkeypatch.syspath_prepend(str(tmp_path))

    def sub(pattern: str) -> str:
        return pattern.replace("P", pkg, 1)

    try:
        with kcovx.instrument_imports(
            None if include is None else [sub(p) for p in include],
            [sub(p) for p in exclude],
            directory=str(tmp_path),
        ):
            got = _import_all(pkg)
        assert {n for n, inst in got.items() if inst} == {sub(p) for p in instrumented}
    finally:
        forget(*_package_names(pkg))


def test_import_hook_leaves_imported_modules_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = f"kcx_pkg{uid()}"
    _package(tmp_path, pkg)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        before = importlib.import_module(f"{pkg}.sub")
        with kcovx.instrument_imports([pkg]):
            again = importlib.import_module(f"{pkg}.sub")
            other = importlib.import_module(f"{pkg}.other")
        assert again is before and not instrumented(again.f)
        assert instrumented(other.f)
        assert not instrumented(importlib.import_module(pkg).f)  # imported before, as parent
    finally:
        forget(*_package_names(pkg))


def test_import_hook_instruments_the_stdlib_only_when_included() -> None:
    spec = importlib.util.find_spec("colorsys")
    assert spec is not None and spec.origin is not None
    saved = sys.modules.pop("colorsys", None)
    try:
        with kcovx.instrument_imports(directory=os.path.dirname(spec.origin)):
            plain = importlib.import_module("colorsys")
        assert not instrumented(plain.rgb_to_hsv)
        del sys.modules["colorsys"]
        with kcovx.instrument_imports(["colorsys"]):
            inst = importlib.import_module("colorsys")
        assert inst is not plain and instrumented(inst.rgb_to_hsv)
        for rgb in [(0.2, 0.4, 0.4), (1, 0, 0), (0.5, 0.5, 0.5), (0, 0.1, 0.9)]:
            for conv in ("rgb_to_hsv", "rgb_to_hls", "rgb_to_yiq"):
                assert getattr(inst, conv)(*rgb) == getattr(plain, conv)(*rgb)
    finally:
        sys.modules.pop("colorsys", None)
        if saved is not None:
            sys.modules["colorsys"] = saved


def test_import_hook_directory_can_be_the_root(tmp_path: Path) -> None:
    # "/" as the folder whose modules are instrumented covers every file outside the
    # site-packages and stdlib folders (its prefix is "/", not "//").
    mod = tmp_path / "rootmod.py"
    mod.write_text("x = 1\n")
    assert kcovx.ImportHook(directory="/").matches("rootmod", str(mod))
    assert kcovx.ImportHook(directory=str(tmp_path)).matches("rootmod", str(mod))
    assert not kcovx.ImportHook(directory=str(tmp_path / "sub")).matches("rootmod", str(mod))


def test_import_hook_never_instruments_kcovx(tmp_path: Path) -> None:
    hook = kcovx.ImportHook(include=["kcovx", "kcovx.*", "*"])
    for mod in (kcovx, kcovx.pcs, kcovx.instrument):
        assert not hook.matches(mod.__name__, mod.__file__)
    home = os.path.dirname(os.path.dirname(kcovx.__file__))
    assert not kcovx.ImportHook(directory=home).matches("kcovx.pcs", kcovx.pcs.__file__)
    script = textwrap.dedent(
        """
        import sys, kcovx
        with kcovx.instrument_imports(["kcovx", "*"], directory="/"):
            import kcovx.__main__ as m
        probe = lambda names: any(n.startswith("__kcovx_pc") for n in names)
        print(probe(m.main.__code__.co_names), probe(vars(m)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_import_hook_removes_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = list(sys.meta_path)
    with kcovx.instrument_imports(["nothing"]) as hook:
        assert sys.meta_path[0] is hook and isinstance(hook, kcovx.ImportHook)
    assert sys.meta_path == before
    with pytest.raises(RuntimeError, match="boom"), kcovx.instrument_imports(["x"]) as hook:
        assert hook in sys.meta_path
        raise RuntimeError("boom")
    assert sys.meta_path == before
    # after the block, new imports are plain again
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"kcx_after_{uid()}"
    write_module(tmp_path, name, "def f():\n    return 1\n")
    importlib.invalidate_caches()
    with kcovx.instrument_imports([name]):
        pass
    try:
        assert not instrumented(importlib.import_module(name).f)
    finally:
        sys.modules.pop(name, None)


def test_import_hook_argument_errors() -> None:
    with pytest.raises(TypeError):
        kcovx.ImportHook(include="pkg")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kcovx.ImportHook(exclude="pkg")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kcovx.ImportHook(include=[""])
    with pytest.raises(TypeError):
        kcovx.ImportHook(include=[3])  # type: ignore[list-item]


def test_instrument_tree_takes_a_tree_another_tool_rewrote(tmp_path: Path) -> None:
    """As pytest's assertion rewriting leaves it: an inserted node with a start but no end."""
    import ast

    from kcovx.instrument import instrument_tree

    src = b'"""Doc."""\n\nimport os\n\ndef f(x):\n    return x + 1\n'
    path = tmp_path / "kcx_tree.py"
    path.write_bytes(src)

    def tree() -> ast.Module:
        t = ast.parse(src)
        alias = ast.alias("sys", lineno=3, col_offset=0)
        t.body.insert(1, ast.Import([alias], lineno=3, col_offset=0))
        return t

    unit = instrument_tree(tree, src, str(path), "kcx_tree")
    ns: dict[str, object] = {"__name__": "kcx_tree"}
    unit.install(ns)
    exec(unit.code, ns)
    f = ns["f"]
    assert callable(f) and f(2) == 3 and "sys" in ns
    assert {b.function for b in unit.blocks} == {"<module>", "f"}
