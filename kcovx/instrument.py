"""Instrumentation of Python code: every basic block records its PC through ``trace_pc``.

Owns: the source-to-source rewrite (an ``ast`` transformer), compiling and caching its result,
registering the blocks with ``kcovx.pcs``, and the three ways in: ``instrument_func``,
``instrument_module`` and the ``instrument_imports`` import hook.

How a block records: the rewrite inserts ``__kcovx_pc__(<pc>)`` (a statement, or ``(__kcovx_pc__(
<pc>) or expr)`` inside an expression; the probe returns None so the value is ``expr``) where
``__kcovx_pc__`` is a module global bound to ``kcovx.trace_pc``.  In bytecode that is a
specialised global load, a constant, a call of a METH_O builtin and a pop: no Python frame,
no argument parsing.  Every inserted node carries the source position of the code it
precedes, so line events, tracebacks and positions are those of the original code.

Blocks (what gets a probe): the entry of every module, class body, function, lambda and
comprehension; the first statement of each branch (if/elif/else bodies, loop bodies and
their else, each except/except* handler, finally, each match case); the statement after a
compound statement (a join point: after if/for/while/try/with/match); the right operands of
``and``/``or``; both arms of ``x if c else y``; a match guard; an assert's message; and in
comprehensions each condition and the element.  See README.md, "Instrumentation".

Threading: transforming is pure; registration takes kcovx.pcs' lock; the import hook relies
on the import system's per-module locks.  Nothing here runs on the recording path.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import marshal
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kcovx import pcs
from kcovx._area import trace_pc

__all__ = [
    "PROBE",
    "ImportHook",
    "instrument_func",
    "instrument_imports",
    "instrument_module",
    "instrument_source",
]

PROBE = "__kcovx_pc__"
# Bumped whenever the rewrite changes what it produces: part of the cache key.
REWRITE_VERSION = 1

_BRANCHY = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Try,
    ast.With,
    ast.AsyncWith,
    ast.Match,
    *((ast.TryStar,) if sys.version_info >= (3, 11) else ()),
)
_COMPOUND = (*_BRANCHY, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class _BlockRec:
    scope: int  # index into Unit.scopes
    function: str
    occurrence: int
    ordinal: int
    extent: tuple[int, int, int, int]  # 1-based lines, 1-based columns, end exclusive
    pc: int = 0


@dataclass
class Unit:
    """The instrumented form of one source file."""

    module: str
    filename: str
    code: types.CodeType
    blocks: list[_BlockRec]
    scopes: list[tuple[str, int]]  # (qualname, parent scope index; -1 for the module)
    salted: bool = False  # PCs were moved off PCs other units had: not cached

    def entries(self, scopes: set[int] | None = None) -> list[tuple[pcs.Block, pcs.Ident]]:
        out = []
        for b in self.blocks:
            if scopes is not None and b.scope not in scopes:
                continue
            block = pcs.Block(b.pc, self.filename, b.function, *b.extent)
            ident = (self.module, b.function, b.occurrence, b.ordinal, self.filename, *b.extent)
            out.append((block, ident))
        return out

    def subtree(self, root: int) -> set[int]:
        keep = {root}
        for i, (_, parent) in enumerate(self.scopes):
            if parent in keep or i in keep:
                keep.add(i)
        return keep


def _pos(node: ast.AST) -> tuple[int, int, int, int]:
    n: Any = node
    end_line = n.end_lineno if n.end_lineno is not None else n.lineno
    end_col = n.end_col_offset if n.end_col_offset is not None else n.col_offset
    return (n.lineno, n.col_offset + 1, end_line, end_col + 1)


def _header_end(node: ast.stmt) -> tuple[int, int]:
    """Where the straight-line code ends when a run of statements reaches ``node``."""
    part: ast.AST | None = None
    if isinstance(node, ast.If | ast.While):
        part = node.test
    elif isinstance(node, ast.For | ast.AsyncFor):
        part = node.iter
    elif isinstance(node, ast.With | ast.AsyncWith):
        part = node.items[-1].context_expr
    elif isinstance(node, ast.Match):
        part = node.subject
    if part is not None:
        p = _pos(part)
        return (p[2], p[3])
    return (node.lineno, node.col_offset + 1)


def _run_extent(body: Sequence[ast.stmt], i: int) -> tuple[int, int, int, int]:
    start = _pos(body[i])
    end = (start[2], start[3])
    for stmt in body[i:]:
        if isinstance(stmt, _COMPOUND):
            end = _header_end(stmt) if stmt is body[i] else end
            break
        p = _pos(stmt)
        end = (p[2], p[3])
    return (start[0], start[1], *end)


def _locate(new: ast.AST, at: ast.AST) -> ast.AST:
    for n in ast.walk(new):
        ast.copy_location(n, at)
        n_: Any = n
        a: Any = at
        n_.end_lineno = a.end_lineno
        n_.end_col_offset = a.end_col_offset
    return new


class _Rewriter(ast.NodeTransformer):
    def __init__(self, module: str, avoid: set[int]) -> None:
        self.unit = pcs.unit_hash(module)
        self.avoid = avoid
        self.blocks: list[_BlockRec] = []
        self.scopes: list[tuple[str, int]] = []
        self.stack: list[tuple[int, str, int]] = []  # (scope index, qualname, kind)
        self.occurrences: dict[str, int] = {}
        self.ordinals: list[int] = []
        self.taken: set[int] = set()
        self.occ: dict[int, int] = {}  # scope index -> occurrence of its qualname
        self.salted = False

    # ---- scopes and blocks ------------------------------------------------------------
    def _push(self, name: str, kind: int) -> None:
        # kind: 0 module, 1 class, 2 function-like
        if not self.stack:
            qual = name
        else:
            _, pqual, pkind = self.stack[-1]
            if pkind == 0:
                qual = name
            elif pkind == 1:
                qual = f"{pqual}.{name}"
            else:
                qual = f"{pqual}.<locals>.{name}"
        parent = self.stack[-1][0] if self.stack else -1
        self.scopes.append((qual, parent))
        self.ordinals.append(0)
        self.stack.append((len(self.scopes) - 1, qual, kind))

    def _pop(self) -> None:
        self.stack.pop()

    def _new_pc(self, extent: tuple[int, int, int, int]) -> int:
        index, qual, _ = self.stack[-1]
        if index not in self.occ:
            self.occ[index] = self.occurrences.get(qual, 0)
            self.occurrences[qual] = self.occ[index] + 1
        occ = self.occ[index]
        ordinal = self.ordinals[index]
        self.ordinals[index] += 1
        salt = 0
        while True:
            pc = pcs.block_pc(self.unit, qual, occ, ordinal, salt)
            if pc not in self.taken and pc not in self.avoid:
                break
            if pc in self.avoid:
                self.salted = True
            salt += 1
        self.taken.add(pc)
        self.blocks.append(_BlockRec(index, qual, occ, ordinal, extent, pc))
        return pc

    def _call(self, extent: tuple[int, int, int, int], at: ast.AST) -> ast.Call:
        pc = self._new_pc(extent)
        call = ast.Call(func=ast.Name(PROBE, ast.Load()), args=[ast.Constant(pc)], keywords=[])
        _locate(call, at)
        return call

    def _stmt_probe(self, body: Sequence[ast.stmt], i: int) -> ast.stmt:
        at = body[i]
        stmt = ast.Expr(self._call(_run_extent(body, i), at))
        return _locate_shallow(stmt, at)

    def _expr_probe(self, expr: ast.expr) -> ast.expr:
        call = self._call(_pos(expr), expr)
        out = ast.BoolOp(op=ast.Or(), values=[call, expr])
        return _locate_shallow(out, expr)

    # ---- statement lists ----------------------------------------------------------------
    def _body(self, body: list[ast.stmt], entry: bool, skip: int = 0) -> list[ast.stmt]:
        """Visit ``body``; put a probe at its start (``entry``, after ``skip`` leading
        statements) and after each branching compound statement."""
        out: list[ast.stmt] = []
        need = entry
        for i, stmt in enumerate(body):
            if need and i >= skip:
                out.append(self._stmt_probe(body, i))
                need = False
            visited = self.visit(stmt)
            if isinstance(visited, list):
                out.extend(visited)
            elif visited is not None:
                out.append(visited)
            if isinstance(stmt, _BRANCHY):
                need = True
        if need and entry and body and len(body) <= skip:
            # A body that is only a docstring (or future imports): the entry is still a block.
            last = body[-1]
            probe = ast.Expr(self._call(_pos(last), last))
            out.append(_locate_shallow(probe, last))
        return out

    def _branch(self, body: list[ast.stmt]) -> list[ast.stmt]:
        return self._body(body, entry=bool(body))

    @staticmethod
    def _docstring_len(body: list[ast.stmt]) -> int:
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            return 1
        return 0

    # ---- scopes -------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> ast.Module:
        self._push("<module>", 0)
        skip = self._docstring_len(node.body)
        while (
            skip < len(node.body)
            and isinstance(node.body[skip], ast.ImportFrom)
            and getattr(node.body[skip], "module", None) == "__future__"
        ):
            skip += 1
        node.body = self._body(node.body, entry=True, skip=skip)
        self._pop()
        return node

    def _visit_outer_of_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self.visit(node.args)
        if node.returns is not None:
            node.returns = self.visit(node.returns)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._visit_def(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._visit_def(node)

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._visit_outer_of_def(node)
        self._push(node.name, 2)
        node.body = self._body(node.body, entry=True, skip=self._docstring_len(node.body))
        self._pop()
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node.args = self.visit(node.args)
        self._push("<lambda>", 2)
        node.body = self._expr_probe(self.visit(node.body))
        self._pop()
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        self._push(node.name, 1)
        skip = self._docstring_len(node.body)
        body = self._body(node.body, entry=True, skip=skip)
        # The probe is looked up as a global, never in the class namespace (a custom
        # __prepare__ mapping must not see or create it).
        decl = _locate_shallow(ast.Global(names=[PROBE]), node.body[0])
        node.body = [*body[:skip], decl, *body[skip:]]
        self._pop()
        return node

    def _visit_comp(self, node: Any, name: str, elts: Sequence[str]) -> ast.AST:
        gens: list[ast.comprehension] = node.generators
        # The first iterable is evaluated in the enclosing scope.
        gens[0].iter = self.visit(gens[0].iter)
        self._push(name, 2)
        for k, gen in enumerate(gens):
            if k:
                gen.iter = self.visit(gen.iter)
            gen.target = self.visit(gen.target)
            gen.ifs = [self._expr_probe(self.visit(c)) for c in gen.ifs]
        for attr in elts:
            setattr(node, attr, self.visit(getattr(node, attr)))
        first = elts[0]
        setattr(node, first, self._expr_probe(getattr(node, first)))
        self._pop()
        return node

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._visit_comp(node, "<listcomp>", ("elt",))

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._visit_comp(node, "<setcomp>", ("elt",))

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        return self._visit_comp(node, "<genexpr>", ("elt",))

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._visit_comp(node, "<dictcomp>", ("key", "value"))

    # ---- branches -----------------------------------------------------------------------
    def visit_If(self, node: ast.If) -> ast.AST:
        node.test = self.visit(node.test)
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self.visit(node.test)
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    def _visit_for(self, node: ast.For | ast.AsyncFor) -> ast.AST:
        node.target = self.visit(node.target)
        node.iter = self.visit(node.iter)
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        return self._visit_for(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        return self._visit_for(node)

    def _visit_try(self, node: Any) -> ast.AST:
        node.body = self._body(node.body, entry=False)
        for h in node.handlers:
            if h.type is not None:
                h.type = self.visit(h.type)
            h.body = self._branch(h.body)
        node.orelse = self._body(node.orelse, entry=False)
        node.finalbody = self._branch(node.finalbody)
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        return self._visit_try(node)

    def visit_TryStar(self, node: Any) -> ast.AST:
        return self._visit_try(node)

    def _visit_with(self, node: ast.With | ast.AsyncWith) -> ast.AST:
        node.items = [self.visit(i) for i in node.items]
        node.body = self._body(node.body, entry=False)
        return node

    def visit_With(self, node: ast.With) -> ast.AST:
        return self._visit_with(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        return self._visit_with(node)

    def visit_Match(self, node: ast.Match) -> ast.AST:
        node.subject = self.visit(node.subject)
        for case in node.cases:
            case.pattern = self.visit(case.pattern)
            if case.guard is not None:
                case.guard = self._expr_probe(self.visit(case.guard))
            case.body = self._branch(case.body)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.test = self.visit(node.test)
        if node.msg is not None:
            node.msg = self._expr_probe(self.visit(node.msg))
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        values = [self.visit(v) for v in node.values]
        node.values = [values[0], *(self._expr_probe(v) for v in values[1:])]
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        node.test = self.visit(node.test)
        node.body = self._expr_probe(self.visit(node.body))
        node.orelse = self._expr_probe(self.visit(node.orelse))
        return node


_N = TypeVar("_N", bound=ast.AST)


def _locate_shallow(node: _N, at: ast.AST) -> _N:
    ast.copy_location(node, at)
    n: Any = node
    a: Any = at
    n.end_lineno = a.end_lineno
    n.end_col_offset = a.end_col_offset
    return node


def _rewrite(source: str | bytes, filename: str, module: str, avoid: set[int]) -> Unit:
    tree = ast.parse(source, filename)
    rw = _Rewriter(module, avoid)
    tree = rw.visit(tree)
    ast.fix_missing_locations(tree)
    code = compile(tree, filename, "exec", dont_inherit=True)
    return Unit(module, filename, code, rw.blocks, rw.scopes, rw.salted)


# --------------------------------------------------------------------------------------------
# The code cache: the instrumented code and its blocks, keyed by everything that shapes them.


def _cache_dir() -> str | None:
    d = os.environ.get("KCOVX_CACHE_DIR")
    if d is not None:
        return d or None  # KCOVX_CACHE_DIR="" turns the cache off
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kcovx")


def _cache_key(source: bytes, filename: str, module: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in (
        b"kcovx-code-cache",
        str(REWRITE_VERSION).encode(),
        importlib.util.MAGIC_NUMBER,
        sys.version.encode(),
        module.encode("utf-8", "surrogatepass"),
        filename.encode("utf-8", "surrogatepass"),
        source,
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _cache_load(key: str) -> Unit | None:
    d = _cache_dir()
    if d is None:
        return None
    try:
        with open(os.path.join(d, key), "rb") as f:
            data = marshal.loads(f.read())
        module, filename, code, blocks, scopes = data
        return Unit(
            module,
            filename,
            code,
            [_BlockRec(s, fn, o, n, tuple(e), pc) for s, fn, o, n, e, pc in blocks],  # type: ignore[arg-type]
            [tuple(s) for s in scopes],  # type: ignore[misc]
        )
    except (OSError, EOFError, ValueError, TypeError):
        return None


def _cache_store(key: str, unit: Unit) -> None:
    d = _cache_dir()
    if d is None or unit.salted:
        return
    data = (
        unit.module,
        unit.filename,
        unit.code,
        [(b.scope, b.function, b.occurrence, b.ordinal, b.extent, b.pc) for b in unit.blocks],
        unit.scopes,
    )
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = os.path.join(d, f".{key}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(marshal.dumps(data))
        os.replace(tmp, os.path.join(d, key))
    except OSError:
        pass  # a cache that cannot be written is only slower


def instrument_source(
    source: str | bytes, filename: str, module: str, *, register: bool = True
) -> Unit:
    """Instrument one source file as module ``module`` and (by default) register all its
    blocks.  SyntaxError as ``compile`` raises it."""
    raw = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    key = _cache_key(raw, filename, module)
    unit = _cache_load(key)
    from_cache = unit is not None
    if unit is None:
        unit = _rewrite(source, filename, module, set())
    if not register:
        if not from_cache:
            _cache_store(key, unit)
        return unit
    avoid: set[int] = set()
    while True:
        bad = pcs.register(unit.entries())
        if not bad:
            break
        avoid |= bad
        unit = _rewrite(source, filename, module, avoid)
        from_cache = True  # never cache a unit whose PCs depend on this process
    if not from_cache:
        _cache_store(key, unit)
    return unit


def _register_subtree(unit: Unit, root: int) -> Unit:
    keep = unit.subtree(root)
    bad = pcs.register(unit.entries(keep))
    if bad:
        raise RuntimeError(f"kcovx: PC collision while instrumenting {unit.filename}")
    return unit


# --------------------------------------------------------------------------------------------
# instrument_func / instrument_module


def _iter_code(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _iter_code(c)


def _is_instrumented(code: types.CodeType) -> bool:
    return PROBE in code.co_names


@functools.lru_cache(maxsize=64)
def _unit_for_file(filename: str, module: str, mtime_ns: int, size: int) -> Unit:
    del mtime_ns, size  # part of the cache key only
    with open(filename, "rb") as f:
        source = f.read()
    return instrument_source(source, filename, module, register=False)


def _source_unit(code: types.CodeType, module: str) -> Unit:
    filename = code.co_filename
    try:
        st = os.stat(filename)
    except OSError:
        raise ValueError(
            f"kcovx: no source for {code.co_qualname!r} (file {filename!r} does not exist); "
            "only code compiled from a source file can be instrumented"
        ) from None
    return _unit_for_file(filename, module, st.st_mtime_ns, st.st_size)


def _match(unit: Unit, code: types.CodeType) -> tuple[types.CodeType, int]:
    for new in _iter_code(unit.code):
        if new.co_qualname == code.co_qualname and new.co_firstlineno == code.co_firstlineno:
            if (new.co_freevars, new.co_argcount, new.co_kwonlyargcount) != (
                code.co_freevars,
                code.co_argcount,
                code.co_kwonlyargcount,
            ):
                break
            scope = _scope_of(unit, new)
            return new, scope
    raise ValueError(
        f"kcovx: {code.co_qualname!r} does not match its source file {code.co_filename!r} "
        f"(line {code.co_firstlineno}); was the file changed after it was imported?"
    )


def _scope_of(unit: Unit, code: types.CodeType) -> int:
    # Every function scope has an entry probe, whose PC is a constant of its own code.
    by_pc = {b.pc: b for b in unit.blocks}
    for c in code.co_consts:
        b = by_pc.get(c) if type(c) is int else None
        if b is not None and unit.scopes[b.scope][0] == code.co_qualname:
            return b.scope
    raise ValueError(f"kcovx: no blocks for {code.co_qualname!r}")


_F = TypeVar("_F")


def instrument_func(func: _F) -> _F:
    """Instrument ``func`` in place (its ``__code__`` is replaced) and return it, so it also
    works as a decorator.  Accepts functions, methods (their function is instrumented),
    staticmethod and classmethod objects.  Nested functions and comprehensions defined in it
    are instrumented too.  Idempotent.  TypeError for anything else; ValueError when the
    function's source file is not available or no longer matches it."""
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
        return func
    module = target.__module__ or "__main__"
    unit = _source_unit(code, module)
    new, scope = _match(unit, code)
    _register_subtree(unit, scope)
    target.__globals__[PROBE] = trace_pc
    target.__code__ = new
    return func


