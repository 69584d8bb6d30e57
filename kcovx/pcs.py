"""PCs of instrumented Python code: the encoding, the process-wide block registry, the PC table
file and the symbolizer.

Encoding (documented in README.md, "PCs"): a block's PC is ``unit << 32 | block`` where

- ``unit``  = the first 4 bytes (little-endian) of BLAKE2b(b"kcovx-unit\\0" + module name)
  with bit 31 cleared, or 1 if that is 0: every PC of one module shares its upper half, no PC
  is 0, and no Python PC has bit 63 set (native PCs, ``kcovx.sancov``, all do);
- ``block`` = the first 4 bytes of BLAKE2b(b"kcovx-block\\0" + key + b"\\0" + salt), where key
  is the block's qualified function name, the occurrence of that name in the module (0 for the
  first code object with it, 1 for the next, in source order), and the block's ordinal in
  that code object, and salt is 0 unless that PC was already taken.

So the same source yields the same PCs in every process and run.  A PC is taken when a block
of the same module (resolved while instrumenting it, in source order, so independent of
import order) or a different block registered earlier in this process (only after a 32-bit
unit collision; resolved in registration order) already has it; the next salt is tried.  A
block's identity is its module, key, file and source extent: instrumenting the same source
again yields the same PCs and registers nothing new.

PC table files are written atomically and only over regular files, and read as untrusted
input (regular files only, at most ``MAX_TABLE_BYTES``, strict UTF-8 and JSON without floats
or non-finite numbers, every field checked): any problem with a table's content is a
``PCsTableError`` (a ValueError), a path that cannot be opened or is not a regular file an
OSError.  json is imported only when a table is read or written.

Threading: the registry is guarded by one lock; lookups are plain dict reads under the GIL.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from kcovx._files import read_regular, replace_file
from kcovx.errors import PCsTableError, UnknownPCError

__all__ = [
    "Block",
    "block_pc",
    "blocks",
    "format_block",
    "load_pcs_table",
    "parse_pc",
    "symbolize",
    "unit_hash",
    "write_pcs_table",
]

TABLE_FORMAT = "kcovx-pcs-table"
TABLE_VERSION = 1
# A table of about 600,000 blocks; the cap bounds a reader's memory (JSON objects take several
# times their text) whatever file it is handed.
MAX_TABLE_BYTES = 64 << 20

# A PC as text: hex digits (ASCII only), an optional 0x, at most 64 bits.
PC_TEXT = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,16})")
# Line and column numbers in a table.
_MAX_POSITION = 2**32 - 1


class Block(NamedTuple):
    """One instrumented basic block.  Lines are 1-based; columns are 1-based UTF-8 byte
    offsets and end_col is one past the block's last byte (as in Go cover profiles)."""

    pc: int
    file: str
    function: str
    start_line: int
    start_col: int
    end_line: int
    end_col: int


# Identity of a block: what must match for a second registration to be the same block.
Ident = tuple[str, str, int, int, str, int, int, int, int]


