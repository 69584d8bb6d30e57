"""Fixture for tests/test_afl.py: fork-server mode with a known trace.  After
``kcovx.afl.init()``, each input byte b records the PC 0x1000 + b (nothing here is
instrumented, so these are the only PCs); a first byte of ``!`` raises ValueError, ``?``
raises KeyError (listed as expected)."""

import sys

import kcovx
import kcovx.afl

kcovx.afl.init(expected=[KeyError])
data = sys.stdin.buffer.read()
for b in data:
    kcovx.trace_pc(0x1000 + b)
if data[:1] == b"!":
    raise ValueError("a crash")
if data[:1] == b"?":
    raise KeyError("expected")
