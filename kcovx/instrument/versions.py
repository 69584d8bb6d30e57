"""Every difference between the Python versions kcovx supports (3.11 to 3.13) that the
instrumentation depends on: the one module under ``kcovx.instrument`` that reads
``sys.version_info``.  Each flag names a behaviour of CPython's compiler, not a version, so
the code that acts on it says why.

Invariants: the values are fixed at import; nothing here has state.  Threading: read-only,
except ``compile_tree``, which may raise the process's recursion limit while it compiles.
"""

from __future__ import annotations

import ast
import sys
import types
from typing import Any

# CPython 3.12 starts a line event at a jump target reached straight after a call into
# Python code, even on the same line: a probe must not add such a target.
JOIN_AFTER_CALL = sys.version_info[:2] == (3, 12)

# CPython 3.11 sets the position of a statement's jumps at each tested comparison and keeps it.
SETS_POSITION = sys.version_info < (3, 12)

# 3.12+ puts the jump after a tested expression at that expression's position (3.11: at the
# position current in the statement).
JUMP_AT_TESTED = sys.version_info >= (3, 12)

# 3.12+ inlines list/set/dict comprehensions (PEP 709): they are no scope in qualnames.
INLINED_COMPS = sys.version_info >= (3, 12)

# Fields a FunctionDef built by hand needs beyond those of 3.11 (PEP 695's type parameters).
FUNCTION_EXTRA_FIELDS: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}

# Before 3.13, turning an ``ast`` tree into the compiler's own form counts each level against
# the Python recursion limit (3.11) or a fixed C limit (3.12), while compiling the same code
# from source allows about three times the depth (3.11's compiler scales the limit by 3).
_TREE_DEPTH_COUNTS = sys.version_info[:2] == (3, 11)
# The deepest tree compiled with a raised limit: C frames of a few hundred bytes per level
# stay well inside the 8 MiB a thread's stack has by default.
_MAX_TREE_DEPTH = 12_000


def _depth(tree: ast.AST) -> int:
    """How many levels deep ``tree`` is (without recursion)."""
    deepest = 0
    todo = [(tree, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        todo.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _compile(tree: ast.Module, filename: str, flags: int) -> types.CodeType:
    code: types.CodeType = compile(tree, filename, "exec", flags, dont_inherit=True)
    return code


def compile_tree(tree: ast.Module, filename: str, flags: int = 0) -> types.CodeType:
    """``compile(tree, filename, "exec", flags, dont_inherit=True)``.  On 3.11 a tree nested deeper
    than the recursion limit allows is compiled with the limit raised for the call (up to
    _MAX_TREE_DEPTH levels: instrumented code nests a little deeper than the source CPython
    compiles).  3.12 checks a fixed C limit instead: there a tree nested deeper than about
    1,500 levels is a RecursionError, as 3.11's beyond _MAX_TREE_DEPTH."""
    try:
        return _compile(tree, filename, flags)
    except RecursionError:
        if not _TREE_DEPTH_COUNTS:
            raise
    depth = _depth(tree)
    if depth > _MAX_TREE_DEPTH:
        raise RecursionError(f"kcovx: code nested {depth} levels deep is too deep to instrument")
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 3 * depth + 100))
    try:
        return _compile(tree, filename, flags)
    finally:
        sys.setrecursionlimit(old)
