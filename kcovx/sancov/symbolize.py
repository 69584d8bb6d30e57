"""Native PCs to C source lines: the object files' DWARF line tables and symbol tables, read
with pyelftools, else with binutils' ``addr2line``; and the GNU build-id of an ELF file.

Owns: one ``ObjectSymbolizer`` per (path, build-id), cached for the life of the process
(parsing DWARF is slow: each compile unit's line table and function ranges are parsed once, on
the first PC that falls in it, and each answer is kept).  pyelftools is imported on the first
native symbolization, never by ``import kcovx``; it is reached only through ``_elftools()``,
which hands its modules back as ``Any`` (the library's typing differs between versions).

The address looked up is ``offset - 1``: a native PC's offset is the hook call's return address
minus the load bias, i.e. the link-time address just past the call, so ``offset - 1`` lies in
the call instruction, whose line-table row is the instrumented line.

Invariants: an answer comes only from a file whose build-id is the one the PC was recorded
with (checked again whenever the file's stat identity changes): a file rebuilt or replaced at
the same path is reported stale (``UnknownPCError``), never read for lines.  An object recorded
without a build-id is accepted while its file still has none.  Object files are untrusted: a
malformed one is an ``UnknownPCError`` naming it, never a crash; at most ``MAX_OBJECT_BYTES``
are read.

Threading: one lock serializes every lookup (the caches and pyelftools' streams are shared).
"""

from __future__ import annotations

import bisect
import importlib
import io
import os
import shutil
import stat
import struct
import subprocess
import threading
from typing import Any, BinaryIO, NamedTuple

from kcovx._files import read_regular
from kcovx.errors import UnknownPCError

__all__ = [
    "NativeLine",
    "ObjectSymbolizer",
    "backend",
    "build_id_of",
    "clear_cache",
    "lookup",
    "read_build_id",
]

MAX_OBJECT_BYTES = 2 << 30  # an object file larger than this is refused
_MAX_NOTES = 1 << 20  # bytes of PT_NOTE segments read for the build-id
_NT_GNU_BUILD_ID = 3
_PT_NOTE = 4
_ADDR2LINE_TIMEOUT = 60.0  # seconds
_ADDRESS_FORMS = frozenset(
    {
        "DW_FORM_addr",
        "DW_FORM_addrx",
        "DW_FORM_addrx1",
        "DW_FORM_addrx2",
        "DW_FORM_addrx3",
        "DW_FORM_addrx4",
        "DW_FORM_GNU_addr_index",
    }
)
_SYMBOL_SCAN = 16  # symbols at or below an address checked for one that spans it

_lock = threading.RLock()


class NativeLine(NamedTuple):
    """Where a native code address is: ``file`` "" and ``line`` 0 when the object has no line
    information for it; ``column`` 0 when the line table has none; ``function`` "" if unknown."""

    file: str
    function: str
    line: int
    column: int


# -- the build-id -------------------------------------------------------------------------------


def read_build_id(path: str) -> str | None:
    """The GNU build-id (hex) of the ELF file at ``path``, "" if it has none, None if it is
    not a regular ELF file this can read.  OSError if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return build_id_of(f)


def build_id_of(f: BinaryIO) -> str | None:
    """The GNU build-id (hex) of the ELF file open as ``f`` (seekable), "" if it has none,
    None if it is not an ELF file this can read (malformed headers included)."""
    try:
        return _build_id(f)
    except (struct.error, ValueError, OverflowError):
        return None


def _build_id(f: BinaryIO) -> str | None:
    ident = f.read(64)
    if len(ident) < 52 or ident[:4] != b"\x7fELF":
        return None
    cls, data = ident[4], ident[5]
    if data not in (1, 2) or cls not in (1, 2):
        return None
    e = "<" if data == 1 else ">"
    if cls == 2:
        (phoff,) = struct.unpack_from(e + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", ident, 54)
        ph, need = e + "IIQQQQ", 48
    else:
        (phoff,) = struct.unpack_from(e + "I", ident, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", ident, 42)
        ph, need = e + "IIIII", 20
    if phentsize < need or phentsize * phnum > _MAX_NOTES:
        return None
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    budget = _MAX_NOTES
    for i in range(min(phnum, len(table) // phentsize)):
        fields = struct.unpack_from(ph, table, i * phentsize)
        if fields[0] != _PT_NOTE:
            continue
        offset, size = (fields[2], fields[5]) if cls == 2 else (fields[1], fields[4])
        size = min(size, budget)
        budget -= size
        f.seek(offset)
        found = _gnu_build_id(f.read(size), e)
        if found is not None:
            return found
    return ""


def _gnu_build_id(notes: bytes, e: str) -> str | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from(e + "III", notes, pos)
        name_at = pos + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if desc_at + descsz > len(notes):
            return None
        if kind == _NT_GNU_BUILD_ID and notes[name_at : name_at + namesz] == b"GNU\0":
            return notes[desc_at : desc_at + descsz].hex()
        pos = end
    return None


# -- pyelftools ---------------------------------------------------------------------------------

_ELFTOOLS: tuple[Any, Any] | None = None
_NO_ELFTOOLS = False


def _elftools() -> tuple[Any, Any] | None:
    """pyelftools' (ELFFile, ranges module), imported on first use; None if not installed."""
    global _ELFTOOLS, _NO_ELFTOOLS
    if _ELFTOOLS is None and not _NO_ELFTOOLS:
        try:
            elffile = importlib.import_module("elftools.elf.elffile")
            ranges = importlib.import_module("elftools.dwarf.ranges")
        except ImportError:
            _NO_ELFTOOLS = True
            return None
        _ELFTOOLS = (elffile.ELFFile, ranges)
    return _ELFTOOLS