def _functions_of(mod: types.ModuleType) -> Iterator[types.FunctionType]:
    seen: set[int] = set()
    name = mod.__name__

    def walk(ns: Any, depth: int) -> Iterator[types.FunctionType]:
        for item in list(ns.values()):
            value = item
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if isinstance(value, property):
                for f in (value.fget, value.fset, value.fdel):
                    if isinstance(f, types.FunctionType) and f.__module__ == name:
                        yield f
                continue
            if isinstance(value, types.FunctionType):
                if value.__module__ == name:
                    yield value
            elif isinstance(value, type) and value.__module__ == name and depth < 32:
                yield from walk(value.__dict__, depth + 1)

    yield from walk(mod.__dict__, 0)


def instrument_module(mod: types.ModuleType) -> types.ModuleType:
    """Instrument every function and method defined in the already imported module ``mod``
    (module-level code and class bodies have already run; they are not re-run).  Returns
    ``mod``.  TypeError if ``mod`` is not a module; ValueError if it has no Python source."""
    if not isinstance(mod, types.ModuleType):
        raise TypeError(f"kcovx.instrument_module() takes a module, not {type(mod).__name__}")
    filename = getattr(mod, "__file__", None)
    if not filename or not filename.endswith(".py"):
        raise ValueError(f"kcovx: module {mod.__name__!r} has no Python source file")
    if mod.__name__.split(".")[0] == "kcovx":
        raise ValueError("kcovx: kcovx itself cannot be instrumented")
    with open(filename, "rb") as f:
        source = f.read()
    unit = instrument_source(source, filename, mod.__name__)
    mod.__dict__[PROBE] = trace_pc
    by_key = {(c.co_qualname, c.co_firstlineno): c for c in _iter_code(unit.code)}
    for f in _functions_of(mod):
        code = f.__code__
        if _is_instrumented(code) or code.co_filename != filename:
            continue
        new = by_key.get((code.co_qualname, code.co_firstlineno))
        if new is not None and new.co_freevars == code.co_freevars:
            f.__code__ = new
    return mod


