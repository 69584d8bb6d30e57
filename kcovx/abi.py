"""kcov's ABI constants, with the values of <linux/kcov.h> on x86-64 (LP64).

Owns: the Python names of the ABI.  Everything the compiled core also uses (trace modes,
comparison type bits, words per comparison record, device modes, the C API's capsule name and
ABI version) is defined once, in kcovx.h, and re-exported here from kcovx._area, which exposes
each KCOVX_X of the header as X; nothing here retypes those values.  The ioctl numbers stay
here: only the Python state machine (device.py) compares them and no C code does, so a second
definition in the header would have no reader; each carries the _IOR/_IO/_IOW it encodes, and
tests/test_api.py re-derives them.  Pure data; no state, safe from any thread.
"""

from __future__ import annotations

import enum
import mmap as _mmap
from typing import Final

from kcovx import _area

# The C API (kcovx.h): the capsule kcovx._area publishes and the version of its struct.
ABI_VERSION: Final[int] = _area.ABI_VERSION
CAPSULE_NAME: Final[str] = _area.CAPSULE_NAME

# ioctl commands.  Both kernels compare the command as 32 bits.
KCOV_INIT_TRACE: Final = 0x80086301  # _IOR('c', 1, unsigned long): arg = size in words
KCOV_ENABLE: Final = 0x6364  # _IO('c', 100): arg = trace mode
KCOV_DISABLE: Final = 0x6365  # _IO('c', 101): arg must be 0
KCOV_REMOTE_ENABLE: Final = 0x40186366  # _IOW('c', 102, struct kcov_remote_arg)
# The 2025 "Coverage deduplication for KCOV" proposal (linux profile only):
KCOV_UNIQUE_ENABLE: Final = 0x40086367  # _IOW('c', 103, unsigned long): arg = bitmap words
KCOV_RESET_TRACE: Final = 0x6368  # _IO('c', 104): arg must be 0

# Trace modes, the argument of KCOV_ENABLE.
KCOV_TRACE_PC: Final[int] = _area.TRACE_PC
KCOV_TRACE_CMP: Final[int] = _area.TRACE_CMP

# Comparison type bits of a KCOV_TRACE_CMP record.
KCOV_CMP_CONST: Final[int] = _area.CMP_CONST
KCOV_CMP_MASK: Final[int] = _area.CMP_MASK  # == KCOV_CMP_SIZE(3)


def KCOV_CMP_SIZE(n: int) -> int:
    """Size bits of a comparison of 2**n bytes (n in 0..3)."""
    return n << _area.CMP_SIZE_SHIFT


# Words per comparison record: {type, arg1, arg2, pc}.
KCOV_WORDS_PER_CMP: Final[int] = _area.WORDS_PER_CMP

# Errno the kernel-internal ENOTSUPP (Linux without CONFIG_KCOV_ENABLE_COMPARISONS).
ENOTSUPP: Final = 524

PAGE_SIZE: Final = _mmap.PAGESIZE


class Mode(enum.IntEnum):
    """A device's mode (the kernels' KCOV_MODE_*)."""

    DISABLED = _area.MODE_DISABLED
    INIT = _area.MODE_INIT
    TRACE_PC = _area.MODE_TRACE_PC
    TRACE_CMP = _area.MODE_TRACE_CMP
    UNIQUE_PC = _area.MODE_UNIQUE_PC  # kcovx's: KCOV_UNIQUE_ENABLE (linux profile)


__all__ = [
    "ABI_VERSION",
    "CAPSULE_NAME",
    "ENOTSUPP",
    "KCOV_CMP_CONST",
    "KCOV_CMP_MASK",
    "KCOV_CMP_SIZE",
    "KCOV_DISABLE",
    "KCOV_ENABLE",
    "KCOV_INIT_TRACE",
    "KCOV_REMOTE_ENABLE",
    "KCOV_RESET_TRACE",
    "KCOV_TRACE_CMP",
    "KCOV_TRACE_PC",
    "KCOV_UNIQUE_ENABLE",
    "KCOV_WORDS_PER_CMP",
    "PAGE_SIZE",
    "Mode",
]
