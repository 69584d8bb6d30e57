"""Instrumentation of Python code: every basic block records its PC as ``trace_pc`` would.

Each instrumented unit (one source file as one module) gets a probe name
``__kcovx_pc_<tag>__`` bound to the unit's ``kcovx._area.Probe``, and the rewrite puts
``__kcovx_pc_<tag>__[i]`` at the start of every block (i: the block's index in the unit).
See README.md, "Instrumentation", for what a block is and what is promised.

The modules, one job each (dependencies point down this list; none points up):

- ``__init__``: the public names (this file) and ``run_code``.
- ``hook``: the import hook (``ImportHook``, ``InstrumentingLoader``, ``instrument_imports``).
- ``live``: ``instrument_func``, ``instrument_module``: live code matched to its source.
- ``source``: ``instrument_source``: the cache, else the rewrite; registration of the blocks.
- ``cache``: the code cache (key, entry format and verification, load/store).
- ``rewrite``: the AST rewriter; ``probes``: its block numbering and probe nodes.
- ``positions``: the position oracle (where a probe goes in the line table).
- ``unit``: ``Unit``, the instrumented form of a file, and how its probe is bound.
- ``versions``: every difference between the supported Python versions.

Threading: transforming is pure; registration takes kcovx.pcs' lock; the import hook relies
on the import system's per-module locks.  Nothing here runs on the recording path.
"""

from __future__ import annotations

from typing import Any

from kcovx.instrument.hook import ImportHook, InstrumentingLoader, instrument_imports
from kcovx.instrument.live import instrument_func, instrument_module
from kcovx.instrument.rewrite import REWRITE_VERSION
from kcovx.instrument.source import instrument_source, instrument_tree
from kcovx.instrument.unit import PROBE, Unit

__all__ = [
    "PROBE",
    "REWRITE_VERSION",
    "ImportHook",
    "InstrumentingLoader",
    "Unit",
    "instrument_func",
    "instrument_imports",
    "instrument_module",
    "instrument_source",
    "instrument_tree",
    "run_code",
]


def run_code(unit: Unit, globals_: dict[str, Any]) -> None:
    """Run ``unit``'s module code in ``globals_`` (``kcovx run``'s ``__main__``).  It is
    defined here, in the package's ``__init__``, because ``kcovx run`` drops this file's
    frame from the program's tracebacks."""
    unit.install(globals_)
    exec(unit.code, globals_)
