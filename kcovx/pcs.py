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

Native PCs (bit 63 set, ``kcovx.sancov``) are symbolized from their object's DWARF line table
(``kcovx.sancov.symbolize``, loaded on the first one): in this process from the objects the
runtime has seen, offline from the objects a PC table records.  A native PC is a point, not a
range: its block's start and end are both the line and column of the hook call.

PC table files are written atomically and only over regular files, and read as untrusted
input (regular files only, at most ``MAX_TABLE_BYTES``, strict UTF-8 and JSON without floats
or non-finite numbers, every field checked): any problem with a table's content is a
``PCsTableError`` (a ValueError), a path that cannot be opened or is not a regular file an
OSError.  json is imported only when a table is read or written.  A table (version 2) also
lists the native objects recorded from (path, build-id hex, load address, unit; the unit must
be the one the build-id and path give) and, under "comparisons", the comparison sites
(``cmp=True``) apart from the blocks; version 1 tables, without objects, still read.

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
from kcovx.sancov import NativeObject, is_native, native_unit

__all__ = [
    "Block",
    "PCsTable",
    "block_pc",
    "blocks",
    "comparison_sites",
    "format_block",
    "load_pcs_table",
    "parse_pc",
    "read_pcs_table",
    "site_pc",
    "symbolize",
    "symbolize_native",
    "unit_hash",
    "write_pcs_table",
]

TABLE_FORMAT = "kcovx-pcs-table"
TABLE_VERSION = 2  # 2: native objects ("objects"); version 1 tables (no objects) still read
_READS_VERSIONS = (1, 2)
# At most this many native objects in a table (the runtime registers at most 512).
MAX_TABLE_OBJECTS = 4096
# A GNU build-id is 20 bytes with gcc and clang's defaults; the runtime keeps up to 64.
_MAX_BUILD_ID_BYTES = 64
_MAX_PATH_CHARS = 4096
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


def site_pc(unit: int, function: str, occurrence: int, ordinal: int, salt: int = 0) -> int:
    """The PC of a comparison site (``cmp=True``), as ``block_pc`` with the site's ordinal
    among its function's comparison sites, in a hash domain of its own."""
    key = f"{function}\0{occurrence}\0{ordinal}\0{salt}".encode("utf-8", "surrogatepass")
    return (unit << 32) | _h32(b"kcovx-cmp\0" + key)


_lock = threading.Lock()
_blocks: dict[int, Block] = {}
_idents: dict[int, Ident] = {}
_sites: set[int] = set()  # the PCs in _blocks that are comparison sites, not blocks


def conflicts(pcs: Iterable[int], idents: Iterable[Ident]) -> set[int]:
    """The PCs among ``pcs`` that this process already gave to a different block."""
    out = set()
    for pc, ident in zip(pcs, idents, strict=True):
        have = _idents.get(pc)
        if have is not None and have != ident:
            out.add(pc)
    return out


def register(
    entries: Iterable[tuple[Block, Ident]], sites: Iterable[tuple[Block, Ident]] = ()
) -> set[int]:
    """Register blocks and comparison sites atomically.  Returns the conflicting PCs
    (nothing registered) or an empty set (all registered, or already known as the same)."""
    items = list(entries)
    site_items = list(sites)
    every = items + site_items
    with _lock:
        bad = conflicts((b.pc for b, _ in every), (i for _, i in every))
        if bad:
            return bad
        for block, ident in every:
            _blocks[block.pc] = block
            _idents[block.pc] = ident
        _sites.update(b.pc for b, _ in site_items)
    return set()


def symbolize(pc: int) -> Block:
    """The block of this process whose PC is ``pc``: an instrumented Python block, or for a
    native PC the C line of the hook call in an object this process recorded from.
    UnknownPCError (a LookupError) if there is none (or the object file changed on disk)."""
    if not isinstance(pc, int):
        raise TypeError(f"pc must be an int, not {type(pc).__name__}")
    try:
        return _blocks[pc]
    except KeyError:
        pass
    if 0 <= pc < 1 << 64 and is_native(pc):
        from kcovx.sancov import objects

        return symbolize_native(pc, objects())
    raise UnknownPCError(f"kcovx: unknown PC {pc:#x}: no instrumented block has it")


def symbolize_native(pc: int, objects: Iterable[NativeObject]) -> Block:
    """The C line of native PC ``pc``, from the first of ``objects`` with its unit whose file
    still has the recorded build-id.  The block is a point: start == end == line.col of the
    hook call; an object without line information gives its path as the file, the function
    from its symbol table, and line 0 (``0.0,0.0``).  UnknownPCError if no object has the
    unit, or its file is gone, changed (stale) or unreadable."""
    from kcovx.sancov import symbolize as native

    unit = pc >> 32
    problem = f"kcovx: unknown PC {pc:#x}: no native object recorded with unit {unit:#x}"
    for obj in objects:
        if obj.unit != unit:
            continue
        try:
            where = native.lookup(obj.path, obj.build_id, (pc & 0xFFFFFFFF) - 1)
        except UnknownPCError as e:
            problem = f"kcovx: native PC {pc:#x}: {str(e).removeprefix('kcovx: ')}"
            continue
        if not where.file:
            return Block(pc, obj.path, where.function, 0, 0, 0, 0)
        return Block(
            pc, where.file, where.function, where.line, where.column, where.line, where.column
        )
    raise UnknownPCError(problem)


def blocks() -> list[Block]:
    """Every block instrumented in this process so far, sorted by PC."""
    with _lock:
        return sorted(b for pc, b in _blocks.items() if pc not in _sites)


