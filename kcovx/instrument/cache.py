"""The code cache: a unit's instrumented code and blocks on disk, keyed by everything that
shapes them, so that a warm import skips the rewrite.

Where: ``$KCOVX_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/kcovx``, else
``~/.cache/kcovx``; created 0700.  One file per entry, named by its key (hex).

Format of an entry: ``MAGIC`` | the key (20 bytes) | BLAKE2b-256 of key + payload | payload,
where the payload is ``marshal.dumps((module, filename, code, blocks, scopes, probe_name))``.

The cache is untrusted input (another process, a full disk or a user may have left anything
at an entry's name).  An entry is used only if it is a regular file (opened without
following a symlink and without blocking, so a FIFO or a device cannot hang the import) of
bounded size, carries the key it is looked up by (a file copied or renamed to another
module's name is refused), and its digest matches, before anything is unmarshalled; then
every field must have the expected type and values (the code a code object compiled from
that file, the module, file and probe name those asked for).  Anything else is a
CacheEntryError inside this module and a miss for the caller, who instruments from source.
The digest detects corruption, not forgery: whoever can write the cache folder can run code
in the processes that use it, as with ``__pycache__``.

Stores are atomic (a temporary file in the folder, renamed over the entry; removed on any
failure); a cache that cannot be written is only slower.  Threading: no state; concurrent
stores of one key leave one complete entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import marshal
import os
import stat
import sys
import tempfile
import types
from typing import Any

from kcovx.errors import CacheEntryError
from kcovx.instrument.rewrite import REWRITE_VERSION
from kcovx.instrument.unit import BlockRec, Unit

MAGIC = b"kcovxC\x01\n"  # the last byte but one is the entry format's version
_KEY_SIZE = 20
_DIGEST_SIZE = 32
_HEADER = len(MAGIC) + _KEY_SIZE + _DIGEST_SIZE
MAX_ENTRY = 64 << 20  # larger files are refused unread

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


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


def cache_key(source: bytes, filename: str, module: str) -> str:
    h = hashlib.blake2b(digest_size=_KEY_SIZE)
    for part in (
        b"kcovx-code-cache",
        MAGIC,
        str(REWRITE_VERSION).encode(),
        importlib.util.MAGIC_NUMBER,
        _INTERPRETER,
        module.encode("utf-8", "surrogatepass"),
        filename.encode("utf-8", "surrogatepass"),
        source,
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _digest(key: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(key + payload, digest_size=_DIGEST_SIZE, person=b"kcovx-cache").digest()


def _read_regular(path: str) -> bytes | None:
    """The bytes of the regular file at ``path`` (None if there is none), read without
    following a symlink or blocking; CacheEntryError for anything else there."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP for a symlink, EACCES, ...
        raise CacheEntryError(f"cannot open cache entry {path!r}: {e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheEntryError(f"cache entry {path!r} is not a regular file")
        if not _HEADER < st.st_size <= MAX_ENTRY:
            raise CacheEntryError(f"cache entry {path!r} has a bad size ({st.st_size})")
        chunks: list[bytes] = []
        got = 0
        while got <= st.st_size:  # read one byte past the size: the file must not grow
            chunk = os.read(fd, st.st_size + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise CacheEntryError(f"cannot read cache entry {path!r}: {e}") from None
    finally:
        os.close(fd)
    if got != st.st_size:
        raise CacheEntryError(f"cache entry {path!r} changed while it was read")
    return b"".join(chunks)


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value < high


def _unit(data: Any, module: str, filename: str, probe_name: str) -> Unit:
    """The Unit an unmarshalled payload describes, checked field by field."""
    if type(data) is not tuple or len(data) != 6:
        raise CacheEntryError("cache entry payload is not a 6-tuple")
    mod, file, code, blocks, scopes, name = data
    if (mod, file, name) != (module, filename, probe_name) or not all(
        type(v) is str for v in (mod, file, name)
    ):
        raise CacheEntryError("cache entry is for another module, file or probe")
    if type(code) is not types.CodeType or code.co_filename != filename:
        raise CacheEntryError("cache entry code is not a code object of its file")
    if type(scopes) is not list or type(blocks) is not list:
        raise CacheEntryError("cache entry blocks or scopes are not lists")
    out_scopes: list[tuple[str, int]] = []
    for i, s in enumerate(scopes):
        if type(s) is not tuple or len(s) != 2 or type(s[0]) is not str:
            raise CacheEntryError("cache entry has a malformed scope")
        if not _is_int(s[1], -1, i):
            raise CacheEntryError("cache entry has a malformed scope parent")
        out_scopes.append((s[0], s[1]))
    out_blocks: list[BlockRec] = []
    for b in blocks:
        if type(b) is not tuple or len(b) != 6:
            raise CacheEntryError("cache entry has a malformed block")
        scope, function, occurrence, ordinal, extent, pc = b
        ok = (
            _is_int(scope, 0, len(out_scopes))
            and type(function) is str
            and _is_int(occurrence, 0, 1 << 32)
            and _is_int(ordinal, 0, 1 << 32)
            and type(extent) is tuple
            and len(extent) == 4
            and all(_is_int(x, 0, 1 << 32) for x in extent)
            and _is_int(pc, 1, 1 << 64)
        )
        if not ok:
            raise CacheEntryError("cache entry has a malformed block")
        out_blocks.append(BlockRec(scope, function, occurrence, ordinal, extent, pc))
    return Unit(module, filename, code, out_blocks, out_scopes, probe_name)


def read_entry(path: str, key: str, module: str, filename: str, probe_name: str) -> Unit | None:
    """The unit stored at ``path`` under ``key``, verified (see the module docstring); None
    if there is no entry; CacheEntryError if there is one kcovx must not use."""
    blob = _read_regular(path)
    if blob is None:
        return None
    raw_key = bytes.fromhex(key)
    if blob[: len(MAGIC)] != MAGIC:
        raise CacheEntryError(f"cache entry {path!r} has a bad magic number")
    if blob[len(MAGIC) : len(MAGIC) + _KEY_SIZE] != raw_key:
        raise CacheEntryError(f"cache entry {path!r} was stored under another key")
    payload = blob[_HEADER:]
    if not hmac.compare_digest(blob[len(MAGIC) + _KEY_SIZE : _HEADER], _digest(raw_key, payload)):
        raise CacheEntryError(f"cache entry {path!r} is corrupt (digest mismatch)")
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as e:
        raise CacheEntryError(f"cache entry {path!r} does not unmarshal: {e}") from None
    return _unit(data, module, filename, probe_name)


def load(key: str, module: str, filename: str, probe_name: str) -> Unit | None:
    """The cached unit for ``key``, or None: no cache, no entry, or an entry that failed
    verification (then the caller instruments from source and stores a good one)."""
    d = cache_dir()
    if d is None:
        return None
    try:
        return read_entry(os.path.join(d, key), key, module, filename, probe_name)
    except CacheEntryError:
        return None


def entry_bytes(key: str, unit: Unit) -> bytes:
    """The bytes of the entry that stores ``unit`` under ``key``."""
    data = (
        unit.module,
        unit.filename,
        unit.code,
        [(b.scope, b.function, b.occurrence, b.ordinal, b.extent, b.pc) for b in unit.blocks],
        unit.scopes,
        unit.probe_name,
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
