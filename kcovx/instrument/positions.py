"""The position oracle: where in the line table a probe goes, and the source extent a block
reports.

A probe carries the position of the first instruction of the code it precedes, so it starts
no line of its own: line events (sys.settrace, coverage.py), f_lineno and tracebacks are those
of the original code.  Most positions are read off the ``ast``; where CPython's first (or
last) instruction of a node is not at the node's start (code spanning lines, a decorated
definition, ``'text' % (...)`` compiled to an f-string whose text has no position) the node
is compiled alone in a throwaway function and the position read from its code object
(``compiled_span``).

Invariants: nothing here changes the tree it is given except ``place``/``locate``/
``locate_shallow``, which set positions of new nodes; every walk is iterative or bounded
by the statement at hand, never one Python frame per level of nesting.
Threading: pure functions.
"""

from __future__ import annotations
import __future__

import ast
import copy
import types
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from kcovx.instrument import versions

BRANCHY = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Try,
    ast.With,
    ast.AsyncWith,
    ast.Match,
    ast.TryStar,
)
COMPOUND = (*BRANCHY, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def pos(node: ast.AST) -> tuple[int, int, int, int]:
    """``node``'s extent as a block reports it: 1-based columns (see ``loc``)."""
    line, col, end_line, end_col = loc(node)
    return (line, col + 1, end_line, end_col + 1)


def start(node: ast.stmt) -> tuple[int, int]:
    """Where a statement's source starts (1-based column): a decorated definition starts at
    its first decorator (whose ``@`` is in the statement's column)."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        return (decorators[0].lineno, node.col_offset + 1)
    return (node.lineno, node.col_offset + 1)


def _header_expr(node: ast.stmt, item: int) -> ast.expr | None:
    """The expression a compound statement evaluates before its body (of a with statement,
    the context expression of ``items[item]``), or None."""
    if isinstance(node, ast.If | ast.While):
        return node.test
    if isinstance(node, ast.For | ast.AsyncFor):
        return node.iter
    if isinstance(node, ast.With | ast.AsyncWith):
        return node.items[item].context_expr
    if isinstance(node, ast.Match):
        return node.subject
    return None


def _header_end(node: ast.stmt) -> tuple[int, int]:
    """Where the straight-line code ends when a run of statements reaches ``node``."""
    part = _header_expr(node, -1)
    if part is not None:
        p = pos(part)
        return (p[2], p[3])
    return (node.lineno, node.col_offset + 1)


def run_extent(body: Sequence[ast.stmt], i: int) -> tuple[int, int, int, int]:
    first = start(body[i])
    p = pos(body[i])
    end = (p[2], p[3])
    for stmt in body[i:]:
        if isinstance(stmt, COMPOUND):
            end = _header_end(stmt) if stmt is body[i] else end
            break
        p = pos(stmt)
        end = (p[2], p[3])
    return (*first, *end)


_N = TypeVar("_N", bound=ast.AST)


def locate_shallow(node: _N, at: ast.AST) -> _N:
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
Loc = tuple[int, int, int, int]

NO_CODE = (ast.Global, ast.Nonlocal)  # statements that compile to no instruction


def loc(node: ast.AST) -> Loc:
    n: Any = node
    end_line = n.end_lineno if n.end_lineno is not None else n.lineno
    end_col = n.end_col_offset if n.end_col_offset is not None else n.col_offset
    return (n.lineno, n.col_offset, end_line, end_col)


def header_only(stmt: ast.stmt) -> ast.stmt:
    """A shallow copy of ``stmt`` with every nested body replaced by ``pass``: what it
    compiles to up to its first nested statement is the same."""
    if not isinstance(stmt, COMPOUND):
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


NO_LOC: Loc = (-1, -1, -1, -1)  # no position: CPython gives the previous instruction's


# The throwaway function is compiled with annotations as strings: only the code a probe
# goes before matters, never what evaluating an annotation compiles to.
_ANNOTATIONS = __future__.annotations.compiler_flag


def compiled_span(node: ast.stmt | ast.expr) -> tuple[Loc, Loc, Loc] | None:
    """The positions of the first instruction CPython compiles ``node`` to (a statement: up
    to its first nested statement), of the first that has a position, and of the last,
    found by compiling it alone in a throwaway function; the first is NO_LOC when CPython
    gives it no position of its own.  None if that fails or there is no instruction."""
    first_line = start(node)[0] if isinstance(node, ast.stmt) else node.lineno
    last_line = loc(node)[2]
    outside = (last_line + 1, 0, last_line + 1, 0)  # the wrapper's own instructions
    stmt: ast.stmt
    if isinstance(node, ast.stmt):
        stmt = header_only(node)
        for n in ast.walk(stmt):
            if isinstance(n, ast.Pass) and not hasattr(n, "lineno"):
                locate(n, outside)
    else:
        stmt = ast.Expr(node)
        stmt.lineno, stmt.col_offset, stmt.end_lineno, stmt.end_col_offset = outside
    # while _: (if _: _()) stmt -- a loop for break/continue, and a join before the
    # statement so that its first instruction cannot take a position from before it.
    call = ast.Expr(ast.Call(ast.Name("_", ast.Load()), [], []))
    join = ast.If(test=ast.Name("_", ast.Load()), body=[call], orelse=[])
    loop = ast.While(test=ast.Name("_", ast.Load()), body=[join], orelse=[])
    locate(loop, outside)
    loop.body.append(stmt)
    for kind in (ast.FunctionDef, ast.AsyncFunctionDef):
        args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        fn = kind(
            name="_",
            args=args,
            body=[loop],
            decorator_list=[],
            returns=None,
            **versions.FUNCTION_EXTRA_FIELDS,
        )
        locate_shallow(fn, loop)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = ast.Module(body=[fn], type_ignores=[])
                code = versions.compile_tree(module, "<kcovx>", _ANNOTATIONS)
        except (SyntaxError, ValueError, TypeError, RecursionError):
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
        return (placed[0] if mine[0][0] is not None else NO_LOC), placed[0], placed[-1]
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


def joins_matter(stmt: ast.stmt) -> bool:
    """Whether a join of jumps added in ``stmt``'s own expressions (or in its test, before
    its first nested statement) could come right before an instruction without a position,
    which would then no longer take the line of the code before it (see _unplaced_format)."""
    header = header_only(stmt)
    if any(_unplaced_format(n) for n in ast.walk(header)):
        return True
    bodies = [getattr(stmt, name, None) for name in ("body", "orelse")]
    return any(unplaced_start(body[0]) for body in bodies if isinstance(body, list) and body)


def unplaced_start(node: ast.AST) -> bool:
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


def first_loc(node: ast.stmt | ast.expr) -> Loc:
    """Where the first instruction of ``node`` is (see ``Loc``)."""
    if isinstance(node, ast.expr):
        return _first_loc_of_expr(node)
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        return first_loc(decorators[0])
    part = _header_expr(node, 0)
    if part is not None:
        return first_loc(part)
    whole = loc(node)
    if isinstance(node, ast.Try | ast.TryStar) or (
        isinstance(node, ast.ClassDef) and not getattr(node, "type_params", None)
    ):
        return whole  # a NOP / LOAD_BUILD_CLASS on the statement's first line comes first
    if whole[0] == whole[2] and not unplaced_start(node):
        return whole
    span = compiled_span(node)
    return span[0] if span else whole


def _first_loc_of_expr(node: ast.expr) -> Loc:
    if node.lineno == node.end_lineno and not unplaced_start(node):
        return loc(node)
    span = compiled_span(node)
    return span[0] if span else loc(node)


def last_loc(node: ast.expr) -> Loc:
    """Where the last instruction of ``node`` is (see ``Loc``)."""
    if node.lineno == node.end_lineno:
        return loc(node)
    span = compiled_span(node)
    return span[2] if span else loc(node)


def place(node: _N, at: Loc) -> _N:
    """Give ``node`` (not its children) the position ``at``."""
    n: Any = node
    n.lineno, n.col_offset, n.end_lineno, n.end_col_offset = at
    return node


def locate(new: ast.AST, at: Loc) -> ast.AST:
    for n in ast.walk(new):
        n_: Any = n
        n_.lineno, n_.col_offset, n_.end_lineno, n_.end_col_offset = at
    return new


def jump_loc(probe: ast.expr, expr: ast.expr) -> Loc:
    """Where the jump after a probe goes: at the probe, or when the probe has no position
    (see NO_LOC) at the first instruction of ``expr`` that has one (3.13's compiler
    miscounts the stack at some position-less jumps)."""
    at = loc(probe)
    if at != NO_LOC:
        return at
    span = compiled_span(expr)
    return span[1] if span else loc(expr)


def constant(expr: ast.expr) -> bool:
    """Whether CPython folds ``expr`` to a constant (iterative: operand chains can be longer
    than the recursion limit)."""
    todo = [expr]
    while todo:
        e = todo.pop()
        if isinstance(e, ast.Constant) or (isinstance(e, ast.Name) and e.id == "__debug__"):
            continue
        if isinstance(e, ast.UnaryOp):
            todo.append(e.operand)
        elif isinstance(e, ast.BinOp):
            todo.extend((e.left, e.right))
        elif isinstance(e, ast.Tuple):
            todo.extend(e.elts)
        else:
            return False
    return True