def backend() -> str:
    """Which reader native PCs are symbolized with: "pyelftools", "addr2line" or ""."""
    if _elftools() is not None:
        return "pyelftools"
    return "addr2line" if shutil.which("addr2line") else ""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return value if isinstance(value, str) else ""


class _Sequence(NamedTuple):
    start: int
    end: int
    addrs: list[int]
    rows: list[tuple[str, int, int]]  # file, line, column


class _Unit(NamedTuple):
    """One compile unit's line table and function extents (lo, hi, depth, name)."""

    sequences: list[_Sequence]
    functions: list[tuple[int, int, int, str]]


class _Dwarf:
    """An ELF file's DWARF and symbol tables, parsed lazily (one compile unit at a time)."""

    def __init__(self, data: bytes) -> None:
        tools = _elftools()
        assert tools is not None
        self._elf_class, self._ranges_mod = tools
        self._elf: Any = self._elf_class(io.BytesIO(data))
        self._dwarf: Any = None
        if self._elf.get_section_by_name(".debug_info") is not None or (
            self._elf.get_section_by_name(".zdebug_info") is not None
        ):
            self._dwarf = self._elf.get_dwarf_info()
        self._aranges: Any = None
        self._units: dict[int, _Unit] = {}
        self._unit_extents: list[tuple[int, list[tuple[int, int]] | None]] | None = None
        self._symbols: list[tuple[int, int, str]] | None = None
        self._symbol_addrs: list[int] = []

    def lookup(self, addr: int) -> NativeLine:
        file, line, column, function = "", 0, 0, ""
        if self._dwarf is not None:
            unit = self._unit_at(addr)
            if unit is not None:
                row = _row_at(unit.sequences, addr)
                if row is not None:
                    file, line, column = row
                best = -1
                for lo, hi, depth, name in unit.functions:
                    if lo <= addr < hi and depth > best and name:
                        best, function = depth, name
        if not function:
            function = self._symbol_at(addr)
        return NativeLine(file, function, line, column)

    # compile units

    def _unit_at(self, addr: int) -> _Unit | None:
        if self._aranges is None:
            self._aranges = self._dwarf.get_aranges() or False
        if self._aranges:
            offset = self._aranges.cu_offset_at_addr(addr)
            if offset is not None:
                return self._unit(offset)
        # No .debug_aranges entry (clang emits none by default): the units whose top DIE
        # covers addr, then those that say nothing of their extent, by their line tables.
        for offset in self._unit_candidates(addr):
            unit = self._unit(offset)
            if _row_at(unit.sequences, addr) is not None:
                return unit
        return None

    def _unit_candidates(self, addr: int) -> list[int]:
        if self._unit_extents is None:
            self._unit_extents = []
            for cu in self._dwarf.iter_CUs():
                top = cu.get_top_DIE()
                base = _attr(top, "DW_AT_low_pc")
                extent = self._ranges(top, cu, base if isinstance(base, int) else 0)
                self._unit_extents.append((cu.cu_offset, extent or None))
        covering = [
            o for o, ext in self._unit_extents if ext and any(lo <= addr < hi for lo, hi in ext)
        ]
        return covering + [o for o, ext in self._unit_extents if ext is None]

    def _unit(self, offset: int) -> _Unit:
        unit = self._units.get(offset)
        if unit is None:
            cu = self._dwarf.get_CU_at(offset)
            unit = _Unit(self._lines(cu), self._functions(cu))
            self._units[offset] = unit
        return unit

    def _lines(self, cu: Any) -> list[_Sequence]:
        program = self._dwarf.line_program_for_CU(cu)
        if program is None:
            return []
        top = cu.get_top_DIE()
        comp_dir = _text(_attr(top, "DW_AT_comp_dir"))
        version = program.header.version
        files = list(program.header.file_entry)
        dirs = [_text(d) for d in program.header.include_directory]
        names: dict[int, str] = {}

        def file_name(index: int) -> str:
            if index in names:
                return names[index]
            i = index if version >= 5 else index - 1
            name = ""
            if 0 <= i < len(files):
                entry = files[i]
                name = _text(entry.name)
                d = entry.dir_index if version >= 5 else entry.dir_index - 1
                folder = dirs[d] if 0 <= d < len(dirs) else comp_dir
                if version < 5 and entry.dir_index == 0:
                    folder = comp_dir
                if not os.path.isabs(folder) and comp_dir:
                    folder = os.path.join(comp_dir, folder)
                name = os.path.normpath(os.path.join(folder, name)) if name else ""
            names[index] = name
            return name

        out: list[_Sequence] = []
        addrs: list[int] = []
        rows: list[tuple[str, int, int]] = []
        for entry in program.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                if addrs:
                    out.append(_Sequence(addrs[0], state.address, addrs, rows))
                addrs, rows = [], []
                continue
            addrs.append(state.address)
            rows.append((file_name(state.file), state.line, state.column))
        return out

    def _functions(self, cu: Any) -> list[tuple[int, int, int, str]]:
        out: list[tuple[int, int, int, str]] = []
        top = cu.get_top_DIE()
        base = _attr(top, "DW_AT_low_pc")
        base = base if isinstance(base, int) else 0
        stack: list[tuple[Any, int]] = [(top, 0)]
        while stack:
            die, depth = stack.pop()
            if die.tag in ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine"):
                name = self._name(die)
                for lo, hi in self._ranges(die, cu, base):
                    out.append((lo, hi, depth, name))
            if die.has_children:
                stack.extend((child, depth + 1) for child in die.iter_children())
        return out

    def _name(self, die: Any) -> str:
        for _ in range(8):  # abstract origin / specification chains are short
            attrs = die.attributes
            if "DW_AT_name" in attrs:
                return _text(attrs["DW_AT_name"].value)
            follow = next(
                (k for k in ("DW_AT_abstract_origin", "DW_AT_specification") if k in attrs), None
            )
            if follow is None:
                return ""
            die = die.get_DIE_from_attribute(follow)
        return ""

    def _ranges(self, die: Any, cu: Any, base: int) -> list[tuple[int, int]]:
        attrs = die.attributes
        if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
            lo = self._address(attrs["DW_AT_low_pc"], cu)
            high = attrs["DW_AT_high_pc"]
            if lo is None:
                return []
            if high.form in _ADDRESS_FORMS:
                hi = self._address(high, cu)
                return [] if hi is None else [(lo, hi)]
            return [(lo, lo + high.value)]  # a constant: the length
        if "DW_AT_ranges" not in attrs:
            return []
        lists = self._dwarf.range_lists()
        if lists is None:
            return []
        out = []
        for entry in lists.get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu):
            if isinstance(entry, self._ranges_mod.BaseAddressEntry):
                base = entry.base_address
            elif entry.is_absolute:
                out.append((entry.begin_offset, entry.end_offset))
            else:
                out.append((base + entry.begin_offset, base + entry.end_offset))
        return out

    def _address(self, attr: Any, cu: Any) -> int | None:
        if attr.form == "DW_FORM_addr":
            return int(attr.value)
        if attr.form in _ADDRESS_FORMS:  # an index into .debug_addr (DWARF 5, split DWARF)
            return int(self._dwarf.get_addr(cu, attr.value))
        return None

    # the symbol table

    def _symbol_at(self, addr: int) -> str:
        if self._symbols is None:
            self._symbols = self._read_symbols()
            self._symbol_addrs = [s[0] for s in self._symbols]
        i = bisect.bisect_right(self._symbol_addrs, addr) - 1
        for j in range(i, max(i - _SYMBOL_SCAN, -1), -1):  # functions do not nest: look near
            value, size, name = self._symbols[j]
            if value <= addr < value + size:
                return name
        return ""

    def _read_symbols(self) -> list[tuple[int, int, str]]:
        for section_name in (".symtab", ".dynsym"):
            section = self._elf.get_section_by_name(section_name)
            if section is None or not hasattr(section, "iter_symbols"):
                continue
            found = [
                (s["st_value"], s["st_size"], _text(s.name))
                for s in section.iter_symbols()
                if s["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC")
                and s["st_shndx"] != "SHN_UNDEF"
                and s["st_size"] > 0
            ]
            if found:
                return sorted(found)
        return []


