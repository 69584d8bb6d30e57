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
from dataclasses import dataclass
from typing import Any

from kcovx import pcs
from kcovx._area import Probe

# Every name instrumented code records through starts with this; the full name is per unit.
PROBE = "__kcovx_pc"


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
    _probe: Probe | None = None

    def probe(self) -> Probe:
        """The unit's recorder (built once): index i records ``blocks[i].pc``."""
        if self._probe is None:
            self._probe = Probe([b.pc for b in self.blocks])
        return self._probe

    def install(self, globals_: dict[str, Any] | None = None) -> None:
        """Bind the unit's probe name in ``builtins`` and in the globals its code runs with."""
        probe = self.probe()
        builtins.__dict__[self.probe_name] = probe
        if globals_ is not None:
            globals_[self.probe_name] = probe

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
