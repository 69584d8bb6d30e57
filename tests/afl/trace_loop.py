"""Fixture for tests/test_afl.py: persistent mode, ``kcovx.afl.loop(N)`` with N from argv[1];
each input byte b records the PC 0x2000 + b; prints the number of iterations run at the end
(1 outside afl-fuzz, as python-afl)."""

import sys

import kcovx
import kcovx.afl

n = 0
while kcovx.afl.loop(int(sys.argv[1])):
    n += 1
    sys.stdin.seek(0)
    data = sys.stdin.buffer.read()
    for b in data:
        kcovx.trace_pc(0x2000 + b)
    if data[:1] == b"!":
        raise ValueError("a crash")
print("iterations", n)
