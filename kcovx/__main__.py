"""The command line: ``kcovx demo`` (or ``python -m kcovx demo``) runs the end-to-end demo.

Owns nothing but printing: opens a device, sizes and maps its area, enables it for this
thread, records a few PCs the way a fuzzing loop would (reset word 0, run one input, read the
PCs back from the area), and prints what it read.  Exit status 0 when the words read back are
the ones kcov's rules predict, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import kcovx


def _one_input(data: bytes) -> None:
    """A stand-in for instrumented code: one PC per branch taken."""
    kcovx.trace_pc(0x1000)
    if data.startswith(b"F"):
        kcovx.trace_pc(0x1010)
        if data[1:2] == b"U":
            kcovx.trace_pc(0x1020)
            if data[2:3] == b"Z":
                kcovx.trace_pc(0x1030)
    kcovx.trace_pc(0x1000)  # a block run twice: kept twice by linux, once by gvisor


def demo(profile: str, size: int, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    inputs = [b"", b"F", b"FU", b"FUZ"]
    ok = True
    with kcovx.open(profile=profile) as kc:
        kc.init_trace(size)
        area = kc.mmap()
        kc.enable()
        print(f"{kc!r}", file=out)
        for data in inputs:
            area[0] = 0  # reset: the next PC goes to word 1
            _one_input(data)
            kc.flush()  # gvisor: task work copies the covered PCs in; linux: already there
            n = int(area[0])
            pcs = [f"{int(pc):#x}" for pc in area[1 : n + 1]]
            print(f"input {data!r:7} -> {n} PCs: {' '.join(pcs)}", file=out)
            want = 2 + len(data) if profile == "linux" else 1 + len(data)
            ok &= n == want
        kc.disable()
    print("ok" if ok else "MISMATCH", file=out)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kcovx", description=__doc__)
    parser.add_argument("command", nargs="?", default="demo", choices=["demo"])
    parser.add_argument("--profile", default="gvisor", choices=list(kcovx.PROFILES))
    parser.add_argument("--size", type=int, default=512, help="area size in words")
    args = parser.parse_args(argv)
    return demo(args.profile, args.size)


if __name__ == "__main__":
    sys.exit(main())
