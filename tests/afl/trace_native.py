"""Fixture for tests/test_afl.py: native coverage under AFL.  After ``kcovx.afl.init()`` the
input (a decimal number) goes to ``nativecov.pick`` (one block per arm) of the test extension
built with kcovx.sancov's flags (its folder is on PYTHONPATH), whose trace-pc hooks record into
the child's area; nothing else records (this file is not instrumented)."""

import sys

import nativecov

import kcovx.afl

kcovx.afl.init()
nativecov.pick(int(sys.stdin.buffer.read()))
