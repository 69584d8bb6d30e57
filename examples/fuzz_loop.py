"""A reference coverage-guided fuzz loop over kcovx, using only the public API.

Per input it does what a kcov fuzzer does: reset word 0 of the area, run the input, flush
(the gvisor profile's task work; a no-op for linux), read the PCs as a zero-copy view of
words 1..count, and keep the input when it covers a block no earlier input covered.

    python examples/fuzz_loop.py                         # fuzz examples/calc.py for 10 s
    python examples/fuzz_loop.py --target tomllib:loads --text --seconds 30
    python examples/fuzz_loop.py --profile linux --execs 20000

The target is ``module:function``; the module (and its submodules) is imported inside
``kcovx.instrument_imports``.  The function gets the input as bytes (``--text``: str).
Exceptions the target raises are counted, not fatal.  benchmarks/_instrument_worker.py (run by
benchmarks/bench_instrument.py) imports ``Fuzzer`` from here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import kcovx

HERE = os.path.dirname(os.path.abspath(__file__))

SEEDS: dict[str, list[bytes]] = {
    "calc": [b"1 + 2 * x", b"max(3, 4) ** 2", b"y = 7 % 3", b"-(1.5 - x) / 2"],
    "tomllib": [
        b'title = "x"\n[owner]\nname = "Tom"\ndob = 1979-05-27T07:32:00-08:00\n',
        b"[a.b]\nc = [1, 2.5, true]\nd = { e = 'f', g = 0x1F }\n",
        b'k = """multi\nline"""\n[[arr]]\nx = 1\n',
    ],
}
TOKENS = [b"(", b")", b",", b"=", b"**", b"[", b"]", b"{", b"}", b'"', b"'", b"\n", b".", b"0x"]
# The coverage bitmap: 2**20 slots, a PC's slot a hash of it (numpy scalars made once, not per
# input).
_BITMAP_BITS = 20
_SHIFT = np.uint64(29)
_SLOT_MASK = np.uint64((1 << _BITMAP_BITS) - 1)


class Fuzzer:
    """One device, one target, one corpus.  ``run_one`` is the per-input protocol."""

    def __init__(
        self,
        target: Callable[[Any], object],
        *,
        profile: str = "gvisor",
        size: int = 1 << 16,
        text: bool = False,
        seed: int = 0,
        unique: int = 0,
    ) -> None:
        self.target = target
        self.text = text
        self.device = kcovx.open(profile=profile)
        self.device.init_trace(size)
        self.area = self.device.mmap()
        # unique > 0 (linux profile): KCOV_UNIQUE_ENABLE with a bitmap of that many words;
        # each input then records each block once, and the trace follows the bitmap.
        self.unique = unique
        if unique:
            self.device.unique_enable(unique)
        else:
            self.device.enable()
        self.rng = random.Random(seed)
        self.corpus: list[bytes] = []
        self.blocks: set[int] = set()
        # A hashed bitmap answers "anything new?" in a few vector operations; the exact set
        # of blocks is updated only when it says yes.
        self.bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
        self.execs = 0
        self.errors = 0

    def close(self) -> None:
        self.device.disable()
        self.device.close()

    def run_one(self, data: bytes) -> np.ndarray:
        """Run one input; return its PCs (a view of the area, valid until the next input)."""
        area = self.area
        base = self.unique  # the trace's count is the word after the bitmap
        if base:
            self.device.reset_trace()  # the bitmap and the count
        else:
            area[0] = 0
        try:
            self.target(data.decode("utf-8", "replace") if self.text else data)
        except Exception:
            self.errors += 1
        self.device.flush()
        self.execs += 1
        n = int(area[base])
        return area[base + 1 : base + n + 1]

    def consider(self, data: bytes, pcs: np.ndarray) -> bool:
        """Keep ``data`` if its PCs cover a block not seen before."""
        keys = (pcs ^ (pcs >> _SHIFT)) & _SLOT_MASK
        fresh = ~self.bitmap[keys]
        if not fresh.any():
            return False
        self.bitmap[keys] = True
        before = len(self.blocks)
        self.blocks.update(pcs[fresh].tolist())
        if len(self.blocks) == before:
            return False
        self.corpus.append(data)
        return True

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            pos = rng.randint(0, len(b))
            if op == 0 and b:
                b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[pos:pos] = rng.choice(TOKENS)
            elif op == 2 and b:
                del b[pos : pos + rng.randint(1, 4)]
            elif op == 3:
                b[pos:pos] = bytes([rng.randrange(32, 127)])
            elif self.corpus:
                other = rng.choice(self.corpus)
                cut = rng.randint(0, len(other))
                b[pos:] = other[cut:]
        return bytes(b[:4096])

    def fuzz(
        self,
        seeds: Sequence[bytes],
        *,
        seconds: float | None = None,
        execs: int | None = None,
        progress: bool = True,
    ) -> None:
        for s in seeds:
            self.consider(s, self.run_one(s))
        if not self.corpus:
            self.corpus.append(b"")
        start = last = time.perf_counter()
        start_execs = self.execs
        while True:
            parent = self.rng.choice(self.corpus)
            child = self.mutate(parent)
            self.consider(child, self.run_one(child))
            if self.execs & 255 == 0:
                now = time.perf_counter()
                done = (seconds is not None and now - start >= seconds) or (
                    execs is not None and self.execs - start_execs >= execs
                )
                if progress and (now - last >= 0.5 or done):
                    last = now
                    rate = (self.execs - start_execs) / (now - start)
                    print(
                        f"\r#{self.execs}  {rate:,.0f} execs/s  blocks {len(self.blocks)}  "
                        f"corpus {len(self.corpus)}  errors {self.errors}   ",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                if done:
                    break
        if progress:
            print(file=sys.stderr)


def load_target(spec: str, include: Sequence[str]) -> Callable[[Any], object]:
    """Import ``module:function`` with the module (and ``include``) instrumented."""
    module, _, func = spec.partition(":")
    if not module or not func:
        raise SystemExit(f"fuzz_loop: --target must be module:function, got {spec!r}")
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    with kcovx.instrument_imports(include=[module, *include]):
        mod = importlib.import_module(module)
    target: Callable[[Any], object] = getattr(mod, func)
    return target


def add_loop_options(p: argparse.ArgumentParser) -> None:
    """The options of the loop itself (device, area, budget, seed), shared with other loops
    built on Fuzzer (examples/native_fuzz.py); ``loop_args`` completes what they parse."""
    p.add_argument("--profile", default="gvisor", choices=list(kcovx.PROFILES))
    p.add_argument("--size", type=int, default=1 << 16, help="area size in words")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--execs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def loop_args(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """p's arguments; a budget of 10 seconds when neither --seconds nor --execs is given."""
    args = p.parse_args(argv)
    if args.seconds is None and args.execs is None:
        args.seconds = 10.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", default="calc:fuzz_one", help="module:function to fuzz")
    p.add_argument("--include", action="append", default=[], help="also instrument these")
    p.add_argument("--text", action="store_true", help="pass inputs as str, not bytes")
    add_loop_options(p)
    args = loop_args(p, argv)
    target = load_target(args.target, args.include)
    fuzzer = Fuzzer(target, profile=args.profile, size=args.size, text=args.text, seed=args.seed)
    seeds = SEEDS.get(args.target.partition(":")[0].split(".")[0], [b""])
    try:
        fuzzer.fuzz(seeds, seconds=args.seconds, execs=args.execs)
    finally:
        fuzzer.close()
    print(
        f"done: {fuzzer.execs} execs, {len(fuzzer.blocks)} blocks, corpus {len(fuzzer.corpus)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
