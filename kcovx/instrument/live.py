"""Instrumenting code that is already live: ``instrument_func`` (one function, in place) and
``instrument_module`` (every function of an imported module).  Module-level code and class
bodies have already run and are not re-run; the functions' ``__code__`` is swapped for its
instrumented counterpart, found by compiling the source file both plainly and instrumented
and matching the code objects by qualified name, first line and compiled content.

Invariants: a function whose file no longer holds its source stays plain (instrument_module)
or is an InstrumentError (instrument_func); instrumented code is never instrumented again.
Threading: the per-file caches are lru_caches (thread-safe); swapping ``__code__`` is one
attribute store.
"""

from __future__ import annotations

import dis
import functools
import marshal
import os
import types
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from kcovx.errors import InstrumentError, NoSourceError
from kcovx.instrument.source import instrument_source, register_subtree
from kcovx.instrument.unit import CMP, PROBE, Unit


def _iter_code(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _iter_code(c)


def _is_instrumented(code: types.CodeType) -> bool:
    return any(n.startswith(PROBE) for n in code.co_names)


def _records_cmp(code: types.CodeType) -> bool:
    """Whether instrumented ``code`` (or code nested in it) was instrumented with cmp=True."""
    return any(n.startswith(CMP) for c in _iter_code(code) for n in c.co_names)


def _has_comparisons(code: types.CodeType) -> bool:
    ops = ("COMPARE_OP", "CONTAINS_OP")
    return any(i.opname in ops for c in _iter_code(code) for i in dis.get_instructions(c))


def _check_cmp(cmp: object) -> bool:
    if not isinstance(cmp, bool):
        raise TypeError(f"cmp must be a bool, not {type(cmp).__name__}")
    return cmp


@functools.lru_cache(maxsize=64)
def _unit_for_file(filename: str, module: str, mtime_ns: int, size: int, cmp: bool) -> Unit:
    del mtime_ns, size  # part of the cache key only
    with open(filename, "rb") as f:
        source = f.read()
    return instrument_source(source, filename, module, register=False, cmp=cmp)


@functools.lru_cache(maxsize=64)
def _plain_code_for_file(filename: str, mtime_ns: int, size: int) -> types.CodeType:
    """The file compiled as the import system compiles it (to match functions against)."""
    del mtime_ns, size  # part of the cache key only
    with open(filename, "rb") as f:
        source = f.read()
    return compile(source, filename, "exec", dont_inherit=True)


def _stat(code: types.CodeType) -> os.stat_result:
    try:
        return os.stat(code.co_filename)
    except OSError:
        raise NoSourceError(
            f"kcovx: no source for {code.co_qualname!r} (file {code.co_filename!r} does not "
            "exist); only code compiled from a source file can be instrumented"
        ) from None


def _source_unit(code: types.CodeType, module: str, cmp: bool) -> Unit:
    st = _stat(code)
    return _unit_for_file(code.co_filename, module, st.st_mtime_ns, st.st_size, cmp)


def _same_place(root: types.CodeType, code: types.CodeType) -> list[types.CodeType]:
    key = (code.co_qualname, code.co_firstlineno)
    return [c for c in _iter_code(root) if (c.co_qualname, c.co_firstlineno) == key]


def _signature(code: types.CodeType) -> bytes:
    # Everything the compiler produced (instructions de-specialised, constants, names, line
    # and exception tables); marshal format 2 has no back-references, so equal code objects
    # give equal bytes whatever their reference counts.
    return marshal.dumps(code, 2)


def _counterpart(unit: Unit, code: types.CodeType) -> types.CodeType | None:
    """The instrumented code object of ``unit`` compiled from the same source as ``code``,
    or None if the file no longer holds ``code``'s source.  Several code objects can share
    a qualified name and first line (two lambdas on one line): ``code`` is found among the
    plainly compiled file's by its content."""
    try:
        st = _stat(code)
        plain = _plain_code_for_file(code.co_filename, st.st_mtime_ns, st.st_size)
    except (ValueError, OSError, SyntaxError):
        return None
    olds = _same_place(plain, code)
    news = _same_place(unit.code, code)
    if len(olds) != len(news):
        return None
    sig = _signature(code)
    for old, new in zip(olds, news, strict=True):
        if _signature(old) == sig:
            if (new.co_freevars, new.co_argcount, new.co_kwonlyargcount) == (
                code.co_freevars,
                code.co_argcount,
                code.co_kwonlyargcount,
            ):
                return new
            return None
    return None


def _match(unit: Unit, code: types.CodeType) -> tuple[types.CodeType, int]:
    new = _counterpart(unit, code)
    if new is None:
        raise InstrumentError(
            f"kcovx: {code.co_qualname!r} does not match its source file {code.co_filename!r} "
            f"(line {code.co_firstlineno}); was the file changed after it was imported?"
        )
    return new, _scope_of(unit, new)


def _scope_of(unit: Unit, code: types.CodeType) -> int:
    # Every function scope has an entry probe, ``probe[i]``: the first index loaded right
    # after the probe name is one of its own blocks.
    loading = False
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval == unit.probe_name:
            loading = True
        elif loading and ins.opname == "LOAD_CONST" and type(ins.argval) is int:
            b = unit.blocks[ins.argval]
            if unit.scopes[b.scope][0] == code.co_qualname:
                return b.scope
            loading = False
        elif ins.opname not in ("CACHE", "PUSH_NULL", "EXTENDED_ARG"):
            loading = False
    raise InstrumentError(f"kcovx: no blocks for {code.co_qualname!r}")


_F = TypeVar("_F")
_NO_FUNC: Any = object()  # instrument_func(cmp=...) without a function: a decorator


@overload
def instrument_func(func: _F, *, cmp: bool = False) -> _F: ...


@overload
def instrument_func(*, cmp: bool = False) -> Callable[[_F], _F]: ...


def instrument_func(func: Any = _NO_FUNC, *, cmp: bool = False) -> Any:
    """Instrument ``func`` in place (its ``__code__`` is replaced) and return it, so it also
    works as a decorator (``@instrument_func(cmp=True)`` too).  ``cmp``: its comparisons
    record too (README.md, "Comparison records").  Accepts functions, methods (their
    function is instrumented), staticmethod and classmethod objects.  Nested functions and
    comprehensions defined in it are instrumented too.  A function already instrumented is
    returned as it is, except with ``cmp=True`` when it was instrumented without and has
    comparisons: InstrumentError (a ValueError).  TypeError for anything else; ValueError
    when the function's source file is not available or no longer matches it."""
    _check_cmp(cmp)
    if func is _NO_FUNC:
        return functools.partial(instrument_func, cmp=cmp)
    target: Any = func
    if isinstance(target, staticmethod | classmethod | types.MethodType):
        target = target.__func__
    if not isinstance(target, types.FunctionType):
        raise TypeError(
            "kcovx.instrument_func() takes a Python function, method, staticmethod or "
            f"classmethod, not {type(func).__name__}"
        )
    code = target.__code__
    if _is_instrumented(code):
        if cmp and not _records_cmp(code) and _has_comparisons(code):
            raise InstrumentError(
                f"kcovx: {code.co_qualname!r} is already instrumented without cmp; "
                "instrument it with cmp=True before its first instrumentation"
            )
        return func
    module = target.__module__ or "__main__"
    unit = _source_unit(code, module, cmp)
    new, scope = _match(unit, code)
    register_subtree(unit, scope)
    unit.install(target.__globals__)
    target.__code__ = new
    return func


def _unwrapped(value: Any) -> Iterator[Any]:
    """``value`` and what it decorates: the function of a staticmethod/classmethod, then
    the ``__wrapped__`` chain (functools.wraps, lru_cache, contextmanager, ...)."""
    for _ in range(64):
        yield value
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
            continue
        try:
            value = value.__dict__["__wrapped__"]
        except Exception:  # no __dict__, or no __wrapped__ in it
            return


def _functions_of(mod: types.ModuleType) -> Iterator[types.FunctionType]:
    seen: set[int] = set()
    name = mod.__name__

    def walk(ns: Any, depth: int) -> Iterator[types.FunctionType]:
        for item in list(ns.values()):
            accessors = (item.fget, item.fset, item.fdel) if isinstance(item, property) else ()
            for value in (v for root in (item, *accessors) for v in _unwrapped(root)):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if isinstance(value, types.FunctionType):
                    if value.__module__ == name:
                        yield value
                elif isinstance(value, type) and value.__module__ == name and depth < 32:
                    yield from walk(value.__dict__, depth + 1)

    yield from walk(mod.__dict__, 0)


def instrument_module(mod: types.ModuleType, *, cmp: bool = False) -> types.ModuleType:
    """Instrument every function and method defined in the already imported module ``mod``
    (module-level code and class bodies have already run; they are not re-run); ``cmp``:
    their comparisons record too.  Functions already instrumented stay as they are.  Returns
    ``mod``.  TypeError if ``mod`` is not a module; ValueError if it has no Python source."""
    _check_cmp(cmp)
    if not isinstance(mod, types.ModuleType):
        raise TypeError(f"kcovx.instrument_module() takes a module, not {type(mod).__name__}")
    filename = getattr(mod, "__file__", None)
    if not filename or not filename.endswith(".py"):
        raise NoSourceError(f"kcovx: module {mod.__name__!r} has no Python source file")
    if mod.__name__.split(".")[0] == "kcovx":
        raise InstrumentError("kcovx: kcovx itself cannot be instrumented")
    try:
        with open(filename, "rb") as f:
            source = f.read()
    except OSError as e:
        raise NoSourceError(f"kcovx: cannot read the source of {mod.__name__!r}: {e}") from None
    unit = instrument_source(source, filename, mod.__name__, cmp=cmp)
    unit.install(mod.__dict__)
    for fn in _functions_of(mod):
        code = fn.__code__
        if _is_instrumented(code) or code.co_filename != filename:
            continue
        new = _counterpart(unit, code)
        if new is not None:  # None: the file changed since; that function stays plain
            fn.__code__ = new
    return mod
