"""Block numbering for the rewriter: scopes as CPython names their code objects, a PC for
every block (``pcs.block_pc``, salted off PCs other units have), and the probe nodes
``__kcovx_pc_<tag>__[i]`` that record them; also the unit's probe name and a position fixer
without recursion.

Invariants: block i of a unit is the i-th probe created, and its PC depends only on the
module, its scope's qualified name and occurrence, its ordinal in that scope and the PCs to
avoid, so the same source gives the same PCs in every process.
Threading: a BlockNumbering is used by one thread.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

from kcovx import pcs
from kcovx.instrument.positions import Loc, first_loc, locate, run_extent
from kcovx.instrument.unit import PROBE, BlockRec

# Scope kinds, for qualified names as CPython makes them (compiler_set_qualname).
MODULE, CLASS, FUNCTION, COMPREHENSION, INLINED = range(5)


def declared_globals(body: Sequence[ast.stmt]) -> frozenset[str]:
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


class BlockNumbering:
    """The scopes and blocks of one unit being rewritten (the base of rewrite.Rewriter).

    State:

    * ``probe_name``: the unit's probe name (``__kcovx_pc_<tag>__``).
    * ``unit``: the upper 32 bits of the module's PCs (``pcs.unit_hash``).
    * ``avoid``: PCs other units already have; a block whose PC is one of them is salted.
    * ``salted``: whether any block was salted (then the unit depends on this process).
    * ``taken``: the PCs given out so far in this unit.
    * ``blocks``: one ``BlockRec`` per probe, in probe-index order (the result).
    * ``scopes``: (qualname, parent scope index) per code object, in source order (the
      result); ``ordinals[i]``: the next block ordinal in scope i; ``occ[i]``: which
      occurrence of its qualname scope i is (``occurrences`` counts them per qualname).
    * ``stack``: the scopes being visited, innermost last: (scope index, qualname, kind,
      names it declares ``global``).
    """

    def __init__(self, module: str, avoid: set[int], probe_name: str) -> None:
        self.probe_name = probe_name
        self.unit = pcs.unit_hash(module)
        self.avoid = avoid
        self.salted = False
        self.taken: set[int] = set()
        self.blocks: list[BlockRec] = []
        self.scopes: list[tuple[str, int]] = []
        self.ordinals: list[int] = []
        self.occ: dict[int, int] = {}
        self.occurrences: dict[str, int] = {}
        self.stack: list[tuple[int, str, int, frozenset[str]]] = []

    def _push(
        self, name: str, kind: int, body: Sequence[ast.stmt] = (), is_def: bool = False
    ) -> None:
        """Enter a scope; its qualified name is the one CPython gives its code object
        (``is_def``: a def or class statement, whose name may be declared global)."""
        outer = [e for e in self.stack if e[2] != INLINED]
        if not outer or outer[-1][2] == MODULE or (is_def and name in self.stack[-1][3]):
            qual = name
        elif outer[-1][2] == FUNCTION:
            qual = f"{outer[-1][1]}.<locals>.{name}"
        else:
            qual = f"{outer[-1][1]}.{name}"
        parent = self.stack[-1][0] if self.stack else -1
        self.scopes.append((qual, parent))
        self.ordinals.append(0)
        declared = declared_globals(body) if kind in (FUNCTION, CLASS) else frozenset()
        self.stack.append((len(self.scopes) - 1, qual, kind, declared))

    def _pop(self) -> None:
        self.stack.pop()

    def _occurrence(self, index: int) -> int:
        """Which occurrence of its qualified name scope ``index`` is (fixed at its first
        block or comparison site)."""
        if index not in self.occ:
            qual = self.scopes[index][0]
            self.occ[index] = self.occurrences.get(qual, 0)
            self.occurrences[qual] = self.occ[index] + 1
        return self.occ[index]

    def _take_pc(self, pc_of: Callable[[int], int]) -> int:
        """The first of ``pc_of(0)``, ``pc_of(1)``, ... (salts) that no block or site of
        this unit took and no other unit has; it is taken."""
        salt = 0
        while True:
            pc = pc_of(salt)
            if pc not in self.taken and pc not in self.avoid:
                break
            if pc in self.avoid:
                self.salted = True
            salt += 1
        self.taken.add(pc)
        return pc

    def _new_pc(self, extent: tuple[int, int, int, int]) -> int:
        index, qual, _, _ = self.stack[-1]
        occ = self._occurrence(index)
        ordinal = self.ordinals[index]
        self.ordinals[index] += 1
        pc = self._take_pc(lambda salt: pcs.block_pc(self.unit, qual, occ, ordinal, salt))
        self.blocks.append(BlockRec(index, qual, occ, ordinal, extent, pc))
        return pc

    def _probe_expr(self, extent: tuple[int, int, int, int], at: Loc) -> ast.expr:
        """The probe of a new block: ``__kcovx_pc_<tag>__[i]``, i its index in the unit."""
        index = len(self.blocks)
        self._new_pc(extent)
        probe = ast.Subscript(
            value=ast.Name(self.probe_name, ast.Load()), slice=ast.Constant(index), ctx=ast.Load()
        )
        locate(probe, at)
        return probe

    def _probe_stmt(self, extent: tuple[int, int, int, int], at: Loc) -> ast.stmt:
        return cast(ast.stmt, locate(ast.Expr(self._probe_expr(extent, at)), at))

    def _stmt_probe(self, body: Sequence[ast.stmt], i: int) -> ast.stmt:
        return self._probe_stmt(run_extent(body, i), first_loc(body[i]))


def probe_name(source: str | bytes, filename: str, module: str) -> str:
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


def fix_missing_locations(tree: ast.AST) -> None:
    """``ast.fix_missing_locations`` without recursion: a node without a position takes
    its parent's; one with a start but no end ends where it starts."""
    todo: list[tuple[ast.AST, tuple[int, int, int, int]]] = [(tree, (1, 0, 1, 0))]
    while todo:
        node, inherited = todo.pop()
        n: Any = node
        at = list(inherited)
        if "lineno" in node._attributes:
            if getattr(n, "lineno", None) is not None and getattr(n, "end_lineno", None) is None:
                # A start without an end (another tool's node, such as the imports pytest's
                # assertion rewriting inserts): it ends where it starts, not at its parent's end.
                n.end_lineno, n.end_col_offset = n.lineno, getattr(n, "col_offset", None) or 0
            for k, name in enumerate(("lineno", "col_offset", "end_lineno", "end_col_offset")):
                if getattr(n, name, None) is None:
                    setattr(n, name, at[k])
                else:
                    at[k] = getattr(n, name)
        here = (at[0], at[1], at[2], at[3])
        todo.extend((child, here) for child in ast.iter_child_nodes(node))
