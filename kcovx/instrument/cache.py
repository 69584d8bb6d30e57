"""The code cache: a unit's instrumented code and blocks on disk, keyed by everything that
shapes them, so that a warm import skips the rewrite.

Where: ``$KCOVX_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/kcovx``, else
``~/.cache/kcovx``; created 0700.  One file per entry, named by its key (hex).

Format of an entry: ``MAGIC`` | the key (20 bytes) | SHA-256 of MAGIC + key + payload | payload,
where the payload is ``marshal.dumps((module, filename, probe_name, code, scopes, n, columns,
cmp, m, site_columns, actions))``: the n blocks and the m comparison sites as columns of
fixed-size unsigned ints (the bytes of ``array`` objects), and the comparison actions as
tuples (``unit.CmpAction``).

The cache is untrusted input (another process, a full disk or a user may have left anything
at an entry's name).  An entry is used only if it is a regular file (opened without
following a symlink and without blocking, so a FIFO or a device cannot hang the import) of
bounded size, carries the key it is looked up by (a file copied or renamed to another
module's name is refused), and its digest matches, before anything is unmarshalled; then
every field must have the expected type and values (the code a code object compiled from
that file, the module and file those asked for, the probe name one the code loads, each
scope named as one of the code's code objects).
Anything else is a CacheEntryError inside this module and a miss for the caller, who
instruments from source.
The digest detects corruption, not forgery: whoever can write the cache folder can run code
in the processes that use it, as with ``__pycache__``.

Stores are atomic (a temporary file in the folder, renamed over the entry; removed on any
failure); a cache that cannot be written is only slower.  Threading: no state; concurrent
stores of one key leave one complete entry.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import hmac
import importlib.util
import marshal
import os
import sys
import tempfile
import types
from typing import Any

from kcovx._area import Comparisons
from kcovx._files import read_regular
from kcovx.errors import CacheEntryError
from kcovx.instrument.rewrite import REWRITE_VERSION
from kcovx.instrument.unit import PROBE, BlockRec, Unit

MAGIC = b"kcovxC\x04\n"  # the last byte but one is the entry format's version
_KEY_SIZE = 20
_DIGEST_SIZE = 32
_HEADER = len(MAGIC) + _KEY_SIZE + _DIGEST_SIZE
MAX_ENTRY = 64 << 20  # larger files are refused unread
# The block columns: (array typecode, ints per block) for scope, occurrence, ordinal, extent
# (lines and columns) and PC.  A block's function is its scope's qualified name.
_COLUMNS = (("I", 1), ("I", 1), ("I", 1), ("I", 4), ("Q", 1))


def _debug_ranges() -> bool:
    """Whether code objects carry column positions (off under ``-X no_debug_ranges``)."""
    return next(iter(compile("x", "", "eval").co_positions()))[2] is not None


# What the interpreter's compiler makes of the same tree, beyond the version: -O/-OO strip
# asserts, ``if __debug__:`` blocks and docstrings; -X no_debug_ranges drops columns; the
# ABI flags (debug, free-threaded builds) may change the bytecode.
_INTERPRETER = repr(
    (
        sys.version,
        getattr(sys, "abiflags", ""),
        sys.implementation.cache_tag,
        sys.flags.optimize,
        _debug_ranges(),
    )
).encode()


def cache_dir() -> str | None:
    d = os.environ.get("KCOVX_CACHE_DIR")
    if d is not None:
        return d or None  # KCOVX_CACHE_DIR="" turns the cache off
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kcovx")


def cache_key(source: bytes, filename: str, module: str, cmp: bool = False) -> str:
    h = hashlib.blake2b(digest_size=_KEY_SIZE)
    for part in (
        b"kcovx-code-cache",
        MAGIC,
        str(REWRITE_VERSION).encode(),
        b"cmp" if cmp else b"",
        importlib.util.MAGIC_NUMBER,
        _INTERPRETER,
        module.encode("utf-8", "surrogatepass"),
        filename.encode("utf-8", "surrogatepass"),
        source,
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _digest(key: bytes, payload: bytes | memoryview) -> bytes:
    # SHA-256: an integrity check against corruption (not forgery: there is no secret), and
    # the fastest strong digest here (CPUs hash it in hardware: ~2 GB/s against BLAKE2b's
    # ~0.7), which matters on the warm import path.
    h = hashlib.sha256(MAGIC)
    h.update(key)
    h.update(payload)
    return h.digest()


def _read_entry_file(path: str) -> bytes | None:
    """The bytes of the regular file at ``path`` (None if there is none), read without
    following a symlink or blocking (``kcovx._files.read_regular``); CacheEntryError for
    anything else there, or a size no entry has."""
    try:
        blob = read_regular(path, MAX_ENTRY, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP for a symlink, EACCES, not a regular file, ...
        raise CacheEntryError(f"cannot read cache entry {path!r}: {e}") from None
    except ValueError as e:
        raise CacheEntryError(f"cache entry {path!r} has a bad size ({e})") from None
    if len(blob) <= _HEADER:
        raise CacheEntryError(f"cache entry {path!r} has a bad size ({len(blob)})")
    return blob


def _column(raw: Any, typecode: str, n: int) -> array.array[int]:
    """A column of ``n`` unsigned ints stored as the bytes of an ``array``."""
    if type(raw) is not bytes:
        raise CacheEntryError("cache entry has a block column that is not bytes")
    col = array.array(typecode)
    if len(raw) != n * col.itemsize:
        raise CacheEntryError("cache entry has a block column of the wrong length")
    col.frombytes(raw)
    return col


def _records(n: Any, columns: Any, scopes: list[Any]) -> list[BlockRec]:
    """n blocks (or sites) stored as ``_COLUMNS``; a few C calls to check."""
    if type(n) is not int or type(columns) is not tuple:
        raise CacheEntryError("cache entry blocks are malformed")
    if not 0 <= n <= MAX_ENTRY or len(columns) != len(_COLUMNS):
        raise CacheEntryError("cache entry blocks are malformed")
    scope, occurrence, ordinal, extents, pcs_ = (
        _column(raw, typecode, n * width)
        for raw, (typecode, width) in zip(columns, _COLUMNS, strict=True)
    )
    if n and (max(scope) >= len(scopes) or min(pcs_) == 0):
        raise CacheEntryError("cache entry has a block of no scope or with PC 0")
    # map over the columns: the cheapest way to build a few hundred records (warm imports).
    names = [scopes[s][0] for s in scope]
    quads = zip(*[iter(extents)] * 4, strict=True)  # (line, col, end line, end col) per block
    return list(map(BlockRec, scope, names, occurrence, ordinal, quads, pcs_))


def _actions(raw: Any) -> list[Any]:
    """The comparison actions, checked for shape (their values: by Comparisons)."""
    if type(raw) is not list:
        raise CacheEntryError("cache entry comparison actions are not a list")
    for a in raw:
        if type(a) is not tuple or len(a) != 6 or type(a[5]) is not tuple:
            raise CacheEntryError("cache entry has a malformed comparison action")
        if any(type(x) is not int for x in a[:5]):
            raise CacheEntryError("cache entry has a malformed comparison action")
    try:
        Comparisons(raw)
    except (TypeError, ValueError, OverflowError) as e:
        raise CacheEntryError(f"cache entry has a bad comparison action: {e}") from None
    return raw


_INLINED = frozenset(("<listcomp>", "<setcomp>", "<dictcomp>"))


def _check_scope_names(code: types.CodeType, scopes: list[tuple[str, int]]) -> None:
    """Every scope is named as a code object of ``code`` is, or is a comprehension CPython
    inlined (3.12+) into a scope that is: a well-formed entry with a scope renamed would give
    its blocks another identity, so other PCs."""
    names = set()
    todo = [code]
    while todo:
        c = todo.pop()
        names.add(c.co_qualname)
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    for qual, _ in scopes:
        if qual in names:
            continue
        head, _, last = qual.rpartition(".")
        if last in _INLINED and (not head or head.removesuffix(".<locals>") in names):
            continue
        raise CacheEntryError(f"cache entry has a scope {qual!r:.80} its code does not have")


def _unit(data: Any, module: str, filename: str) -> Unit:
    """The Unit an unmarshalled payload describes, checked field by field.  The blocks are
    columns of fixed-size unsigned ints (``_COLUMNS``), so checking them is a few C calls."""
    if type(data) is not tuple or len(data) != 11:
        raise CacheEntryError("cache entry payload is not an 11-tuple")
    mod, file, name, code, scopes, n, columns, cmp, m, site_columns, actions = data
    if type(mod) is not str or type(file) is not str or type(name) is not str:
        raise CacheEntryError("cache entry names are not strings")
    if (mod, file) != (module, filename) or not name.startswith(PROBE):
        raise CacheEntryError("cache entry is for another module or file, or has no probe name")
    if type(code) is not types.CodeType or code.co_filename != filename:
        raise CacheEntryError("cache entry code is not a code object of its file")
    if name not in code.co_names:  # the module's entry probe loads it
        raise CacheEntryError("cache entry code does not record through its probe name")
    if type(scopes) is not list or type(cmp) is not bool:
        raise CacheEntryError("cache entry scopes or blocks are malformed")
    for i, s in enumerate(scopes):
        if not (type(s) is tuple and len(s) == 2 and type(s[0]) is str and type(s[1]) is int):
            raise CacheEntryError("cache entry has a malformed scope")
        if not -1 <= s[1] < i:
            raise CacheEntryError("cache entry has a scope whose parent does not precede it")
    _check_scope_names(code, scopes)
    blocks = _records(n, columns, scopes)
    sites = _records(m, site_columns, scopes)
    acts = _actions(actions) if actions else []
    if not cmp and (sites or acts):
        raise CacheEntryError("cache entry has comparison sites but no cmp")
    return Unit(module, filename, code, blocks, scopes, name, False, cmp, sites, acts)


def read_entry(path: str, key: str, module: str, filename: str) -> Unit | None:
    """The unit stored at ``path`` under ``key``, verified (see the module docstring); None
    if there is no entry; CacheEntryError if there is one kcovx must not use."""
    blob = _read_entry_file(path)
    if blob is None:
        return None
    raw_key = bytes.fromhex(key)
    if blob[: len(MAGIC)] != MAGIC:
        raise CacheEntryError(f"cache entry {path!r} has a bad magic number")
    if blob[len(MAGIC) : len(MAGIC) + _KEY_SIZE] != raw_key:
        raise CacheEntryError(f"cache entry {path!r} was stored under another key")
    payload = memoryview(blob)[_HEADER:]  # no copy of the payload
    if not hmac.compare_digest(blob[len(MAGIC) + _KEY_SIZE : _HEADER], _digest(raw_key, payload)):
        raise CacheEntryError(f"cache entry {path!r} is corrupt (digest mismatch)")
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as e:
        raise CacheEntryError(f"cache entry {path!r} does not unmarshal: {e}") from None
    return _unit(data, module, filename)


def load(key: str, module: str, filename: str) -> Unit | None:
    """The cached unit for ``key``, or None: no cache, no entry, or an entry that failed
    verification (then the caller instruments from source and stores a good one)."""
    d = cache_dir()
    if d is None:
        return None
    try:
        return read_entry(os.path.join(d, key), key, module, filename)
    except CacheEntryError:
        return None


def _columns(records: list[BlockRec]) -> tuple[bytes, ...]:
    cols = [array.array(typecode) for typecode, _ in _COLUMNS]
    for blk in records:
        cols[0].append(blk.scope)
        cols[1].append(blk.occurrence)
        cols[2].append(blk.ordinal)
        cols[3].extend(blk.extent)
        cols[4].append(blk.pc)
    return tuple(c.tobytes() for c in cols)


def entry_bytes(key: str, unit: Unit) -> bytes:
    """The bytes of the entry that stores ``unit`` under ``key``."""
    data = (
        unit.module,
        unit.filename,
        unit.probe_name,
        unit.code,
        [(str(q), int(p)) for q, p in unit.scopes],
        len(unit.blocks),
        _columns(unit.blocks),
        bool(unit.cmp),
        len(unit.sites),
        _columns(unit.sites),
        list(unit.actions),
    )
    payload = marshal.dumps(data)
    raw_key = bytes.fromhex(key)
    return MAGIC + raw_key + _digest(raw_key, payload) + payload


def store(key: str, unit: Unit) -> None:
    """Store ``unit`` under ``key`` (not a salted unit: its PCs depend on this process)."""
    d = cache_dir()
    if d is None or unit.salted:
        return
    blob = entry_bytes(key, unit)
    if len(blob) > MAX_ENTRY:
        return
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=d)
    except OSError:
        return  # a cache that cannot be written is only slower
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, os.path.join(d, key))
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
