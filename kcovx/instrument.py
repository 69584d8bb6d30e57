"""Instrumentation of Python code: every basic block records its PC as ``trace_pc`` would.

Owns: the source-to-source rewrite (an ``ast`` transformer), compiling and caching its result,
registering the blocks with ``kcovx.pcs``, and the three ways in: ``instrument_func``,
``instrument_module`` and the ``instrument_imports`` import hook.

How a block records: each instrumented unit (one source file as one module) gets a probe
name ``__kcovx_pc_<tag>__`` (tag: from its module, file and source) bound in the module's
globals to the unit's ``kcovx._area.Probe``; the rewrite inserts ``__kcovx_pc_<tag>__[i]``
(i: the block's index in the unit; the probe's subscript records the unit's i-th PC through
the same recorder as ``trace_pc`` and evaluates to None): a statement before a statement;
inside an expression ``probe[i] or expr``, or where that would change line events (see
_expr_probe) ``(probe[i], expr)[1]``, or ``probe[i] is not None or cmp`` before a comparison
whose value is only tested.  In bytecode that is a specialised global load, a small
constant, a subscript of a C object and a pop: no call (on 3.11 a call of a builtin would
count against the recursion limit), no Python frame, no multi-digit int conversion.  Every
inserted node carries the position of the first instruction of the code it precedes (found
by compiling that code alone when it spans lines), so line events (sys.settrace,
coverage.py), tracebacks and positions are those of the original code; annotations are
left alone.  Blocks are named with the qualified names CPython gives the code objects.

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
import copy
import dis
import fnmatch
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import types
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from kcovx import pcs
from kcovx._area import Probe

__all__ = [
    "PROBE",
    "ImportHook",
    "instrument_func",
    "instrument_imports",
    "instrument_module",
    "instrument_source",
]

# Every name instrumented code records through starts with this; the full name is per unit
# (``__kcovx_pc_<tag>__``, tag from the unit's module, file and source) and bound, in the
# module's globals, to the unit's ``Probe``: ``probe[i]`` records the unit's i-th PC.
PROBE = "__kcovx_pc"
# Bumped whenever the rewrite changes what it produces: part of the cache key.
REWRITE_VERSION = 2

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
    probe_name: str = ""
    salted: bool = False  # PCs were moved off PCs other units had: not cached
    _probe: Probe | None = None

    def probe(self) -> Probe:
        """The unit's recorder (built once): index i records ``blocks[i].pc``."""
        if self._probe is None:
            self._probe = Probe([b.pc for b in self.blocks])
        return self._probe

    def install(self, globals_: dict[str, Any]) -> None:
        """Bind the unit's probe name in the globals its code runs with."""
        globals_[self.probe_name] = self.probe()

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
    """``node``'s extent as a block reports it: 1-based columns (see ``_loc``)."""
    line, col, end_line, end_col = _loc(node)
    return (line, col + 1, end_line, end_col + 1)


