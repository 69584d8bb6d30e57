"""kcov's ABI constants, with the values of <linux/kcov.h> on x86-64 (LP64).

Owns: ioctl numbers, trace modes, comparison type bits, device modes, page size.  Pure data;
no state, safe from any thread.
"""

from __future__ import annotations

import enum
import mmap as _mmap
from typing import Final

# ioctl commands.  Both kernels compare the command as 32 bits.
KCOV_INIT_TRACE: Final = 0x80086301  # _IOR('c', 1, unsigned long): arg = size in words
KCOV_ENABLE: Final = 0x6364  # _IO('c', 100): arg = trace mode
KCOV_DISABLE: Final = 0x6365  # _IO('c', 101): arg must be 0
KCOV_REMOTE_ENABLE: Final = 0x40186366  # _IOW('c', 102, struct kcov_remote_arg)

# Trace modes, the argument of KCOV_ENABLE.
KCOV_TRACE_PC: Final = 0
KCOV_TRACE_CMP: Final = 1

# Comparison type bits of a KCOV_TRACE_CMP record.
KCOV_CMP_CONST: Final = 1 << 0
KCOV_CMP_MASK: Final = 3 << 1  # == KCOV_CMP_SIZE(3) == 6


def KCOV_CMP_SIZE(n: int) -> int:
    """Size bits of a comparison of 2**n bytes (n in 0..3)."""
    return n << 1


# Words per comparison record: {type, arg1, arg2, pc}.
KCOV_WORDS_PER_CMP: Final = 4

# Errno the kernel-internal ENOTSUPP (Linux without CONFIG_KCOV_ENABLE_COMPARISONS).
ENOTSUPP: Final = 524

PAGE_SIZE: Final = _mmap.PAGESIZE


class Mode(enum.IntEnum):
    """A device's mode (the kernels' KCOV_MODE_*)."""

    DISABLED = 0
    INIT = 1
    TRACE_PC = 2
    TRACE_CMP = 3


__all__ = [
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
    "Mode",
]
