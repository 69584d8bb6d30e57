"""Native code under kcovx: the sanitizer-coverage runtime's build flags and its objects.

kcovx's runtime, ``libkcovx_rt.so`` in this folder, defines the hooks that gcc's and clang's
``-fsanitize-coverage=trace-pc,trace-cmp`` (and clang's ``trace-pc-guard``) make instrumented
code call.  An instrumented extension links against it (``link_args()``: ``-lkcovx_rt`` and an
rpath to this folder), so it loads whatever the import order and records nothing until a
device is enabled; ``import kcovx`` loads the same copy (the loader matches the soname).  What
a hook records is what a Python probe of the same thread would (README.md, "Native code").

Native PCs (the rule, also in ``kcovx_rt.h``): ``unit << 32 | offset`` where ``unit`` is
``0x80000000 | h`` with ``h`` 31 bits of FNV-1a-64 over a domain tag and the object's GNU
build-id (else its file's base name), never ``0xFFFFFFFF`` (the unknown unit), and ``offset`` is
the hook call's return address minus the object's load bias.  Python units have bit 31 clear,
so a PC's top bit says which kind it is.

Threading: everything here reads state the runtime publishes; nothing takes a lock.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from kcovx import _area

__all__ = [
    "NATIVE_UNKNOWN_UNIT",
    "NativeObject",
    "compile_args",
    "is_native",
    "lib_dir",
    "lib_path",
    "link_args",
    "native_unit",
    "objects",
]

LIB_NAME: str = _area.RT_SONAME
DSO_STUB = "kcovx_dso.o"
NATIVE_UNKNOWN_UNIT: int = _area.NATIVE_UNKNOWN_UNIT
_NATIVE_BIT: int = _area.NATIVE_BIT

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M64 = (1 << 64) - 1


class NativeObject(NamedTuple):
    """A native object whose hooks ran while something recorded, as this process loaded it."""

    path: str  # as the loader named it (the program: /proc/self/exe resolved)
    build_id: str  # hex, "" when the object has no GNU build-id note
    base: int  # load bias: a PC's offset + base is the code address in this process
    unit: int  # the upper 32 bits of its PCs


def lib_dir() -> str:
    """The folder holding ``libkcovx_rt.so``."""
    return os.path.dirname(os.path.abspath(__file__))


def lib_path() -> str:
    """The runtime library's path."""
    return os.path.join(lib_dir(), LIB_NAME)


def compile_args(cmp: bool = True, debug: bool = True) -> list[str]:
    """Compiler flags that instrument C/C++ code for kcovx (setuptools' ``extra_compile_args``).

    ``cmp`` adds comparison tracing (``trace-cmp``: ``KCOV_TRACE_CMP`` records); ``debug`` adds
    ``-g`` so that ``kcovx symbolize`` can name the C line of each PC, and ``debug=False`` adds
    ``-g0``, which overrides the ``-g`` an interpreter's own CFLAGS often carry (setuptools
    puts these flags after them).
    """
    kinds = "trace-pc,trace-cmp" if cmp else "trace-pc"
    return [f"-fsanitize-coverage={kinds}", "-g" if debug else "-g0"]


def link_args() -> list[str]:
    """Linker flags that bind instrumented code to kcovx's runtime (``extra_link_args``).

    The library is recorded as needed even under ``--as-needed``, and found through an rpath to
    this installation, so the object loads before or without ``import kcovx``.  The first
    argument is ``kcovx_dso.o``, a stub whose destructor tells the runtime when the object is
    unloaded, so that code loaded at its addresses later is not taken for it.
    """
    d = lib_dir()
    return [
        os.path.join(d, DSO_STUB),  # its destructor tells the runtime of dlclose
        f"-L{d}",
        f"-Wl,-rpath,{d}",
        "-Wl,--push-state,--no-as-needed",
        "-lkcovx_rt",
        "-Wl,--pop-state",
    ]


def _fnv1a(tag: bytes, data: bytes) -> int:
    h = _FNV_OFFSET
    for b in tag + b"\0" + data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def native_unit(build_id: bytes | None = None, path: str | None = None) -> int:
    """The unit (upper 32 bits) of a native object's PCs: from its build-id if it has one,
    else from its path's base name; what the runtime computes."""
    if build_id:
        h = _fnv1a(b"kcovx-native-build-id", bytes(build_id))
    elif path:
        h = _fnv1a(b"kcovx-native-name", os.fsencode(os.path.basename(path)))
    else:
        raise ValueError("a native unit needs a build-id or a path")
    h = (h ^ (h >> 32)) & 0x7FFFFFFF
    if h == 0x7FFFFFFF:
        h = 0x7FFFFFFE
    return h | 0x80000000


def is_native(pc: int) -> bool:
    """Whether pc is a native PC (its unit has bit 31 set)."""
    return bool(pc & _NATIVE_BIT)


def objects() -> list[NativeObject]:
    """The native objects whose hooks this process has recorded, in the order first seen."""
    return [
        NativeObject(os.fsdecode(path), build_id.hex(), base, unit)
        for path, build_id, base, _lo, _span, unit in _area._native_objects()
    ]