def _start(node: ast.stmt) -> tuple[int, int]:
    """Where a statement's source starts (1-based column): a decorated definition starts at
    its first decorator (whose ``@`` is in the statement's column)."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        return (decorators[0].lineno, node.col_offset + 1)
    return (node.lineno, node.col_offset + 1)


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
    start = _start(body[i])
    p = _pos(body[i])
    end = (p[2], p[3])
    for stmt in body[i:]:
        if isinstance(stmt, _COMPOUND):
            end = _header_end(stmt) if stmt is body[i] else end
            break
        p = _pos(stmt)
        end = (p[2], p[3])
    return (*start, *end)


_N = TypeVar("_N", bound=ast.AST)


def _locate_shallow(node: _N, at: ast.AST) -> _N:
    ast.copy_location(node, at)
    n: Any = node
    a: Any = at
    n.end_lineno = a.end_lineno
    n.end_col_offset = a.end_col_offset
    return node


# Where a probe is placed in the line table: (lineno, col_offset, end_lineno, end_col_offset)
# as in the ast (0-based columns).  A probe carries the position of the first instruction of
# the code it precedes, so it starts no line of its own: line events (sys.settrace,
# coverage.py), f_lineno and tracebacks are those of the original code.
_Loc = tuple[int, int, int, int]

_NO_CODE = (ast.Global, ast.Nonlocal)  # statements that compile to no instruction


def _loc(node: ast.AST) -> _Loc:
    n: Any = node
    end_line = n.end_lineno if n.end_lineno is not None else n.lineno
    end_col = n.end_col_offset if n.end_col_offset is not None else n.col_offset
    return (n.lineno, n.col_offset, end_line, end_col)


def _header_only(stmt: ast.stmt) -> ast.stmt:
    """A shallow copy of ``stmt`` with every nested body replaced by ``pass``: what it
    compiles to up to its first nested statement is the same."""
    if not isinstance(stmt, _COMPOUND):
        return stmt
    placeholder: list[ast.stmt] = [ast.Pass()]
    new: Any = copy.copy(stmt)
    for name in ("body", "orelse", "finalbody"):
        if getattr(new, name, None):
            setattr(new, name, placeholder)
    if getattr(new, "handlers", None):
        new.handlers = [_with_body(h, placeholder) for h in new.handlers]
    if isinstance(new, ast.Match):
        new.cases = [_with_body(c, placeholder) for c in new.cases]
    return cast(ast.stmt, new)


def _with_body(node: _N, body: list[ast.stmt]) -> _N:
    new: Any = copy.copy(node)
    new.body = body
    return cast(_N, new)


_NO_LOC: _Loc = (-1, -1, -1, -1)  # no position: CPython gives the previous instruction's


def _compiled_span(node: ast.stmt | ast.expr) -> tuple[_Loc, _Loc, _Loc] | None:
    """The positions of the first instruction CPython compiles ``node`` to (a statement: up
    to its first nested statement), of the first that has a position, and of the last,
    found by compiling it alone in a throwaway function; the first is _NO_LOC when CPython
    gives it no position of its own.  None if that fails or there is no instruction."""
    first_line = _start(node)[0] if isinstance(node, ast.stmt) else node.lineno
    last_line = _loc(node)[2]
    outside = (last_line + 1, 0, last_line + 1, 0)  # the wrapper's own instructions
    stmt: ast.stmt
    if isinstance(node, ast.stmt):
        stmt = _header_only(node)
        for n in ast.walk(stmt):
            if isinstance(n, ast.Pass) and not hasattr(n, "lineno"):
                _locate(n, outside)
    else:
        stmt = ast.Expr(node)
        stmt.lineno, stmt.col_offset, stmt.end_lineno, stmt.end_col_offset = outside
    # while _: (if _: _()) stmt -- a loop for break/continue, and a join before the
    # statement so that its first instruction cannot take a position from before it.
    call = ast.Expr(ast.Call(ast.Name("_", ast.Load()), [], []))
    join = ast.If(test=ast.Name("_", ast.Load()), body=[call], orelse=[])
    loop = ast.While(test=ast.Name("_", ast.Load()), body=[join], orelse=[])
    _locate(loop, outside)
    loop.body.append(stmt)
    extra: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}
    for kind in (ast.FunctionDef, ast.AsyncFunctionDef):
        args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        fn = kind(name="_", args=args, body=[loop], decorator_list=[], returns=None, **extra)
        _locate_shallow(fn, loop)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = compile(ast.Module(body=[fn], type_ignores=[]), "<kcovx>", "exec")
        except (SyntaxError, ValueError, TypeError):
            continue  # e.g. await outside an async function: try the async form
        inner = next(c for c in code.co_consts if isinstance(c, types.CodeType))
        positions = list(inner.co_positions())
        i = 0
        while i < len(positions) and positions[i][0] == outside[0]:
            i += 1  # the function's start and the loop's test
        mine = []
        while i < len(positions) and positions[i][0] != outside[0]:
            mine.append(positions[i])
            i += 1
        placed = [
            (line, col or 0, end_line or line, end_col or 0)
            for line, end_line, col, end_col in mine
            if line is not None
        ]
        if not placed or not first_line <= placed[0][0] <= last_line:
            return None
        return (placed[0] if mine[0][0] is not None else _NO_LOC), placed[0], placed[-1]
    return None


# Nodes whose code starts with their ``value``'s.
_VALUE_FIRST = (
    ast.Assign,
    ast.AnnAssign,
    ast.Return,
    ast.Expr,
    ast.NamedExpr,
    ast.Await,
    ast.Attribute,
    ast.Subscript,
    ast.Starred,
)


def _unplaced_format(node: ast.AST) -> bool:
    """Whether ``node`` is ``'text ...' % (...)``, which CPython turns into an f-string whose
    leading text has no position (it takes the previous instruction's)."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mod)
        and isinstance(node.left, ast.Constant)
        and isinstance(node.left.value, str)
        and isinstance(node.right, ast.Tuple)
    )


