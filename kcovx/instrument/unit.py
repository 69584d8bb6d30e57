"""The instrumented form of one source file (``Unit``) and its blocks: what the rewrite
produces, the code cache stores, and the ways in (live, hook) install and register.

How a unit's code records: its probe name ``__kcovx_pc_<tag>__`` (tag from the module, file
and source) is bound to the unit's ``kcovx._area.Probe`` in the globals the code runs with
and in ``builtins``; ``probe[i]`` records ``blocks[i].pc``.  Module globals are what
LOAD_GLOBAL finds first (its specialised fast path); builtins is where the name still
resolves when the code runs under other globals (``types.FunctionType(code, {...})``,
``exec(code, {})``, serialisers that rebuild functions).

Threading: a Unit is built by one thread; ``probe()`` may race to build the Probe twice,
which is harmless (both record the same PCs, the last one is kept).
"""

from __future__ import annotations

import builtins
import types
from dataclasses import dataclass, field
from typing import Any

from kcovx import pcs
from kcovx._area import Comparisons, Probe

# Every name instrumented code records through starts with this; the full name is per unit.
PROBE = "__kcovx_pc"
# The names of a unit's comparison recorders (cmp=True): the probe name with this instead.
CMP = "__kcovx_cmp"
HELD = "__kcovx_held"

# One operand's action (kcovx._area.Comparisons): (in_kind, in_tag, in_pc, in_each, out_tag,
# ((literal, pc), ...)).
CmpAction = tuple[int, int, int, int, int, tuple[tuple[Any, int], ...]]


def cmp_names(probe_name: str) -> tuple[str, str]:
    """The names a unit's comparison calls load, for its probe name."""
    tag = probe_name[len(PROBE) :]
    return CMP + tag, HELD + tag


@dataclass(slots=True)  # a few hundred are built per warm import: slots make that cheaper
class BlockRec:
    """One block of a unit, in the unit's probe-index order."""

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
    blocks: list[BlockRec]
    scopes: list[tuple[str, int]]  # (qualname, parent scope index; -1 for the module)
    probe_name: str = ""
    salted: bool = False  # PCs were moved off PCs other units had: not cached
    cmp: bool = False  # comparisons record (instrumented with cmp=True)
    sites: list[BlockRec] = field(default_factory=list)  # comparison sites (cmp)
    actions: list[CmpAction] = field(default_factory=list)  # comparison actions (cmp)
    _probe: Probe | None = None
    _comparisons: Comparisons | None = None

    def probe(self) -> Probe:
        """The unit's recorder (built once): index i records ``blocks[i].pc``."""
        if self._probe is None:
            self._probe = Probe([b.pc for b in self.blocks])
        return self._probe

    def comparisons(self) -> Comparisons:
        """The unit's comparison recorder (built once): action i is ``actions[i]``."""
        if self._comparisons is None:
            self._comparisons = Comparisons(self.actions)
        return self._comparisons

    def install(self, globals_: dict[str, Any] | None = None) -> None:
        """Bind the unit's probe name (and with cmp its comparison names) in ``builtins``
        and in the globals its code runs with."""
        names: dict[str, Any] = {self.probe_name: self.probe()}
        if self.cmp:
            cmp_name, held_name = cmp_names(self.probe_name)
            names[cmp_name] = self.comparisons().cmp
            names[held_name] = self.comparisons().held
        builtins.__dict__.update(names)
        if globals_ is not None:
            globals_.update(names)

    def entries(
        self, scopes: set[int] | None = None, sites: bool = False
    ) -> list[tuple[pcs.Block, pcs.Ident]]:
        """The registry entries of the blocks (``sites``: of the comparison sites) of the
        unit, or of the given scopes."""
        out = []
        # A site's identity names its function apart from the block with the same ordinal.
        suffix = "\0cmp" if sites else ""
        for b in self.sites if sites else self.blocks:
            if scopes is not None and b.scope not in scopes:
                continue
            block = pcs.Block(b.pc, self.filename, b.function, *b.extent)
            ident = (
                self.module,
                b.function + suffix,
                b.occurrence,
                b.ordinal,
                self.filename,
                *b.extent,
            )
            out.append((block, ident))
        return out

    def subtree(self, root: int) -> set[int]:
        keep = {root}
        for i, (_, parent) in enumerate(self.scopes):
            if parent in keep or i in keep:
                keep.add(i)
        return keep
