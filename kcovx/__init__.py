"""kcovx: a kcov-compatible coverage device for Python processes.

Public API only: the kcov constants, ``open()``/``Device``, the per-event recorders
``trace_pc``/``trace_pcs``/``trace_cmp``, ``Area`` (the compiled mapping), ``get_include()``
for extensions that use the C API, the instrumentation of Python code (``instrument_func``,
``instrument_module``, ``instrument_imports``) and the symbolizer (``symbolize``, ``blocks``,
PC tables).  See README.md for the contracts.
"""

from __future__ import annotations

import os as _os

from kcovx._area import ABI_VERSION, Area, trace_cmp, trace_pc, trace_pcs
from kcovx.abi import (
    ENOTSUPP,
    KCOV_CMP_CONST,
    KCOV_CMP_MASK,
    KCOV_CMP_SIZE,
    KCOV_DISABLE,
    KCOV_ENABLE,
    KCOV_INIT_TRACE,
    KCOV_REMOTE_ENABLE,
    KCOV_TRACE_CMP,
    KCOV_TRACE_PC,
    KCOV_WORDS_PER_CMP,
    PAGE_SIZE,
    Mode,
)
from kcovx.device import PROFILES, Device, open
from kcovx.instrument import ImportHook, instrument_func, instrument_imports, instrument_module
from kcovx.pcs import Block, blocks, load_pcs_table, symbolize, write_pcs_table

__version__ = "0.1.0"


def get_include() -> str:
    """The folder holding kcovx.h, for building extensions that use the C API."""
    return _os.path.dirname(_os.path.abspath(__file__))


__all__ = [
    "ABI_VERSION",
    "ENOTSUPP",
    "KCOV_CMP_CONST",
    "KCOV_CMP_MASK",
    "KCOV_CMP_SIZE",
    "KCOV_DISABLE",
    "KCOV_ENABLE",
    "KCOV_INIT_TRACE",
    "KCOV_REMOTE_ENABLE",
    "KCOV_TRACE_CMP",
    "KCOV_TRACE_PC",
    "KCOV_WORDS_PER_CMP",
    "PAGE_SIZE",
    "PROFILES",
    "Area",
    "Block",
    "Device",
    "ImportHook",
    "Mode",
    "__version__",
    "blocks",
    "get_include",
    "instrument_func",
    "instrument_imports",
    "instrument_module",
    "load_pcs_table",
    "open",
    "symbolize",
    "trace_cmp",
    "trace_pc",
    "trace_pcs",
    "write_pcs_table",
]