def _joins_matter(stmt: ast.stmt) -> bool:
    """Whether a join of jumps added in ``stmt``'s own expressions (or in its test, before
    its first nested statement) could come right before an instruction without a position,
    which would then no longer take the line of the code before it (see _unplaced_format)."""
    header = _header_only(stmt)
    if any(_unplaced_format(n) for n in ast.walk(header)):
        return True
    bodies = [getattr(stmt, name, None) for name in ("body", "orelse")]
    return any(_unplaced_start(body[0]) for body in bodies if isinstance(body, list) and body)


def _unplaced_start(node: ast.AST) -> bool:
    """Whether the code of ``node`` may start with an instruction CPython gives no position:
    ``'text %s' % (x,)`` evaluated first becomes an f-string whose leading text has none."""
    n: Any = node
    while True:
        if _unplaced_format(n):
            return True
        if isinstance(n, ast.BinOp):
            n = n.left
        elif isinstance(n, _VALUE_FIRST):
            n = n.value
        elif isinstance(n, ast.Raise | ast.Yield | ast.YieldFrom):
            n = n.exc if isinstance(n, ast.Raise) else n.value
        elif isinstance(n, ast.List | ast.Tuple | ast.Set) and n.elts:
            n = n.elts[0]
        elif isinstance(n, ast.Dict) and n.values:
            n = n.keys[0] if n.keys[0] is not None else n.values[0]
        elif isinstance(n, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            n = n.generators[0].iter
        elif isinstance(n, ast.Assert):
            n = n.test
        elif isinstance(n, ast.Call):
            n = n.func
        elif isinstance(n, ast.Compare):
            n = n.left
        elif isinstance(n, ast.BoolOp):
            n = n.values[0]
        elif isinstance(n, ast.IfExp):
            n = n.test
        elif isinstance(n, ast.UnaryOp):
            n = n.operand
        else:
            return False


def _first_loc(node: ast.stmt | ast.expr) -> _Loc:
    """Where the first instruction of ``node`` is (see ``_Loc``)."""
    if isinstance(node, ast.expr):
        return _first_loc_of_expr(node)
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        return _first_loc(decorators[0])
    part: ast.expr | None = None
    if isinstance(node, ast.If | ast.While):
        part = node.test
    elif isinstance(node, ast.For | ast.AsyncFor):
        part = node.iter
    elif isinstance(node, ast.With | ast.AsyncWith):
        part = node.items[0].context_expr
    elif isinstance(node, ast.Match):
        part = node.subject
    if part is not None:
        return _first_loc(part)
    whole = _loc(node)
    if isinstance(node, ast.Try | ast.TryStar) or (
        isinstance(node, ast.ClassDef) and not getattr(node, "type_params", None)
    ):
        return whole  # a NOP / LOAD_BUILD_CLASS on the statement's first line comes first
    if whole[0] == whole[2] and not _unplaced_start(node):
        return whole
    span = _compiled_span(node)
    return span[0] if span else whole


def _first_loc_of_expr(node: ast.expr) -> _Loc:
    if node.lineno == node.end_lineno and not _unplaced_start(node):
        return _loc(node)
    span = _compiled_span(node)
    return span[0] if span else _loc(node)


def _last_loc(node: ast.expr) -> _Loc:
    """Where the last instruction of ``node`` is (see ``_Loc``)."""
    if node.lineno == node.end_lineno:
        return _loc(node)
    span = _compiled_span(node)
    return span[2] if span else _loc(node)


def _place(node: _N, at: _Loc) -> _N:
    """Give ``node`` (not its children) the position ``at``."""
    n: Any = node
    n.lineno, n.col_offset, n.end_lineno, n.end_col_offset = at
    return node


def _locate(new: ast.AST, at: _Loc) -> ast.AST:
    for n in ast.walk(new):
        n_: Any = n
        n_.lineno, n_.col_offset, n_.end_lineno, n_.end_col_offset = at
    return new


def _jump_loc(call: ast.expr, expr: ast.expr) -> _Loc:
    """Where the jump after a probe goes: at the probe, or when the probe has no position
    (see _NO_LOC) at the first instruction of ``expr`` that has one (3.13's compiler
    miscounts the stack at some position-less jumps)."""
    at = _loc(call)
    if at != _NO_LOC:
        return at
    span = _compiled_span(expr)
    return span[1] if span else _loc(expr)


def _constant(expr: ast.expr) -> bool:
    """Whether CPython folds ``expr`` to a constant."""
    if isinstance(expr, ast.Constant):
        return True
    if isinstance(expr, ast.Name):
        return expr.id == "__debug__"
    if isinstance(expr, ast.UnaryOp):
        return _constant(expr.operand)
    if isinstance(expr, ast.BinOp):
        return _constant(expr.left) and _constant(expr.right)
    if isinstance(expr, ast.Tuple):
        return all(_constant(e) for e in expr.elts)
    return False


def _then(call: ast.expr, expr: ast.expr, tested: bool) -> ast.expr:
    """``(call, expr)[1]``: ``call`` then ``expr``'s value, with no jump (see _expr_probe
    for why that matters).  The tuple and the index sit where ``expr`` ends; when ``expr``
    is ``tested``, 3.12+ puts the jump after it at the position of the expression tested,
    the index."""
    end = _last_loc(expr)
    pair = _place(ast.Tuple(elts=[call, expr], ctx=ast.Load()), end)
    index = _place(ast.Constant(1), end)
    at = _loc(expr) if tested and sys.version_info >= (3, 12) else end
    return _place(ast.Subscript(value=pair, slice=index, ctx=ast.Load()), at)


# CPython 3.12 starts a line event at a jump target reached straight after a call into
# Python code, even on the same line: a probe must not add such a target.
_JOIN_AFTER_CALL = sys.version_info[:2] == (3, 12)

# CPython 3.11 sets the position of a statement's jumps at each tested comparison and keeps it.
_SETS_POSITION = sys.version_info < (3, 12)

# Scope kinds, for qualified names as CPython makes them (compiler_set_qualname).
_MODULE, _CLASS, _FUNCTION, _COMPREHENSION, _INLINED = range(5)
# 3.12+ inlines list/set/dict comprehensions (PEP 709): they are no scope in qualnames.
_INLINED_COMPS = sys.version_info >= (3, 12)


def _declared_globals(body: Sequence[ast.stmt]) -> frozenset[str]:
    """The names a function or class body declares ``global`` (not in nested scopes)."""
    out: set[str] = set()
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Global):
            out.update(node.names)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            todo.extend(
                c
                for c in ast.iter_child_nodes(node)
                if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case)
            )
    return frozenset(out)