def comparison_sites() -> list[Block]:
    """Every comparison site (``cmp=True``) instrumented in this process so far, sorted by
    PC: its extent is the operator's (a match pattern's) span."""
    with _lock:
        return sorted(_blocks[pc] for pc in _sites)


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


def write_pcs_table(
    path: str | os.PathLike[str],
    table: Iterable[Block] | None = None,
    objects: Iterable[NativeObject] | None = None,
) -> int:
    """Write the PC table (every known block and comparison site, or ``table``; the native
    objects this process recorded from, or ``objects``) to ``path`` as JSON, atomically,
    replacing only a regular file.  Returns the number of blocks (and sites) written."""
    import json

    if objects is None:
        from kcovx.sancov import objects as seen

        objects = seen()
    if table is None:
        rows = sorted(blocks())
        site_rows = comparison_sites()
    else:
        with _lock:
            every = sorted(table)
        rows = [b for b in every if b.pc not in _sites]
        site_rows = [b for b in every if b.pc in _sites]
    doc = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "blocks": [[f"{b.pc:#018x}", *b[1:]] for b in rows],
        "comparisons": [[f"{b.pc:#018x}", *b[1:]] for b in site_rows],
        "objects": [
            {"path": o.path, "build_id": o.build_id, "base": f"{o.base:#x}", "unit": f"{o.unit:#x}"}
            for o in objects
        ],
    }
    text = json.dumps(doc, separators=(",", ":")) + "\n"  # ASCII: non-ASCII is escaped
    replace_file(os.fsdecode(os.fspath(path)), text.encode("ascii"))
    return len(rows) + len(site_rows)


class PCsTable(NamedTuple):
    """A PC table as read back: its blocks (and comparison sites) by PC, its native objects
    (none in version 1), and which of the PCs are comparison sites (``cmp=True``), not
    blocks."""

    blocks: dict[int, Block]
    objects: list[NativeObject]
    sites: frozenset[int] = frozenset()


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


_OBJECT_KEYS = frozenset(("path", "build_id", "base", "unit"))
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})*")


def _checked_object(item: object) -> NativeObject:
    if not isinstance(item, dict) or set(item) != _OBJECT_KEYS:
        raise ValueError(f"an object has exactly the keys {sorted(_OBJECT_KEYS)}, not {item!r:.80}")
    path, build_id, base_s, unit_s = (item[k] for k in ("path", "build_id", "base", "unit"))
    if not isinstance(path, str) or not 0 < len(path) <= _MAX_PATH_CHARS or "\0" in path:
        raise ValueError(f"path is a non-empty string without NUL, not {path!r:.80}")
    path.encode("utf-8", "surrogateescape")  # a file name os could have given
    if (
        not isinstance(build_id, str)
        or len(build_id) > 2 * _MAX_BUILD_ID_BYTES
        or not _HEX_BYTES.fullmatch(build_id)
    ):
        raise ValueError(f"build_id is lowercase hex bytes (up to 64), not {build_id!r:.80}")
    base = parse_pc(base_s) if isinstance(base_s, str) else None
    unit = parse_pc(unit_s) if isinstance(unit_s, str) else None
    if base is None or unit is None:
        raise ValueError(f"base and unit are hex numbers, not {base_s!r:.40}, {unit_s!r:.40}")
    want = native_unit(bytes.fromhex(build_id), path)
    if unit != want:
        raise ValueError(f"unit {unit:#x} is not the unit of that build-id and path ({want:#x})")
    return NativeObject(path, build_id, base, unit)


def read_pcs_table(path: str | os.PathLike[str]) -> PCsTable:
    """Read a table written by ``write_pcs_table`` (version 1 or 2): its blocks and native
    objects.  PCsTableError if it is not one; OSError if the path cannot be opened or is not a
    regular file."""
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
    version = doc.get("version")
    if type(version) is not int or version not in _READS_VERSIONS:
        raise PCsTableError(
            f"{name}: PC table version {version!r:.40}, "
            f"this kcovx reads versions {', '.join(map(str, _READS_VERSIONS))}"
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
    site_rows = doc.get("comparisons", [])
    if not isinstance(site_rows, list):
        raise PCsTableError(f"{name}: malformed PC table (comparisons is not a list)")
    sites = set()
    for i, row in enumerate(site_rows):
        try:
            block = _checked_block(row)
        except ValueError as e:
            raise PCsTableError(f"{name}: malformed PC table (comparison {i}: {e})") from None
        if block.pc in out:
            raise PCsTableError(f"{name}: malformed PC table (PC {block.pc:#x} listed twice)")
        out[block.pc] = block
        sites.add(block.pc)
    objects: list[NativeObject] = []
    if version >= 2:
        items = doc.get("objects")
        if not isinstance(items, list) or len(items) > MAX_TABLE_OBJECTS:
            raise PCsTableError(
                f"{name}: malformed PC table (no list of at most {MAX_TABLE_OBJECTS} objects)"
            )
        for i, item in enumerate(items):
            try:
                objects.append(_checked_object(item))
            except ValueError as e:
                raise PCsTableError(f"{name}: malformed PC table (object {i}: {e})") from None
    return PCsTable(out, objects, frozenset(sites))


def load_pcs_table(path: str | os.PathLike[str]) -> dict[int, Block]:
    """The blocks of a table written by ``write_pcs_table``, by PC (``read_pcs_table`` also
    gives its native objects).  PCsTableError if it is not one; OSError if the path cannot be
    opened or is not a regular file."""
    return read_pcs_table(path).blocks