def _h32(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little")


def unit_hash(module: str) -> int:
    """The upper 32 bits of every PC of ``module``."""
    return (_h32(b"kcovx-unit\0" + module.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF) or 1


def block_pc(unit: int, function: str, occurrence: int, ordinal: int, salt: int = 0) -> int:
    """The PC of a block before collision resolution (salt 0), or its salt-th alternative."""
    key = f"{function}\0{occurrence}\0{ordinal}\0{salt}".encode("utf-8", "surrogatepass")
    return (unit << 32) | _h32(b"kcovx-block\0" + key)


_lock = threading.Lock()
_blocks: dict[int, Block] = {}
_idents: dict[int, Ident] = {}


def conflicts(pcs: Iterable[int], idents: Iterable[Ident]) -> set[int]:
    """The PCs among ``pcs`` that this process already gave to a different block."""
    out = set()
    for pc, ident in zip(pcs, idents, strict=True):
        have = _idents.get(pc)
        if have is not None and have != ident:
            out.add(pc)
    return out


def register(entries: Iterable[tuple[Block, Ident]]) -> set[int]:
    """Register blocks atomically.  Returns the conflicting PCs (nothing registered) or an
    empty set (all registered, or already known as the same blocks)."""
    items = list(entries)
    with _lock:
        bad = conflicts((b.pc for b, _ in items), (i for _, i in items))
        if bad:
            return bad
        for block, ident in items:
            _blocks[block.pc] = block
            _idents[block.pc] = ident
    return set()


def symbolize(pc: int) -> Block:
    """The block of this process whose PC is ``pc``.  UnknownPCError (a LookupError) if none
    is."""
    if not isinstance(pc, int):
        raise TypeError(f"pc must be an int, not {type(pc).__name__}")
    try:
        return _blocks[pc]
    except KeyError:
        raise UnknownPCError(f"kcovx: unknown PC {pc:#x}: no instrumented block has it") from None


def blocks() -> list[Block]:
    """Every block instrumented in this process so far, sorted by PC."""
    with _lock:
        return sorted(_blocks.values())


def format_block(block: Block) -> str:
    """The two lines gVisor's ``runsc symbolize`` prints for a block (no trailing newline)."""
    return (
        f"{block.pc:#x}\n{block.file}:{block.start_line}.{block.start_col},"
        f"{block.end_line}.{block.end_col}"
    )


def parse_pc(text: str) -> int | None:
    """The PC written as ``text`` (hex digits, optional 0x, up to 16 digits), or None."""
    m = PC_TEXT.fullmatch(text)
    return int(m.group(1), 16) if m else None


def write_pcs_table(path: str | os.PathLike[str], table: Iterable[Block] | None = None) -> int:
    """Write the PC table (every known block, or ``table``) to ``path`` as JSON, atomically,
    replacing only a regular file.  Returns the number of blocks written."""
    import json

    rows = sorted(blocks() if table is None else table)
    doc = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "blocks": [[f"{b.pc:#018x}", *b[1:]] for b in rows],
    }
    text = json.dumps(doc, separators=(",", ":")) + "\n"  # ASCII: non-ASCII is escaped
    replace_file(os.fsdecode(os.fspath(path)), text.encode("ascii"))
    return len(rows)


def _no_float(text: str) -> Any:
    raise ValueError(f"the number {text[:40]} is not an integer")


def _checked_block(row: object) -> Block:
    if not isinstance(row, list) or len(row) != len(Block._fields):
        raise ValueError(f"a block is a list of {len(Block._fields)} fields, not {row!r:.80}")
    pc_s, file, function, *position = row
    pc = parse_pc(pc_s) if isinstance(pc_s, str) else None
    if pc is None:
        raise ValueError(f"PC {pc_s!r:.80} is not a hex number")
    for text in (file, function):
        if not isinstance(text, str):
            raise ValueError(f"file and function are strings, not {text!r:.80}")
        text.encode("utf-8", "surrogateescape")  # a file name os could have given
    for n in position:
        if type(n) is not int or not 0 <= n <= _MAX_POSITION:
            raise ValueError(f"line and column are integers in [0, 2**32), not {n!r:.80}")
    return Block(pc, file, function, *position)


def load_pcs_table(path: str | os.PathLike[str]) -> dict[int, Block]:
    """Read a table written by ``write_pcs_table``.  PCsTableError if it is not one; OSError if
    the path cannot be opened or is not a regular file."""
    import json

    name = os.fsdecode(os.fspath(path))
    try:
        data = read_regular(name, MAX_TABLE_BYTES)
        text = data.decode("utf-8")
        doc = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
    except RecursionError:
        raise PCsTableError(f"{name}: not a kcovx PC table (nested too deeply)") from None
    except ValueError as e:  # too large, not UTF-8, not JSON, a float or a huge integer
        raise PCsTableError(f"{name}: not a kcovx PC table ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
        raise PCsTableError(f"{name}: not a kcovx PC table")
    if doc.get("version") != TABLE_VERSION:
        raise PCsTableError(
            f"{name}: PC table version {doc.get('version')!r:.40}, "
            f"this kcovx reads version {TABLE_VERSION}"
        )
    rows = doc.get("blocks")
    if not isinstance(rows, list):
        raise PCsTableError(f"{name}: malformed PC table (no list of blocks)")
    out: dict[int, Block] = {}
    for i, row in enumerate(rows):
        try:
            block = _checked_block(row)
        except ValueError as e:
            raise PCsTableError(f"{name}: malformed PC table (block {i}: {e})") from None
        out[block.pc] = block
    return out