class _Rewriter(ast.NodeTransformer):
    def __init__(self, module: str, avoid: set[int], probe_name: str) -> None:
        self.probe_name = probe_name
        self.unit = pcs.unit_hash(module)
        self.avoid = avoid
        self.blocks: list[_BlockRec] = []
        self.scopes: list[tuple[str, int]] = []
        # (scope index, qualname, kind, names the scope declares global)
        self.stack: list[tuple[int, str, int, frozenset[str]]] = []
        self.occurrences: dict[str, int] = {}
        self.ordinals: list[int] = []
        self.taken: set[int] = set()
        self.occ: dict[int, int] = {}  # scope index -> occurrence of its qualname
        self.salted = False
        # ids of the expressions whose value is only tested for truth (compiled to jumps)
        self.tested: set[int] = set()
        # ids of those whose test, when true, goes on to code that may start with an
        # instruction without a position (see _unplaced_format)
        self.unplaced_then: set[int] = set()
        # ids of those tested expressions that are part of a test spanning lines
        # False while visiting a statement where a probe must add no join (_joins_matter)
        self.joins_ok = True
        # ids of the expressions whose value is used and followed by a join of jumps
        self.joined: set[int] = set()

    # ---- scopes and blocks ------------------------------------------------------------
    def _push(
        self, name: str, kind: int, body: Sequence[ast.stmt] = (), is_def: bool = False
    ) -> None:
        """Enter a scope; its qualified name is the one CPython gives its code object
        (``is_def``: a def or class statement, whose name may be declared global)."""
        outer = [e for e in self.stack if e[2] != _INLINED]
        if not outer or outer[-1][2] == _MODULE or (is_def and name in self.stack[-1][3]):
            qual = name
        elif outer[-1][2] == _FUNCTION:
            qual = f"{outer[-1][1]}.<locals>.{name}"
        else:
            qual = f"{outer[-1][1]}.{name}"
        parent = self.stack[-1][0] if self.stack else -1
        self.scopes.append((qual, parent))
        self.ordinals.append(0)
        declared = _declared_globals(body) if kind in (_FUNCTION, _CLASS) else frozenset()
        self.stack.append((len(self.scopes) - 1, qual, kind, declared))

    def _pop(self) -> None:
        self.stack.pop()

    def _new_pc(self, extent: tuple[int, int, int, int]) -> int:
        index, qual, _, _ = self.stack[-1]
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

    def _call(self, extent: tuple[int, int, int, int], at: _Loc) -> ast.expr:
        """The probe of a new block: ``__kcovx_pc_<tag>__[i]``, i its index in the unit."""
        index = len(self.blocks)
        self._new_pc(extent)
        call = ast.Subscript(
            value=ast.Name(self.probe_name, ast.Load()), slice=ast.Constant(index), ctx=ast.Load()
        )
        _locate(call, at)
        return call

    def _probe_stmt(self, extent: tuple[int, int, int, int], at: _Loc) -> ast.stmt:
        return cast(ast.stmt, _locate(ast.Expr(self._call(extent, at)), at))

    def _stmt_probe(self, body: Sequence[ast.stmt], i: int) -> ast.stmt:
        return self._probe_stmt(_run_extent(body, i), _first_loc(body[i]))

    def _expr_probe(
        self, expr: ast.expr, test: bool = False, joined: bool = False, body_arm: bool = False
    ) -> ast.expr:
        """``expr`` preceded by a probe; ``test``: its value is only tested for truth;
        ``joined``: its value is used and the code after it is a join of jumps (the last
        operand of ``and``/``or``, the ``else`` arm of such an ``x if c else y``);
        ``body_arm``: it is the ``x`` of ``x if c else y``."""
        call = self._call(_pos(expr), _first_loc(expr))
        if test:
            return self._probe_leaf(expr, call)
        # ``probe(pc) or expr`` (cheapest) puts a join of jumps after ``expr``.  CPython can
        # start an extra line event at a join on the same line: 3.12 when it is reached
        # straight after a call into Python code (so only where a join already is), 3.11 and
        # 3.13 when it is followed by the position-less jump that ends a conditional's body.
        if joined if _JOIN_AFTER_CALL else (not body_arm and self.joins_ok):
            return _place(ast.BoolOp(op=ast.Or(), values=[call, expr]), _jump_loc(call, expr))
        return self._probe_value(expr, call)

    def _probe_value(self, expr: ast.expr, call: ast.expr) -> ast.expr:
        """Put ``call`` before ``expr``, whose value is used.  It goes in front of the part
        CPython evaluates first when ``expr`` ends with a join of jumps (``x if c else y``,
        ``a or b``): a tuple after such a join would move the position at the join."""
        if isinstance(expr, ast.IfExp):
            expr.test = self._probe_leaf(expr.test, call)
            return expr
        if isinstance(expr, ast.BoolOp):
            expr.values[0] = self._probe_value(expr.values[0], call)
            return expr
        return _then(call, expr, tested=False)

    def _probe_leaf(self, expr: ast.expr, call: ast.expr) -> ast.expr:
        """Put ``call`` before the part CPython evaluates first in a tested ``expr``.  That
        is ``(probe(pc), e)[1]``, which adds no jump: the jump after it takes the position of
        the expression tested (3.12+), or the position current in the statement (3.11).  But
        3.11 sets the current position at each tested comparison and keeps it (across tests
        of the statement), and both make their own jumps for a chain of comparisons: there
        the probe joins the comparison as ``probe(pc) is not None or cmp``, so that it is
        still compiled as tested (the probe's jump sits on the probe's line).  That jump
        gives the code after the test one more way in, which matters only where a
        position-less instruction could follow (see joins_ok)."""
        if isinstance(expr, ast.BoolOp):
            expr.values[0] = self._probe_leaf(expr.values[0], call)
            return expr
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
            expr.operand = self._probe_leaf(expr.operand, call)
            return expr
        if isinstance(expr, ast.IfExp):
            expr.test = self._probe_leaf(expr.test, call)
            return expr
        if (
            isinstance(expr, ast.Compare)
            and (_SETS_POSITION or len(expr.ops) > 1)
            and id(expr) not in self.unplaced_then
        ):
            at = _jump_loc(call, expr)
            none = _place(ast.Constant(None), at)
            check = _place(ast.Compare(left=call, ops=[ast.IsNot()], comparators=[none]), at)
            out = ast.BoolOp(op=ast.Or(), values=[check, expr])
            return _locate_shallow(out, expr)
        return _then(call, expr, tested=True)

    # ---- statement lists ----------------------------------------------------------------
    def _body(
        self, body: list[ast.stmt], entry: bool, skip: int = 0, empty_at: _Loc | None = None
    ) -> list[ast.stmt]:
        """Visit ``body``; put a probe at its start (``entry``, after ``skip`` leading
        statements) and after each branching compound statement.  A probe goes before the
        next statement that compiles to code (not before ``global``/``nonlocal``); when no
        statement does, an entry probe goes last, at ``empty_at`` (where the code of an
        empty body is; default: the last statement), and a join point gets none."""
        out: list[ast.stmt] = []
        need = entry
        for i, stmt in enumerate(body):
            if need and i >= skip and not self._no_code(stmt):
                out.append(self._stmt_probe(body, i))
                need = entry = False
            joins_ok, self.joins_ok = self.joins_ok, not _joins_matter(stmt)
            visited = self.visit(stmt)
            self.joins_ok = joins_ok
            if isinstance(visited, list):
                out.extend(visited)
            elif visited is not None:
                out.append(visited)
            if isinstance(stmt, _BRANCHY):
                need = True
        if entry and body:
            # A body that is only a docstring (or future imports, or global declarations):
            # the entry is still a block.
            last = body[-1]
            out.append(self._probe_stmt(_pos(last), empty_at or _loc(last)))
        return out

    def _no_code(self, stmt: ast.stmt) -> bool:
        """Whether ``stmt`` compiles to no instruction: a declaration, or in a function a
        bare annotation of a name (``x: int``)."""
        if isinstance(stmt, _NO_CODE):
            return True
        return (
            isinstance(stmt, ast.AnnAssign)
            and stmt.value is None
            and isinstance(stmt.target, ast.Name)
            and self.stack[-1][2] == _FUNCTION
        )

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
        self._push("<module>", _MODULE)
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

    def _visit_defaults(self, args: ast.arguments) -> None:
        # Annotations are not instrumented: they are no control flow, and with
        # ``from __future__ import annotations`` their source text is their value.
        args.defaults = [self.visit(d) for d in args.defaults]
        args.kw_defaults = [None if d is None else self.visit(d) for d in args.kw_defaults]

    def _visit_outer_of_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        self._visit_defaults(node.args)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        node.target = self.visit(node.target)
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._visit_def(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._visit_def(node)

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._visit_outer_of_def(node)
        self._push(node.name, _FUNCTION, node.body, is_def=True)
        # A body without code (only a docstring) returns from the function's first line.
        first = _start(node)[0]
        node.body = self._body(
            node.body,
            entry=True,
            skip=self._docstring_len(node.body),
            empty_at=(first, 0, first, 0),
        )
        self._pop()
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self._visit_defaults(node.args)
        self._push("<lambda>", _FUNCTION)
        node.body = self._expr_probe(self.visit(node.body))
        self._pop()
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        self._push(node.name, _CLASS, node.body, is_def=True)
        skip = self._docstring_len(node.body)
        # Without a docstring, a class body's first code (storing __module__) is on the
        # class statement's line.
        first = _start(node)[0]
        empty_at = None if skip else (first, 0, first, 0)
        body = self._body(node.body, entry=True, skip=skip, empty_at=empty_at)
        # The probe is looked up as a global, never in the class namespace (a custom
        # __prepare__ mapping must not see or create it).
        decl = _locate_shallow(ast.Global(names=[self.probe_name]), node.body[0])
        node.body = [*body[:skip], decl, *body[skip:]]
        self._pop()
        return node

    def _visit_comp(self, node: Any, name: str, elts: Sequence[str]) -> ast.AST:
        gens: list[ast.comprehension] = node.generators
        # The first iterable is evaluated in the enclosing scope.
        gens[0].iter = self.visit(gens[0].iter)
        inlined = _INLINED_COMPS and not isinstance(node, ast.GeneratorExp)
        self._push(name, _INLINED if inlined else _COMPREHENSION)
        for k, gen in enumerate(gens):
            if k:
                gen.iter = self.visit(gen.iter)
            gen.target = self.visit(gen.target)
            nexts: list[ast.expr] = [*gen.ifs[1:], *(g.iter for g in gens[k + 1 : k + 2])]
            nexts.append(getattr(node, elts[0]))
            gen.ifs = [
                self._expr_probe(self._visit_test(c, nexts[i]), test=True)
                for i, c in enumerate(gen.ifs)
            ]
        for attr in elts:
            setattr(node, attr, self.visit(getattr(node, attr)))
        first = elts[0]
        element = getattr(node, first)
        # A join after an element spanning lines would carry the element's first line to
        # the append after it (a line event of its own on 3.11/3.13): no jump there.
        multi_line = element.lineno != element.end_lineno
        setattr(node, first, self._expr_probe(element, body_arm=multi_line))
        self._pop()
        return cast(ast.AST, node)

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._visit_comp(node, "<listcomp>", ("elt",))

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._visit_comp(node, "<setcomp>", ("elt",))

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        return self._visit_comp(node, "<genexpr>", ("elt",))

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._visit_comp(node, "<dictcomp>", ("key", "value"))

    # ---- branches -----------------------------------------------------------------------
    def _visit_test(self, node: ast.expr, then: ast.AST | None = None) -> Any:
        """Visit an expression whose value is only tested for truth; so are the operands of
        ``and``/``or``/``not`` and the arms of ``x if c else y`` in it (CPython compiles them
        to jumps: a probe there must not be a value, see _expr_probe).  ``then``: the code
        the test goes on to when true."""
        todo = [(node, then is not None and _unplaced_start(then))]
        while todo:
            e, unplaced = todo.pop()
            self.tested.add(id(e))
            if unplaced:
                self.unplaced_then.add(id(e))
            if isinstance(e, ast.BoolOp):
                for i, v in enumerate(e.values):
                    nxt = e.values[i + 1] if i + 1 < len(e.values) else None
                    and_next = isinstance(e.op, ast.And) and nxt is not None
                    todo.append((v, _unplaced_start(nxt) if nxt and and_next else unplaced))
            elif isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
                todo.append((e.operand, unplaced))
            elif isinstance(e, ast.IfExp):
                todo.extend(((e.body, unplaced), (e.orelse, unplaced)))
        return self.visit(node)

    def visit_If(self, node: ast.If) -> ast.AST:
        node.test = self._visit_test(node.test, node.body[0])
        node.body = self._branch(node.body)
        node.orelse = self._branch(node.orelse)
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self._visit_test(node.test, node.body[0])
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
        return cast(ast.AST, node)

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
                guard = self._visit_test(case.guard, case.body[0])
                case.guard = self._expr_probe(guard, test=True)
            case.body = self._branch(case.body)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.test = self._visit_test(node.test)
        if node.msg is not None:
            node.msg = self._expr_probe(self.visit(node.msg))
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        test = id(node) in self.tested
        # The join after the last operand is only there if a jump to it is: CPython drops
        # the jumps after operands that are constants.
        if not test and not all(_constant(v) for v in node.values[:-1]):
            self.joined.add(id(node.values[-1]))
        joined = [id(v) in self.joined for v in node.values]
        values = [self.visit(v) for v in node.values]
        node.values = [
            values[0],
            *(self._expr_probe(v, test, joined[i]) for i, v in enumerate(values) if i),
        ]
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        test = id(node) in self.tested
        joined = id(node) in self.joined  # then so is the else arm, which ends it
        if joined:
            self.joined.add(id(node.orelse))
        node.test = self._visit_test(node.test, node.body)
        node.body = self._expr_probe(self.visit(node.body), test, body_arm=True)
        node.orelse = self._expr_probe(self.visit(node.orelse), test, joined)
        return node


def _probe_name(source: str | bytes, filename: str, module: str) -> str:
    raw = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    h = hashlib.blake2b(digest_size=4)
    for part in (
        module.encode("utf-8", "surrogatepass"),
        filename.encode("utf-8", "surrogatepass"),
        raw,
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return f"{PROBE}_{h.hexdigest()}__"


def _rewrite(source: str | bytes, filename: str, module: str, avoid: set[int]) -> Unit:
    tree = ast.parse(source, filename)
    name = _probe_name(source, filename, module)
    rw = _Rewriter(module, avoid, name)
    tree = rw.visit(tree)
    ast.fix_missing_locations(tree)
    code = compile(tree, filename, "exec", dont_inherit=True)
    return Unit(module, filename, code, rw.blocks, rw.scopes, name, rw.salted)


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
        module, filename, code, blocks, scopes, probe_name = data
        return Unit(
            module,
            filename,
            code,
            [_BlockRec(s, fn, o, n, tuple(e), pc) for s, fn, o, n, e, pc in blocks],
            [tuple(s) for s in scopes],
            probe_name,
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
        unit.probe_name,
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
    return any(n.startswith(PROBE) for n in code.co_names)


@functools.lru_cache(maxsize=64)
def _unit_for_file(filename: str, module: str, mtime_ns: int, size: int) -> Unit:
    del mtime_ns, size  # part of the cache key only
    with open(filename, "rb") as f:
        source = f.read()
    return instrument_source(source, filename, module, register=False)


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
        raise ValueError(
            f"kcovx: no source for {code.co_qualname!r} (file {code.co_filename!r} does not "
            "exist); only code compiled from a source file can be instrumented"
        ) from None


def _source_unit(code: types.CodeType, module: str) -> Unit:
    st = _stat(code)
    return _unit_for_file(code.co_filename, module, st.st_mtime_ns, st.st_size)


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
        raise ValueError(
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
    try:
        with open(filename, "rb") as f:
            source = f.read()
    except OSError as e:
        raise ValueError(f"kcovx: cannot read the source of {mod.__name__!r}: {e}") from None
    unit = instrument_source(source, filename, mod.__name__)
    unit.install(mod.__dict__)
    for fn in _functions_of(mod):
        code = fn.__code__
        if _is_instrumented(code) or code.co_filename != filename:
            continue
        new = _counterpart(unit, code)
        if new is not None:  # None: the file changed since; that function stays plain
            fn.__code__ = new
    return mod


# --------------------------------------------------------------------------------------------
# The import hook


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _site_dirs() -> list[str]:
    import site  # only the no-include rule needs these (slow on 3.13)
    import sysconfig

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
    import sysconfig

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
    _site: list[str] | None = field(init=False, default=None)
    _stdlib: list[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise TypeError("include and exclude take a list of patterns, not a string")
        for p in [*(self.include or ()), *self.exclude, *self.always]:
            if not isinstance(p, str) or not p:
                raise TypeError(f"module name patterns must be non-empty strings, got {p!r}")
        self.include = list(self.include) if self.include is not None else None
        self.exclude = list(self.exclude)
        self._dir = _norm(self.directory or os.getcwd()) + os.sep
        if not self.include:
            # Only the no-include rule needs them: computed here, before the hook is
            # installed (computing them imports modules), and only then (~1-4 ms).
            self._site, self._stdlib = _site_dirs(), _stdlib_dirs()

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
        if self._site is None or self._stdlib is None:
            self._site, self._stdlib = _site_dirs(), _stdlib_dirs()
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
        spec: importlib.machinery.ModuleSpec | None = None
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
        spec.loader = InstrumentingLoader(fullname, spec.origin)
        return spec

    def install(self) -> ImportHook:
        sys.meta_path.insert(0, self)
        return self

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


class InstrumentingLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose code is the instrumented form of the source (cached by kcovx,
    never written to __pycache__)."""

    def get_code(self, fullname: str) -> types.CodeType:
        return self.unit(fullname).code

    def unit(self, fullname: str) -> Unit:
        """The instrumented unit of the module's source (registered; cached by kcovx)."""
        path = self.get_filename(fullname)
        return instrument_source(self.get_data(path), path, fullname)

    def exec_module(self, module: types.ModuleType) -> None:
        unit = self.unit(module.__name__)
        unit.install(module.__dict__)
        exec(unit.code, module.__dict__)


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
    unit.install(globals_)
    exec(unit.code, globals_)