# --------------------------------------------------------------------------------------------
# The import hook


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _site_dirs() -> list[str]:
    dirs = set()
    for key in ("purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(sysconfig.get_paths()[key])
    with contextlib.suppress(AttributeError):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        dirs.add(site.getusersitepackages())
    return sorted(_norm(d) + os.sep for d in dirs if d)


def _stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({_norm(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths})


_KCOVX_DIR = _norm(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _name_matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


@dataclass
class ImportHook(importlib.abc.MetaPathFinder):
    """A meta path finder that instruments the source modules it matches.

    A module matches when its name matches an ``include`` pattern (fnmatch on the dotted
    name; ``pkg`` also matches ``pkg.sub``), or, with no ``include``, when its file lies under
    ``directory`` (default: the current directory) but not in a site-packages folder; and no
    ``exclude`` pattern matches.  The standard library is instrumented only when an include
    pattern names it, kcovx itself never.  Only modules loaded from ``.py`` sources are
    instrumented; extension modules and sourceless ``.pyc`` are left alone."""

    include: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    directory: str | None = None
    always: Sequence[str] = ()  # names instrumented whatever include says (kcovx run's main)
    _dir: str = field(init=False, default="")
    _site: list[str] = field(init=False, default_factory=list)
    _stdlib: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError("include and exclude take a list of patterns, not a string")
        for p in [*(self.include or ()), *self.exclude, *self.always]:
            if not isinstance(p, str) or not p:
                raise TypeError(f"module name patterns must be non-empty strings, got {p!r}")
        self.include = list(self.include) if self.include is not None else None
        self.exclude = list(self.exclude)
        self._dir = _norm(self.directory or os.getcwd()) + os.sep
        self._site = _site_dirs()
        self._stdlib = _stdlib_dirs()

    def matches(self, name: str, origin: str) -> bool:
        """Whether the module ``name`` loaded from file ``origin`` is instrumented."""
        path = _norm(origin)
        if path.startswith(_KCOVX_DIR) or name == "kcovx" or name.startswith("kcovx."):
            return False
        if _name_matches(name, self.exclude):
            return False
        if _name_matches(name, self.always):
            return True
        if self.include:
            return _name_matches(name, self.include)
        in_site = any(path.startswith(d) for d in self._site)
        in_stdlib = any(path.startswith(d) for d in self._stdlib) and not in_site
        return path.startswith(self._dir) and not in_site and not in_stdlib

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if self.include and not (
            _name_matches(fullname, self.include) or _name_matches(fullname, self.always)
        ):
            return None
        spec = None
        found = False
        for finder in sys.meta_path:
            if finder is self:
                found = True
                continue
            if not found or isinstance(finder, ImportHook):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.origin is None:
            return None
        if type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None
        if not self.matches(fullname, spec.origin):
            return None
        spec.loader = _Loader(fullname, spec.origin)
        return spec

    def install(self) -> ImportHook:
        sys.meta_path.insert(0, self)
        importlib.invalidate_caches()
        return self

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


class _Loader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose code is the instrumented form of the source (cached by kcovx,
    never written to __pycache__)."""

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        source = self.get_data(path)
        return instrument_source(source, path, fullname).code

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__[PROBE] = trace_pc
        super().exec_module(module)


@contextlib.contextmanager
def instrument_imports(
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    *,
    directory: str | None = None,
) -> Iterator[ImportHook]:
    """Instrument the modules imported inside the ``with`` block that match (see
    ``ImportHook``).  Modules already in ``sys.modules`` are not re-imported; use
    ``instrument_module`` for those."""
    hook = ImportHook(include, exclude, directory).install()
    try:
        yield hook
    finally:
        hook.remove()


def run_code(unit: Unit, globals_: dict[str, Any]) -> None:
    globals_[PROBE] = trace_pc
    exec(unit.code, globals_)
