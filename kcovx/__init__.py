"""kcovx: a kcov-compatible coverage device for Python processes.

Public API only: the kcov constants, ``open()``/``Device``, the per-event recorders
``trace_pc``/``trace_pcs``/``trace_cmp``, ``Area`` (the compiled mapping), ``get_include()``
for extensions that use the C API, the instrumentation of Python code (``instrument_func``,
``instrument_module``, ``instrument_imports``; ``cmp=True`` for comparison records), the
symbolizer (``symbolize``, ``blocks``, PC tables), the decoder of comparison records
(``comparisons``), the cover files and the errors.  See README.md for the contracts.

``import kcovx`` loads the compiled core, the device API and the errors only.  The
instrumentation (``kcovx.instrument``: ast, dis, marshal), the PC registry (``kcovx.pcs``:
json when a table is read or written) and the cover files load on first use of one of their
names, through the module ``__getattr__`` below, so a program that only records PCs, or a fuzzer
that forks workers, does not pay for them before its own code runs.

PYTEST_DONT_REWRITE: the marker pytest looks for.  kcovx has a pytest plugin, so pytest marks
this package for assertion rewriting, and without the marker it warns when the package was
imported before pytest started (``kcovx run -m pytest``), an error under ``-W error``.
"""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import TYPE_CHECKING, Any

from kcovx import abi
from kcovx._area import Area, trace_cmp, trace_pc, trace_pcs
from kcovx.abi import *  # noqa: F403  (the kcov ABI, listed once: kcovx.abi.__all__)
from kcovx.device import PROFILES, Device, open
from kcovx.errors import (
    CacheEntryError,
    CoverFileError,
    InstrumentError,
    KcovxError,
    NoSourceError,
    PCsTableError,
    UnknownPCError,
)

if TYPE_CHECKING:
    from kcovx import cover as cover
    from kcovx import instrument as instrument
    from kcovx import pcs as pcs
    from kcovx.cover import read_cover, write_cover
    from kcovx.instrument import (
        ImportHook,
        instrument_func,
        instrument_imports,
        instrument_module,
    )
    from kcovx.pcs import Block, blocks, load_pcs_table, symbolize, write_pcs_table
    from kcovx.records import Comparison, comparisons

__version__ = "0.1.0"

# Public names loaded on first use: name -> the submodule that defines it.
_LAZY = {
    "ImportHook": "instrument",
    "instrument_func": "instrument",
    "instrument_imports": "instrument",
    "instrument_module": "instrument",
    "Block": "pcs",
    "blocks": "pcs",
    "load_pcs_table": "pcs",
    "symbolize": "pcs",
    "write_pcs_table": "pcs",
    "read_cover": "cover",
    "write_cover": "cover",
    "Comparison": "records",
    "comparisons": "records",
}
_LAZY_MODULES = frozenset({"cover", "instrument", "pcs", "records", "sancov"})


def _submodule(name: str) -> Any:
    # The import statement's own machinery (not importlib.import_module), so that
    # ``-X importtime`` reports these imports like any other; it binds kcovx.<name> too.
    __import__(f"kcovx.{name}")
    return _sys.modules[f"kcovx.{name}"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return _submodule(name)
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'kcovx' has no attribute {name!r}")
    value = getattr(_submodule(home), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _LAZY_MODULES)


def get_include() -> str:
    """The folder holding kcovx.h, for building extensions that use the C API."""
    return _os.path.dirname(_os.path.abspath(__file__))


# The kcov ABI (kcovx.abi) and the rest of the public API.
__all__ = [
    "PROFILES",
    "Area",
    "Block",
    "CacheEntryError",
    "Comparison",
    "CoverFileError",
    "Device",
    "ImportHook",
    "InstrumentError",
    "KcovxError",
    "NoSourceError",
    "PCsTableError",
    "UnknownPCError",
    "__version__",
    "blocks",
    "comparisons",
    "get_include",
    "instrument_func",
    "instrument_imports",
    "instrument_module",
    "load_pcs_table",
    "open",
    "read_cover",
    "symbolize",
    "trace_cmp",
    "trace_pc",
    "trace_pcs",
    "write_cover",
    "write_pcs_table",
]
__all__ += abi.__all__
