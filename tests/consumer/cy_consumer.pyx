# cython: language_level=3
# tests/consumer/cy_consumer.pyx: a real consumer of kcovx's cimport surface.
#
# Owns nothing of kcovx: it only does what a third-party extension would do with
# `cimport kcovx` and include_dirs=[kcovx.get_include()]: reach an Area's kcovx_area_t
# (`area.c`) and call the inline appends of kcovx.h on it, in nogil loops, and take the checked
# capsule API with kcovx.import_api() at import (an incompatible kcovx is an ImportError here).
# Built at test time by tests/test_consumer.py; its generated .c and .so are never committed.
# Threading: the caller is the one writer of the area it passes (see kcovx.h); every function
# here runs its appends with the GIL released.

cimport cython
from libc.stdint cimport uint64_t

cimport kcovx

cdef const kcovx.kcovx_api_t *api = kcovx.import_api()

ABI_VERSION = kcovx.KCOVX_ABI_VERSION
CAPSULE_NAME = kcovx.KCOVX_CAPSULE_NAME.decode("ascii")
STRUCT_SIZE = sizeof(kcovx.kcovx_api_t)


@cython.boundscheck(False)
@cython.wraparound(False)
def append_range(kcovx.Area area not None, uint64_t first, uint64_t n):
    """kcovx_append_pc of first, first+1, ..., first+n-1 in a nogil loop.  Returns how many
    were stored (the rest were clipped)."""
    cdef kcovx.kcovx_area_t *a = &area.c
    cdef uint64_t i, stored = 0
    with nogil:
        for i in range(n):
            stored += <uint64_t> kcovx.kcovx_append_pc(a, first + i)
    return stored


@cython.boundscheck(False)
@cython.wraparound(False)
def append_batch(kcovx.Area area not None, const uint64_t[::1] pcs):
    """kcovx_append_pcs of a contiguous uint64 buffer.  Returns how many were stored."""
    cdef uint64_t n = <uint64_t> pcs.shape[0]
    cdef const uint64_t *p = &pcs[0] if n else NULL
    cdef uint64_t done
    with nogil:
        done = kcovx.kcovx_append_pcs(&area.c, p, n)
    return done


def append_cmp(kcovx.Area area not None, uint64_t type, uint64_t arg1, uint64_t arg2,
               uint64_t pc):
    """kcovx_append_cmp of one record.  Returns True if stored, False if clipped."""
    cdef int ok
    with nogil:
        ok = kcovx.kcovx_append_cmp(&area.c, type, arg1, arg2, pc)
    return ok != 0


@cython.boundscheck(False)
@cython.wraparound(False)
def append_cmps(kcovx.Area area not None, uint64_t n, uint64_t pc0):
    """n records {KCOV_CMP_SIZE(3), i, ~i, pc0+i} in a nogil loop.  Returns how many fit."""
    cdef kcovx.kcovx_area_t *a = &area.c
    cdef uint64_t i, stored = 0
    with nogil:
        for i in range(n):
            stored += <uint64_t> kcovx.kcovx_append_cmp(a, kcovx.KCOVX_CMP_SIZE(3), i, ~i,
                                                        pc0 + i)
    return stored


def load_count(kcovx.Area area not None):
    """Word 0 by kcovx_load_count."""
    return kcovx.kcovx_load_count(&area.c)


def publish_count(kcovx.Area area not None, uint64_t count):
    """Word 0 := count by kcovx_publish_count (a reset, as user code does)."""
    kcovx.kcovx_publish_count(&area.c, count)


def area_size(kcovx.Area area not None):
    """area.c.size, read straight from the struct layout declared in kcovx/_area.pxd."""
    return area.c.size


def api_info():
    """(abi_version, struct_size) of the capsule kcovx.import_api() returned."""
    return api.abi_version, api.struct_size


def capsule_append_pc(kcovx.Area area not None, uint64_t pc):
    """api.append_pc through the capsule's function pointer.  Returns True if stored."""
    cdef int ok
    with nogil:
        ok = api.append_pc(&area.c, pc)
    return ok != 0
