"""Fixture for tests/test_afl.py: an input's exception escapes a thread it starts.  After
``kcovx.afl.init()``, the main thread records 0x3000 + b for each input byte b; a first byte
of ``!`` makes the thread raise ValueError, ``?`` KeyError (listed as expected); either way
the main thread goes on and ends normally."""

import sys
import threading

import kcovx
import kcovx.afl

kcovx.afl.init(expected=[KeyError])
data = sys.stdin.buffer.read()
for b in data:
    kcovx.trace_pc(0x3000 + b)


def work() -> None:
    if data[:1] == b"!":
        raise ValueError("a crash in a thread")
    if data[:1] == b"?":
        raise KeyError("expected in a thread")


t = threading.Thread(target=work)
t.start()
t.join()
print("main thread done")
