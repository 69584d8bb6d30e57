"""How the benchmark scripts measure: the machine's description, the rotating order that
interleaves baseline and candidates, a pause of the cyclic GC around timed work, and where the
benchmark inputs live (benchmarks/data/, read at run time).

Imported from beside the scripts: each runs as ``python benchmarks/<name>.py``, which puts
this folder first on sys.path.  Imports only the standard library, so a worker process that
must not import a measured package early can use it.  How results are shown and judged is
_report.py's.  Single-threaded helpers; no state of their own.
"""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

_T = TypeVar("_T")

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rotated(items: Sequence[_T], k: int) -> list[_T]:
    """items starting at position k (mod len): round k of a rotating order, so that no method
    always runs first (or right after the same neighbour) on a noisy machine."""
    s = k % len(items)
    return [*items[s:], *items[:s]]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off for the block (a collection would land in a random sample), back to
    its previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_LOOP_SRC = """
def run(r, f, clock):
    t0 = clock()
    for i in r:
        {body}
    return clock() - t0
"""


def fresh_loop(body: str) -> Callable[[list[int], Any, Callable[[], int]], int]:
    """``run(r, f, clock)``: ns for running ``body`` once per item ``i`` of r (f and i in
    scope), in a code object of its own, so CPython's adaptive specialisation of one loop's
    call site never sees another loop's callable.  body is one of the scripts' fixed lines."""
    ns: dict[str, Any] = {}
    exec(compile(_LOOP_SRC.format(body=body), "<benchmark loop>", "exec"), ns)
    return ns["run"]  # type: ignore[no-any-return]


def read_corpus(name: str) -> tuple[bytes, ...]:
    """The inputs stored under data/<name>, byte for byte: a folder gives one input per file
    (in file-name order, dot files skipped), a file one input per line (without its newline)."""
    path = os.path.join(DATA, name)
    if os.path.isdir(path):
        out = []
        for entry in sorted(e for e in os.listdir(path) if not e.startswith(".")):
            with open(os.path.join(path, entry), "rb") as f:
                out.append(f.read())
        return tuple(out)
    with open(path, "rb") as f:
        text = f.read()
    return tuple(text.removesuffix(b"\n").split(b"\n"))