def _attr(die: Any, name: str) -> Any:
    a = die.attributes.get(name)
    return None if a is None else a.value


def _row_at(sequences: list[_Sequence], addr: int) -> tuple[str, int, int] | None:
    for seq in sequences:
        if seq.start <= addr < seq.end:
            return seq.rows[bisect.bisect_right(seq.addrs, addr) - 1]
    return None


# -- addr2line ----------------------------------------------------------------------------------


def _addr2line(path: str, addr: int) -> NativeLine:
    exe = shutil.which("addr2line")
    if exe is None:
        raise UnknownPCError(
            "kcovx: cannot symbolize native PCs: install pyelftools "
            "(pip install 'kcovx[native]') or binutils' addr2line"
        )
    try:
        r = subprocess.run(
            [exe, "-f", "-C", "-e", path, f"{addr:#x}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_ADDR2LINE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UnknownPCError(f"kcovx: addr2line took too long on {path}") from None
    out = os.fsdecode(r.stdout).splitlines()
    if r.returncode != 0 or len(out) < 2:
        err = os.fsdecode(r.stderr).strip()[:200]
        raise UnknownPCError(f"kcovx: addr2line cannot read {path}: {err}")
    function, where = out[0], out[1].split(" (discriminator", 1)[0]
    file, _, line_text = where.rpartition(":")
    line = int(line_text) if line_text.isdigit() else 0
    if file in ("??", "") or line == 0:
        file, line = "", 0
    return NativeLine(file, "" if function == "??" else function, line, 0)


# -- objects ------------------------------------------------------------------------------------


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ObjectSymbolizer:
    """Symbolizes code addresses of one object file, as long as the file at its path still
    has the build-id the PCs were recorded with."""

    def __init__(self, path: str, build_id: str) -> None:
        self.path = path
        self.build_id = build_id
        self._seen: tuple[int, int, int, int] | None = None
        self._data = b""
        self._dwarf: _Dwarf | None = None
        self._answers: dict[int, NativeLine] = {}

    def _unreadable(self, why: str) -> UnknownPCError:
        return UnknownPCError(f"kcovx: native object {self.path!r} cannot be read: {why}")

    def _check(self) -> None:
        """UnknownPCError unless the file at the path is the recorded object; its content is
        read again whenever its stat identity changed."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise self._unreadable(str(e.strerror)) from None
        if self._seen == _identity(st):
            return
        self._seen, self._data, self._dwarf = None, b"", None
        self._answers.clear()
        if not stat.S_ISREG(st.st_mode):
            raise self._unreadable("not a regular file")
        try:
            data = read_regular(self.path, MAX_OBJECT_BYTES)
        except OSError as e:
            raise self._unreadable(str(e.strerror)) from None
        except ValueError:
            raise self._unreadable(f"larger than {MAX_OBJECT_BYTES} bytes") from None
        now = build_id_of(io.BytesIO(data))
        if now is None:
            raise UnknownPCError(f"kcovx: native object {self.path!r} is not an ELF file")
        if now != self.build_id:
            raise UnknownPCError(
                f"kcovx: stale object {self.path!r}: its build-id is now {now or 'none'}, "
                f"the PC was recorded from build-id {self.build_id or 'none'}"
            )
        self._seen, self._data = _identity(st), data

    def lookup(self, addr: int) -> NativeLine:
        """Where ``addr`` (a link-time address in this object) is."""
        with _lock:
            self._check()
            if addr < 0:  # offset 0: no call returns there
                return NativeLine("", "", 0, 0)
            answer = self._answers.get(addr)
            if answer is None:
                answer = self._lookup(addr)
                self._answers[addr] = answer
            return answer

    def _lookup(self, addr: int) -> NativeLine:
        if _elftools() is None:
            return _addr2line(self.path, addr)
        try:
            if self._dwarf is None:
                self._dwarf = _Dwarf(self._data)
            return self._dwarf.lookup(addr)
        except Exception as e:  # pyelftools on a malformed file: anything from its parser
            raise UnknownPCError(
                f"kcovx: native object {self.path!r} has malformed debug information "
                f"({type(e).__name__}: {str(e)[:120]})"
            ) from None


_objects: dict[tuple[str, str], ObjectSymbolizer] = {}


def lookup(path: str, build_id: str, addr: int) -> NativeLine:
    """Where ``addr`` is in the object recorded at ``path`` with ``build_id`` (hex, or "").
    UnknownPCError if that object is gone, changed (stale) or unreadable."""
    with _lock:
        obj = _objects.get((path, build_id))
        if obj is None:
            obj = _objects[(path, build_id)] = ObjectSymbolizer(path, build_id)
    return obj.lookup(addr)


def clear_cache() -> None:
    """Forget every parsed object (tests; a long-lived process that rebuilt its objects)."""
    with _lock:
        _objects.clear()
