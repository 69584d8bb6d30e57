"""A reference coverage-guided fuzz loop over kcovx, using only the public API.

Per input it does what a kcov fuzzer does: reset word 0 of the area, run the input, flush
(the gvisor profile's task work; a no-op for linux), read the PCs as a zero-copy view of
words 1..count, and keep the input when it covers a block no earlier input covered.

    python examples/fuzz_loop.py                         # fuzz examples/calc.py for 10 s
    python examples/fuzz_loop.py --target tomllib:loads --text --seconds 30
    python examples/fuzz_loop.py --profile linux --execs 20000
    python examples/fuzz_loop.py --target magic:fuzz_one --cmp --execs 20000

``--cmp`` makes it comparison-guided: the target is instrumented with ``cmp=True``, and the
operands of the comparisons some inputs make (recorded by a second, linux-profile device in
KCOV_TRACE_CMP mode) go to a bounded table of recent pairs, as libFuzzer's table of recent
compares (TORC) and syzkaller's comparison hints keep them; a mutation then finds one operand's
bytes in the input and puts the other's there, or writes the other's bytes at a random place.

The target is ``module:function``; the module (and its submodules) is imported inside
``kcovx.instrument_imports``.  The function gets the input as bytes (``--text``: str).
Exceptions the target raises are counted, not fatal (the first is kept, with its input, in
``Fuzzer.first_error``; examples/magic.py raises one when its guards pass).
benchmarks/_instrument_worker.py (run by benchmarks/bench_instrument.py) and
examples/native_fuzz.py import ``Fuzzer`` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
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
    "magic": [b"hello, fuzzing world"],
}
TOKENS = [b"(", b")", b",", b"=", b"**", b"[", b"]", b"{", b"}", b'"', b"'", b"\n", b".", b"0x"]
# The coverage bitmap: 2**20 slots, a PC's slot a hash of it (numpy scalars made once, not per
# input).
_BITMAP_BITS = 20
_SHIFT = np.uint64(29)
_SLOT_MASK = np.uint64((1 << _BITMAP_BITS) - 1)

# --cmp: when comparisons are collected (see Fuzzer.fuzz), and the slots of the table of recent
# compares (libFuzzer's TORC has 32 per operand width).
CMP_SAMPLE = 32  # besides each new corpus entry, one mutant in CMP_SAMPLE
CMP_TABLE = 128


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
        cmp: bool = False,
        cmp_size: int = 1 << 16,
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
        # The first exception: (its execution, its type, the input); the type, not the
        # exception, whose traceback would keep the target's frames alive.
        self.first_error: tuple[int, type[BaseException], bytes] | None = None
        # cmp: comparisons come from a linux-profile device in KCOV_TRACE_CMP mode (one mode per
        # device, as in Linux: the PC device above records blocks, never comparisons).  It is
        # enabled only around the executions that collect them (collect_cmp).
        self.cmp_device: kcovx.Device | None = None
        self.cmp_runs = 0
        # The table of recent compares: slot -> a pair of operands' bytes (see add_cmps).
        self.cmp_table: dict[int, tuple[bytes, bytes]] = {}
        self._cmp_pairs: list[tuple[bytes, bytes]] = []  # cmp_table's pairs, for rng.choice
        self.cmp_area: np.ndarray | None = None
        if cmp:
            self.cmp_device = kcovx.open(profile="linux")
            self.cmp_device.init_trace(cmp_size)
            self.cmp_area = self.cmp_device.mmap()

    def close(self) -> None:
        self.device.disable()
        self.device.close()
        if self.cmp_device is not None:
            self.cmp_device.close()

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
        except Exception as e:
            self.errors += 1
            if self.first_error is None:
                self.first_error = (self.execs + 1, type(e), data)
        self.device.flush()
        self.execs += 1
        n = int(area[base])
        return area[base + 1 : base + n + 1]

    def collect_cmp(self, data: bytes) -> list[kcovx.Comparison]:
        """Run ``data`` once more with comparisons recorded, add their operands to the table
        of recent compares and return them.  Counts as an execution; its blocks are not kept.

        On this thread the linux PC device (if that is the profile) is disabled first: a
        thread enables one linux device at a time (EBUSY).  A gvisor PC device stays enabled
        (the profiles keep their own per-thread state); the blocks this run covers reach its
        area through task work, at the latest on the flush below, and the next run_one's
        reset drops them.
        """
        dev, area = self.cmp_device, self.cmp_area
        if dev is None or area is None:
            raise RuntimeError("collect_cmp needs Fuzzer(cmp=True)")
        linux = self.device.profile == "linux"
        if linux:
            self.device.disable()
        try:
            dev.enable(kcovx.KCOV_TRACE_CMP)
            try:
                area[0] = 0
                with contextlib.suppress(Exception):  # counted by the run_one of this input
                    self.target(data.decode("utf-8", "replace") if self.text else data)
                found = kcovx.comparisons(area.data)  # a memoryview: faster to read
            finally:
                dev.disable()
        finally:
            if linux:
                if self.unique:
                    self.device.unique_enable(self.unique)
                else:
                    self.device.enable()
            self.device.flush()
        self.execs += 1
        self.cmp_runs += 1
        self.add_cmps(found)
        return found

    def add_cmps(self, comparisons: Iterable[kcovx.Comparison]) -> None:
        """Enter comparisons' operands into the table, as the byte strings a mutation looks
        for and writes: for an int comparison of width w both operands' w-byte little-endian
        and big-endian encodings (two pairs), for str/bytes the recorded prefixes (one).

        As libFuzzer's TORC, the table is a fixed number of slots and a pair overwrites the
        slot its hash names (crc32: the same on every run, unlike hash() of bytes), so it
        holds a spread of recent comparisons rather than the tail of the last input's.  A
        comparison that held teaches nothing and is skipped, as are repeats (a loop compares
        the same operands many times).
        """
        table = self.cmp_table
        for a, b, w in dict.fromkeys((c.arg1, c.arg2, c.size) for c in comparisons):
            if a == b:
                continue
            if isinstance(a, int) and isinstance(b, int):
                pairs = [
                    (a.to_bytes(w, "little"), b.to_bytes(w, "little")),
                    (a.to_bytes(w, "big"), b.to_bytes(w, "big")),
                ]
            elif isinstance(a, bytes) and isinstance(b, bytes):
                pairs = [(a, b) if a < b else (b, a)]  # either way round: one slot
            else:
                continue
            for x, y in pairs:
                table[zlib.crc32(y, zlib.crc32(x + b"\0")) % CMP_TABLE] = (x, y)
        self._cmp_pairs = list(table.values())

    def mutate_cmp(self, b: bytearray) -> None:
        """One mutation from the table of recent compares (libFuzzer's
        Mutate_AddWordFromTORC): take a pair, one side ``find`` and the other ``put``; where
        ``find`` occurs in the input (searching from a random position, wrapping), replace it
        by ``put``; otherwise overwrite or insert ``put`` at a random position."""
        rng = self.rng
        find, put = rng.choice(self._cmp_pairs)
        if rng.randrange(2):
            find, put = put, find
        start = rng.randint(0, len(b))
        at = b.find(find, start) if find else -1
        if at < 0 and find:
            at = b.find(find, 0, start + len(find) - 1)
        if at >= 0:
            b[at : at + len(find)] = put
        elif rng.randrange(2) and len(b) >= len(put):
            at = rng.randint(0, len(b) - len(put))
            b[at : at + len(put)] = put
        else:
            b[start:start] = put

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
        # With a table of recent compares (--cmp), a sixth operation uses it.
        ops = 6 if self._cmp_pairs else 5
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(ops)
            pos = rng.randint(0, len(b))
            if op == 0 and b:
                b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[pos:pos] = rng.choice(TOKENS)
            elif op == 2 and b:
                del b[pos : pos + rng.randint(1, 4)]
            elif op == 3:
                b[pos:pos] = bytes([rng.randrange(32, 127)])
            elif op == 5:
                self.mutate_cmp(b)
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
        # --cmp: which executions also collect comparisons.  Each new corpus entry's, once
        # (syzkaller's hints job runs per corpus input): it reached code no input reached
        # before, so its comparisons are ones the table has not seen; the guard just past a
        # passed magic is such a comparison.  And one mutant in CMP_SAMPLE, whatever its
        # coverage: a comparison's operands change with inputs that add no block (the bytes
        # compared against a magic), which per-entry collection alone would never see again.
        # A collection costs a second execution and four device calls (libFuzzer records on
        # every execution, in the hooks; here that would double every execution), so this
        # bounds its cost to about 1/CMP_SAMPLE of the loop when the corpus stops growing.
        cmp = self.cmp_device is not None
        for s in seeds:
            if self.consider(s, self.run_one(s)) and cmp:
                self.collect_cmp(s)
        if not self.corpus:
            self.corpus.append(b"")
        start = last = time.perf_counter()
        start_execs = self.execs
        # The budget is checked every 256 executions.  (Not on execs & 255 == 0: a collection
        # counts an execution too, and could step over that execution every time.)
        check = (self.execs | 255) + 1
        while True:
            parent = self.rng.choice(self.corpus)
            child = self.mutate(parent)
            new = self.consider(child, self.run_one(child))
            if cmp and (new or self.execs % CMP_SAMPLE == 0):
                self.collect_cmp(child)
            if self.execs >= check:
                check = (self.execs | 255) + 1
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


def load_target(spec: str, include: Sequence[str], cmp: bool = False) -> Callable[[Any], object]:
    """Import ``module:function`` with the module (and ``include``) instrumented, with
    comparison records too if ``cmp``."""
    module, _, func = spec.partition(":")
    if not module or not func:
        raise SystemExit(f"fuzz_loop: --target must be module:function, got {spec!r}")
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    with kcovx.instrument_imports(include=[module, *include], cmp=cmp):
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
    p.add_argument(
        "--cmp",
        action="store_true",
        help="comparison-guided: record the target's comparisons (a second, linux-profile\n"
        "device in KCOV_TRACE_CMP mode; either --profile) and mutate with their operands",
    )
    add_loop_options(p)
    args = loop_args(p, argv)
    target = load_target(args.target, args.include, cmp=args.cmp)
    fuzzer = Fuzzer(
        target, profile=args.profile, size=args.size, text=args.text, seed=args.seed, cmp=args.cmp
    )
    seeds = SEEDS.get(args.target.partition(":")[0].split(".")[0], [b""])
    try:
        fuzzer.fuzz(seeds, seconds=args.seconds, execs=args.execs)
    finally:
        fuzzer.close()
    print(
        f"done: {fuzzer.execs} execs, {len(fuzzer.blocks)} blocks, corpus {len(fuzzer.corpus)}"
        + (f", comparisons collected {fuzzer.cmp_runs} times" if args.cmp else ""),
        file=sys.stderr,
    )
    if fuzzer.first_error is not None:
        at, kind, data = fuzzer.first_error
        print(f"first exception at exec {at}: {kind.__name__} from {data!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
