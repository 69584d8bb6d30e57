# kcovx/_area.pyx: the compiled core.
#
# Owns: mapping lifetime (Area), the per-event entry points trace_pc/trace_cmp, bulk appends,
# the Python side of the gVisor-profile pending set (deduplication of Python PCs), the C API
# capsule, and the Python names of kcovx.h's constants (KCOVX_X is X here; kcovx.abi re-exports
# them).  The state a recording needs (per-thread targets, the gvisor order buffers, the native
# objects) belongs to the native runtime libkcovx_rt.so (kcovx_rt.h), which this module links
# against, so that native hooks and Python probes record into one place.
#
# Invariants and threading contract:
# - An Area's mapping is created in __cinit__ and unmapped only in __dealloc__, so any numpy
#   view (which holds a reference to the Area through the buffer protocol) stays valid.
# - One writer per area (kcovx.h).  The per-thread target (linux profile) lives in the
#   runtime's thread-local storage and is only ever set or cleared by its own thread, through
#   _set_thread_target; the Python layer holds a reference to the Area while it is set.
# - The Python dedup table is touched only with the GIL held (trace_pc, trace_pcs, the C API's
#   trace_pc, consume, clear), so the GIL is its lock; consumes of the runtime's order buffers
#   also run with the GIL, so there is one consumer at a time.  Bulk copies into an area
#   release the GIL when large.
# - Per-event entry points take no locks, make no Python calls and allocate only when the
#   dedup table grows (amortised, and a failure is a MemoryError, never a crash).
# - Every size computed here is bounded before use: areas by KCOVX_MAX_WORDS, Probe tables and
#   the dedup table by SIZE_MAX / 8, so no byte count wraps.

cimport cython
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_ND,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.exc cimport PyErr_Clear, PyErr_SetString
from cpython.long cimport PyLong_CheckExact
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from libc.errno cimport errno
from libc.stdint cimport SIZE_MAX, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

import os as _os

cdef extern from "<sys/mman.h>" nogil:
    int MAP_ANONYMOUS

cdef extern from "kcovx_rt.h" nogil:
    # The native runtime (libkcovx_rt.so) owns the state a recording needs (kcovx_rt.h).
    const unsigned KCOVX_RT_ABI_VERSION
    const char *KCOVX_RT_SONAME
    const uint64_t KCOVX_RT_ORDER_CAP
    const uint64_t KCOVX_NATIVE_BIT
    const unsigned KCOVX_NATIVE_UNKNOWN_UNIT
    # The calling thread's recording targets (linux profile); NULL: none.
    kcovx_area_t *kcovx_tls_pc_target
    kcovx_area_t *kcovx_tls_cmp_target
    ctypedef struct kcovx_unique_t:
        kcovx_area_t trace
        uint64_t *bitmap
        uint64_t nbits
    const uint64_t KCOVX_NO_INDEX
    bint kcovx_is_unique(const kcovx_area_t *target) noexcept
    kcovx_unique_t *kcovx_unique_of(kcovx_area_t *target) noexcept
    void kcovx_unique_record(kcovx_unique_t *u, uint64_t idx, uint64_t pc) noexcept
    void kcovx_rt_set_unique(kcovx_unique_t *u)
    uint64_t kcovx_rt_reserve_indices(uint64_t n)
    ctypedef struct kcovx_rt_object_t:
        uintptr_t lo
        uintptr_t span
        uintptr_t base
        uint64_t unit
        uint32_t build_id_len
        uint8_t build_id[64]
        char path[4096]
    unsigned kcovx_rt_abi_version()
    void kcovx_rt_set_target(kcovx_area_t *area, int mode)
    int kcovx_rt_set_collecting(int on)
    uint64_t kcovx_rt_consume(kcovx_area_t *area)
    uint64_t kcovx_rt_pending()
    size_t kcovx_rt_object_count()
    const kcovx_rt_object_t *kcovx_rt_object_at(size_t i)
    uint64_t kcovx_rt_pc_of(uintptr_t addr)
    uint64_t kcovx_rt_dropped()

if kcovx_rt_abi_version() != KCOVX_RT_ABI_VERSION:
    raise ImportError(
        f"kcovx: the loaded {KCOVX_RT_SONAME.decode()} has runtime ABI version "
        f"{kcovx_rt_abi_version()}, this kcovx needs {KCOVX_RT_ABI_VERSION}: another kcovx's "
        f"runtime was loaded first (an object linked against it, or LD_PRELOAD)"
    )

cdef char *_FORMAT_Q = b"Q"

# Word that detached areas point at: appends on size 0 never touch it, loads read 0.
cdef uint64_t _zero_word = 0

# Formats of an 8-byte unsigned buffer item on LP64 Linux.
_U64_FORMATS = frozenset((b"Q", b"L", b"<Q", b"<L", b"=Q", b"=L", b"@Q", b"@L"))

# Bulk copies at or above this many words release the GIL.
cdef uint64_t _NOGIL_THRESHOLD = 16384


cdef uint64_t _u64_slow(object o) except? 0xFFFFFFFFFFFFFFFF:
    # Any int-like object with __index__ (numpy integers, IntEnum); floats and strings are
    # refused with TypeError instead of being truncated.
    cdef uint64_t v = PyNumber_Index(o)
    return v


cdef inline uint64_t _u64(object o) except? 0xFFFFFFFFFFFFFFFF:
    """Convert an int in [0, 2**64) to uint64; TypeError for non-integers, OverflowError else."""
    cdef uint64_t v
    if PyLong_CheckExact(o):
        v = o
        return v
    return _u64_slow(o)


# --------------------------------------------------------------------------------------------
# The pending set (gvisor profile), Python side: each PC Python code covered since the last
# consume, once, in the order first covered, under the GIL: no atomics.  Open addressing with
# linear probing; a slot is live when its stamp equals the current epoch, so clearing is one
# increment: O(1), not O(capacity).  Native PCs have their own set in the runtime (kcovx_rt.h),
# lock-free; a consume writes this set's PCs, then the runtime's.

ctypedef struct pending_t:
    uint64_t *keys
    uint32_t *stamps
    uint64_t *order      # the live PCs, in first-covered order
    uint64_t n           # live PCs
    uint64_t cap         # slots (a power of two), 0 before the first add
    uint64_t limit       # grow when n reaches this (load factor 1/2)
    uint32_t shift       # 64 - log2(cap)
    uint32_t epoch

cdef pending_t _pend
_pend.keys = NULL
_pend.stamps = NULL
_pend.order = NULL
_pend.n = 0
_pend.cap = 0
_pend.limit = 0
_pend.shift = 64
_pend.epoch = 1

cdef inline uint64_t _slot(uint64_t pc, uint32_t shift) noexcept nogil:
    # Fibonacci hashing: the top bits of pc * 2^64/phi.
    return (pc * <uint64_t>0x9E3779B97F4A7C15ULL) >> shift


cdef int _pending_grow() noexcept nogil:
    """Double the table, keeping the live PCs.  Returns -1 (table unchanged) on no memory."""
    cdef uint64_t cap, c, i, j, pc
    cdef uint32_t shift = 64
    if _pend.cap > SIZE_MAX / sizeof(uint64_t) / 2:  # the doubled byte count would wrap
        return -1
    cap = 1024 if _pend.cap == 0 else _pend.cap * 2
    c = cap
    while c > 1:
        c >>= 1
        shift -= 1
    cdef uint64_t *keys = <uint64_t *> malloc(cap * sizeof(uint64_t))
    cdef uint32_t *stamps = <uint32_t *> calloc(cap, sizeof(uint32_t))
    cdef uint64_t *order = <uint64_t *> malloc((cap // 2) * sizeof(uint64_t))
    if keys == NULL or stamps == NULL or order == NULL:
        free(keys)
        free(stamps)
        free(order)
        return -1
    for i in range(_pend.n):
        pc = _pend.order[i]
        order[i] = pc
        j = _slot(pc, shift)
        while stamps[j] == 1:
            j = (j + 1) & (cap - 1)
        stamps[j] = 1
        keys[j] = pc
    free(_pend.keys)
    free(_pend.stamps)
    free(_pend.order)
    _pend.keys = keys
    _pend.stamps = stamps
    _pend.order = order
    _pend.cap = cap
    _pend.limit = cap // 2
    _pend.shift = shift
    _pend.epoch = 1
    return 0


cdef inline int _pending_add(uint64_t pc) noexcept nogil:
    """Mark pc covered.  0 on success, -1 when the table could not grow (pc not recorded)."""
    cdef uint64_t i
    if _pend.n >= _pend.limit:
        if _pending_grow() < 0:
            return -1
    i = _slot(pc, _pend.shift)
    while _pend.stamps[i] == _pend.epoch:
        if _pend.keys[i] == pc:
            return 0
        i = (i + 1) & (_pend.cap - 1)
    _pend.stamps[i] = _pend.epoch
    _pend.keys[i] = pc
    _pend.order[_pend.n] = pc
    _pend.n += 1
    return 0


# Blocks of Probes have dense indices (each Probe takes the next len(pcs) numbers), and the
# gvisor set keeps one stamp per index: a block is pending when its stamp equals _mark_epoch.
# A repeat hit costs a load and a compare, no hashing; only a first hit goes through the table
# above (so a PC recorded both by a probe and by trace_pc is still pending once), and clearing
# is the same one increment.
# The runtime's collecting flag, mirrored here (both set only by _set_collecting, under the GIL)
# so that a probe reads a variable of this module, not one behind another object's GOT entry.
cdef int _collecting = 0

cdef uint32_t *_marks = NULL
cdef uint64_t _marks_cap = 0
cdef uint32_t _mark_epoch = 1


cdef int _reserve_indices(uint64_t n, uint64_t *base) except -1:
    """Take n dense block indices; *base is the first.  MemoryError if the stamps cannot grow."""
    global _marks, _marks_cap
    cdef uint64_t first = kcovx_rt_reserve_indices(n)  # shared with native call sites
    cdef uint64_t need = first + n, cap = _marks_cap
    cdef uint32_t *grown
    if need < first or need > SIZE_MAX / sizeof(uint32_t) / 2:
        raise MemoryError("kcovx: too many instrumented blocks")
    if need > cap:
        cap = cap * 2 if cap else 4096
        while cap < need:
            cap *= 2
        grown = <uint32_t *> realloc(_marks, cap * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError("kcovx: no memory for block marks")
        memset(grown + _marks_cap, 0, (cap - _marks_cap) * sizeof(uint32_t))
        _marks = grown
        _marks_cap = cap
    base[0] = first
    return 0


cdef inline void _pending_clear() noexcept nogil:
    global _mark_epoch
    _pend.n = 0
    _pend.epoch += 1
    if _pend.epoch == 0:  # wrapped after 2**32 clears: forget every stamp once
        if _pend.stamps != NULL:
            memset(_pend.stamps, 0, _pend.cap * sizeof(uint32_t))
        _pend.epoch = 1
    _mark_epoch += 1
    if _mark_epoch == 0:
        if _marks != NULL:
            memset(_marks, 0, _marks_cap * sizeof(uint32_t))
        _mark_epoch = 1


# --------------------------------------------------------------------------------------------
# Buffers of PCs handed in from Python.

cdef int _get_u64_buffer(object obj, Py_buffer *view) except -1:
    """Fill view with a C-contiguous buffer of uint64 items, or raise TypeError/ValueError."""
    if isinstance(obj, (int, float, str)):
        raise TypeError(
            f"expected a C-contiguous buffer of uint64 (e.g. numpy.ndarray of dtype uint64), "
            f"got {type(obj).__name__}"
        )
    try:
        PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except BufferError as exc:
        raise ValueError(f"expected a C-contiguous buffer of uint64: {exc}") from None
    except TypeError:
        raise TypeError(
            f"expected a C-contiguous buffer of uint64 (e.g. numpy.ndarray of dtype uint64), "
            f"got {type(obj).__name__}"
        ) from None
    fmt = view.format if view.format != NULL else b"B"
    if view.itemsize != sizeof(uint64_t) or fmt not in _U64_FORMATS:
        PyBuffer_Release(view)
        raise TypeError(
            f"expected uint64 items, got buffer format {fmt.decode('ascii', 'replace')!r} with "
            f"itemsize {view.itemsize} (convert with numpy.asarray(x, dtype=numpy.uint64))"
        )
    return 0


# --------------------------------------------------------------------------------------------
# Area: one mapping.

@cython.final
cdef class Area:
    """One kcov area: ``size`` uint64 words mapped shared, word 0 the count.

    ``Area(size)`` maps anonymous shared memory (inherited by ``os.fork`` children);
    ``Area(size, fd, path)`` maps ``size*8`` bytes of an open file, which must already be
    that long.  The mapping is released when the Area and every view of it are gone.
    A size outside 1..MAX_WORDS is ValueError (OverflowError beyond uint64); a mapping the
    kernel refuses is OSError with mmap's errno (ENOMEM when it is too large to map).
    Appending directly to an Area bypasses the device state machine: the caller is the
    area's one writer.
    """

    def __cinit__(self, object size, int fd=-1, object path=None):
        cdef void *p
        cdef int flags = MAP_SHARED
        cdef size_t nbytes
        cdef int err
        cdef uint64_t nwords = _u64(size)
        self.c.words = &_zero_word
        self.c.size = 0
        self.nbytes = 0
        self.path = path
        if nwords < 1 or nwords > KCOVX_MAX_WORDS:
            raise ValueError(
                f"area size must be between 1 and {KCOVX_MAX_WORDS} words, got {nwords}"
            )
        nbytes = <size_t>(nwords * sizeof(uint64_t))  # < 2**59: KCOVX_MAX_WORDS bounds it
        if fd < 0:
            flags |= MAP_ANONYMOUS
            fd = -1
        else:
            file_size = _os.fstat(fd).st_size
            if file_size < nbytes:
                # touching a page past the end of a file mapping is SIGBUS: refuse it here
                raise ValueError(
                    f"the file behind fd {fd} is {file_size} bytes, "
                    f"shorter than the {nbytes} bytes of a {nwords}-word area"
                )
        with nogil:
            p = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, flags, fd, 0)
            err = errno
        if p == MAP_FAILED:
            raise OSError(err, _os.strerror(err))
        self.c.words = <uint64_t *> p
        self.c.size = nwords
        self.nbytes = nbytes
        self._shape[0] = <Py_ssize_t> nwords
        self._strides[0] = sizeof(uint64_t)

    def __dealloc__(self):
        if self.c.size:
            munmap(<void *> self.c.words, <size_t> self.nbytes)
            self.c.words = &_zero_word
            self.c.size = 0

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = <void *> self.c.words
        buf.obj = self
        buf.len = <Py_ssize_t> self.nbytes
        buf.readonly = 0
        buf.itemsize = sizeof(uint64_t)
        buf.format = _FORMAT_Q if (flags & PyBUF_FORMAT) else NULL
        buf.ndim = 1
        buf.shape = self._shape if (flags & PyBUF_ND) == PyBUF_ND else NULL
        buf.strides = self._strides if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    @property
    def size(self):
        """Size in words."""
        return self.c.size

    @property
    def count(self):
        """Word 0, read with an atomic load."""
        return kcovx_load_count(&self.c)

    def __len__(self):
        return <Py_ssize_t> self.c.size

    def __repr__(self):
        where = f" path={self.path!r}" if self.path is not None else ""
        return f"<kcovx._area.Area size={self.c.size} count={kcovx_load_count(&self.c)}{where}>"

    def append_pc(self, object pc):
        """Append one PC with kcov's clipping.  Returns True if stored, False if clipped."""
        return kcovx_append_pc(&self.c, _u64(pc)) != 0

    def append_pcs(self, pcs):
        """Append a buffer of uint64 PCs in order, with clipping.  Returns how many were stored."""
        cdef Py_buffer view
        cdef uint64_t n, done
        _get_u64_buffer(pcs, &view)
        try:
            n = <uint64_t> (view.len // sizeof(uint64_t))
            if n >= _NOGIL_THRESHOLD:
                with nogil:
                    done = kcovx_append_pcs(&self.c, <const uint64_t *> view.buf, n)
            else:
                done = kcovx_append_pcs(&self.c, <const uint64_t *> view.buf, n)
        finally:
            PyBuffer_Release(&view)
        return done

    def append_cmp(self, object type, object arg1, object arg2, object pc):
        """Append one comparison record {type, arg1, arg2, pc} if all four words fit."""
        cdef uint64_t ty = _u64(type), a1 = _u64(arg1), a2 = _u64(arg2), p = _u64(pc)
        _check_cmp(ty, a1, a2)
        return kcovx_append_cmp(&self.c, ty, a1, a2, p) != 0

    def consume_pending(self):
        """gVisor task work: write the pending set into this area, then clear it.

        Returns how many PCs were written; the rest of the batch, if any, is lost.
        """
        cdef uint64_t k = kcovx_append_batch_gvisor(&self.c, _pend.order, _pend.n)
        _pending_clear()
        return k + kcovx_rt_consume(&self.c)


# --------------------------------------------------------------------------------------------
# Per-event entry points.

cdef int _check_cmp(uint64_t type, uint64_t arg1, uint64_t arg2) except -1:
    """ValueError unless kcovx records this comparison (kcovx_cmp_check)."""
    cdef int bad = kcovx_cmp_check(type, arg1, arg2)
    cdef uint64_t nbytes
    if bad == KCOVX_CMP_BAD_TYPE:
        raise ValueError(
            f"comparison type must be in 0..{KCOVX_CMP_TYPE_MAX} "
            f"(KCOV_CMP_SIZE(n) | KCOV_CMP_CONST), got {type}"
        )
    if bad == KCOVX_CMP_BAD_OPERAND:
        nbytes = kcovx_cmp_nbytes(type)
        raise ValueError(
            f"operands of a {nbytes}-byte comparison must be below 2**{8 * nbytes}, "
            f"got {arg1} and {arg2}"
        )
    return 0


cdef inline void _record_linux(uint64_t idx, uint64_t pc) noexcept nogil:
    """The linux profile's part: append to the calling thread's target, or in unique mode
    record block idx (KCOVX_NO_INDEX: every hit)."""
    cdef kcovx_area_t *t = kcovx_tls_pc_target
    if t != NULL:
        if not kcovx_is_unique(t):
            kcovx_append_pc(t, pc)
        else:
            kcovx_unique_record(kcovx_unique_of(t), idx, pc)


cdef inline int _record_pc(uint64_t pc) noexcept:
    """What trace_pc records, for both entry points; with the GIL held.  -1: no memory.
    A PC without a block index appends every hit in unique mode."""
    _record_linux(KCOVX_NO_INDEX, pc)
    if _collecting:
        return _pending_add(pc)
    return 0


cdef inline int _record_block(uint64_t idx, uint64_t pc) noexcept:
    """What a Probe records for its block of dense index idx (pc its PC); as _record_pc."""
    _record_linux(idx, pc)
    if _collecting and _marks[idx] != _mark_epoch:
        if _pending_add(pc) < 0:
            return -1
        _marks[idx] = _mark_epoch
    return 0


cdef inline void _record_cmp(uint64_t type, uint64_t arg1, uint64_t arg2,
                             uint64_t pc) noexcept nogil:
    """What trace_cmp records once its arguments are checked."""
    cdef kcovx_area_t *t = kcovx_tls_cmp_target
    if t != NULL:
        kcovx_append_cmp(t, type, arg1, arg2, pc)


@cython.binding(False)
def trace_pc(object pc):
    """Record one PC for the calling thread: appended at once to the area of the linux-profile
    device this thread enabled, and marked covered for the gvisor-profile devices' next task
    work.  pc is an int in [0, 2**64).
    """
    if _record_pc(_u64(pc)) < 0:
        raise MemoryError("kcovx: no memory to record a PC")


@cython.final
cdef class Probe:
    """The recorder of one instrumented unit (source file): ``probe[i]`` records the unit's
    i-th PC exactly as ``trace_pc(pcs[i])`` would and evaluates to None.

    Instrumented code says ``probe[i]`` with a small constant i rather than calling
    trace_pc with the 64-bit PC: a small int converts in a few instructions, where a 64-bit
    one takes the multi-digit path, and a subscript is not a call, so on 3.11 it does not
    count against the recursion limit (a call of a builtin does).

    ``Probe(pcs)`` takes the PCs that iterating pcs once gives (``tuple(pcs)``: its len() is
    only a hint, and changes to pcs while they are converted do not reach the table).  They
    are copied in at construction and never change.
    """

    cdef uint64_t *_pcs
    cdef Py_ssize_t _n
    cdef uint64_t _base  # dense index of block 0

    def __cinit__(self, pcs):
        # A snapshot first: a lying __len__ or an item whose __index__ mutates pcs cannot make
        # the loop below index past the table or past the sequence.
        cdef tuple items = tuple(pcs)
        cdef Py_ssize_t i, n = len(items)
        self._n = 0
        if <size_t>n > SIZE_MAX / sizeof(uint64_t):  # a real tuple is never this long
            raise MemoryError(f"kcovx: a probe table of {n} PCs does not fit in memory")
        self._pcs = <uint64_t *> malloc(<size_t>(n if n > 0 else 1) * sizeof(uint64_t))
        if self._pcs == NULL:
            raise MemoryError("kcovx: no memory for a probe table")
        for i in range(n):
            self._pcs[i] = _u64(items[i])
        _reserve_indices(<uint64_t>n, &self._base)
        self._n = n

    def __dealloc__(self):
        free(self._pcs)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def __getitem__(self, Py_ssize_t i):
        if <size_t>i >= <size_t>self._n:
            raise IndexError(f"kcovx: probe index {i} out of range 0..{self._n - 1}")
        if _record_block(self._base + <uint64_t>i, self._pcs[i]) < 0:
            raise MemoryError("kcovx: no memory to record a PC")
        return None

    def __len__(self):
        return self._n

    @property
    def base(self):
        """The dense index of block 0 (block i has base + i): its bit in a unique-mode bitmap
        and its mark in the gvisor set.  Probes take consecutive ranges from 0 in the order
        they are made, so the indices of a process's blocks are dense."""
        return self._base

    @property
    def pcs(self):
        """The unit's PCs, in index order."""
        return [self._pcs[i] for i in range(self._n)]

    def __repr__(self):
        return f"<kcovx.Probe of {self._n} PCs>"

    def __reduce__(self):
        return (Probe, (self.pcs,))


@cython.binding(False)
def trace_pcs(pcs):
    """trace_pc for each item of a C-contiguous uint64 buffer, in order.
    """
    cdef Py_buffer view
    cdef uint64_t n, i
    cdef const uint64_t *p
    cdef kcovx_area_t *t
    cdef kcovx_unique_t *u
    _get_u64_buffer(pcs, &view)
    # Read the target only now: getting the buffer can run Python code (a __buffer__ method)
    # that disables the device and frees the area the thread was recording to.
    t = kcovx_tls_pc_target
    try:
        n = <uint64_t> (view.len // sizeof(uint64_t))
        p = <const uint64_t *> view.buf
        if t != NULL and kcovx_is_unique(t):
            u = kcovx_unique_of(t)
            for i in range(n):
                kcovx_unique_record(u, KCOVX_NO_INDEX, p[i])
        elif t != NULL:
            if n >= _NOGIL_THRESHOLD:
                with nogil:
                    kcovx_append_pcs(t, p, n)
            else:
                kcovx_append_pcs(t, p, n)
        if _collecting:
            for i in range(n):
                if _pending_add(p[i]) < 0:
                    raise MemoryError("kcovx: no memory to record a PC")
    finally:
        PyBuffer_Release(&view)


@cython.binding(False)
def trace_cmp(object type, object arg1, object arg2, object pc):
    """Record one comparison for the calling thread (linux profile, KCOV_TRACE_CMP): the record
    {type, arg1, arg2, pc} is appended if all four words fit.  type is
    KCOV_CMP_SIZE(n) | optional KCOV_CMP_CONST; operands must fit in 2**(8 << n).
    """
    cdef uint64_t ty = _u64(type), a1 = _u64(arg1), a2 = _u64(arg2), p = _u64(pc)
    _check_cmp(ty, a1, a2)
    _record_cmp(ty, a1, a2, p)


# --------------------------------------------------------------------------------------------
# Comparison records from instrumented Python code (instrument(..., cmp=True)).  The encoding,
# the stash and their contracts are in _pycmp.h; the rewrite that places the calls is
# kcovx.instrument.rewrite (Rewriter.visit_Compare, visit_Match).

cdef extern from "Python.h":
    # Raw forms (NULL, not an exception, on failure): _cmp_each never raises.
    PyObject *_raw_iter "PyObject_GetIter"(PyObject *o)
    PyObject *_raw_next "PyIter_Next"(PyObject *it)
    void _raw_decref "Py_DECREF"(PyObject *o)

cdef extern from "_pycmp.h":
    const unsigned KCOVX_PYCMP_STR_MAX
    ctypedef struct kcovx_pycmp_val_t:
        uint32_t kind
        uint32_t n
    void kcovx_pycmp_encode(PyObject *o, kcovx_pycmp_val_t *out) noexcept
    void kcovx_pycmp_record(kcovx_area_t *t, const kcovx_pycmp_val_t *a,
                            const kcovx_pycmp_val_t *b, uint64_t flags, uint64_t pc) noexcept
    void kcovx_pycmp_push(uint64_t tag, const kcovx_pycmp_val_t *v) noexcept
    const kcovx_pycmp_val_t *kcovx_pycmp_find(uint64_t tag, int take) noexcept

ctypedef struct cmp_const_t:
    kcovx_pycmp_val_t val
    uint64_t pc

ctypedef struct cmp_act_t:
    uint64_t in_tag     # the stash entry this operand is compared with (in_kind != 0)
    uint64_t in_pc      # the PC of that comparison's records
    uint64_t out_tag    # != 0: stash this operand under out_tag for the comparison after it
    uint32_t in_kind    # 0: none; 1: take the entry; 2: leave it (a match subject)
    uint32_t in_each    # the operand is a container display: compare with each of its items
    uint32_t const0     # its literals: pool[const0 .. const0 + nconst)
    uint32_t nconst

# Items of a container display compared with one operand at most (`x in (a, b, ...)`).
CMP_EACH_MAX = 64
# Literals one operand is compared with at most (a literal container, a match's cases).
CMP_CONSTS_MAX = 256
CMP_STR_MAX = KCOVX_PYCMP_STR_MAX
CMP_TAKE = 1
CMP_PEEK = 2


cdef void _cmp_each(kcovx_area_t *t, const kcovx_pycmp_val_t *left, object items,
                    uint64_t pc) noexcept:
    """Records of ``left`` against each item of a container display (tuple, list, set,
    frozenset or dict: exact types, whose iteration runs no Python code), the first
    CMP_EACH_MAX."""
    cdef kcovx_pycmp_val_t v
    cdef Py_ssize_t i, n
    cdef PyObject *it
    cdef PyObject *item
    if type(items) is tuple:
        n = min(len(<tuple>items), CMP_EACH_MAX)
        for i in range(n):
            kcovx_pycmp_encode(<PyObject *>(<tuple>items)[i], &v)
            kcovx_pycmp_record(t, left, &v, 0, pc)
        return
    if type(items) is list:  # a list display in the middle of a chain (compared again later)
        n = min(len(<list>items), CMP_EACH_MAX)
        for i in range(n):
            kcovx_pycmp_encode(<PyObject *>(<list>items)[i], &v)
            kcovx_pycmp_record(t, left, &v, 0, pc)
        return
    if type(items) is not set and type(items) is not frozenset and type(items) is not dict:
        return
    it = _raw_iter(<PyObject *>items)
    if it == NULL:
        PyErr_Clear()
        return
    n = 0
    while n < CMP_EACH_MAX:
        item = _raw_next(it)
        if item == NULL:
            break
        kcovx_pycmp_encode(item, &v)
        kcovx_pycmp_record(t, left, &v, 0, pc)
        _raw_decref(item)
        n += 1
    _raw_decref(it)
    PyErr_Clear()  # a failed PyIter_Next (no memory): this operand records no more


cdef inline void _cmp_act(kcovx_area_t *t, const cmp_act_t *a, const cmp_const_t *pool,
                          object x) noexcept:
    cdef kcovx_pycmp_val_t v
    cdef const kcovx_pycmp_val_t *left
    cdef uint32_t k
    if a.in_each:
        left = kcovx_pycmp_find(a.in_tag, a.in_kind == CMP_TAKE)
        if left != NULL:
            _cmp_each(t, left, x, a.in_pc)
        return
    kcovx_pycmp_encode(<PyObject *>x, &v)
    if a.in_kind:
        left = kcovx_pycmp_find(a.in_tag, a.in_kind == CMP_TAKE)
        if left != NULL:
            kcovx_pycmp_record(t, left, &v, 0, a.in_pc)
    for k in range(a.nconst):
        kcovx_pycmp_record(t, &pool[a.const0 + k].val, &v, KCOVX_CMP_CONST, pool[a.const0 + k].pc)
    if a.out_tag:
        kcovx_pycmp_push(a.out_tag, &v)


@cython.final
@cython.freelist(8)
cdef class _Held:
    """What ``Comparisons.held`` returns: a match value pattern reads its value back as
    ``.v`` (a value pattern must be an attribute lookup)."""
    cdef readonly object v


@cython.final
cdef class Comparisons:
    """The comparison recorder of one instrumented unit: ``cmp(i, x)`` returns ``x`` after
    doing what action i says with it (see kcovx.instrument.unit.CmpAction), when the calling
    thread traces comparisons (KCOV_TRACE_CMP); otherwise it only returns ``x``.

    ``Comparisons(actions)``: each action a tuple ``(in_kind, in_tag, in_pc, in_each,
    out_tag, consts)``: in_kind 0 (none), CMP_TAKE or CMP_PEEK: compare ``x`` with the operand
    stashed under ``in_tag``, recording at ``in_pc`` (``in_each``: ``x`` is a container
    display, compare with each item); ``consts``: ``((literal, pc), ...)`` literals (int,
    str or bytes) ``x`` is compared with, at most CMP_CONSTS_MAX; ``out_tag`` (0: none): stash
    ``x`` for the comparison after it.  Tags and PCs are ints in [0, 2**64).  Copied in at
    construction; never changes.
    """

    cdef cmp_act_t *_acts
    cdef cmp_const_t *_pool
    cdef Py_ssize_t _n
    cdef tuple _actions

    def __cinit__(self, actions):
        cdef tuple items = tuple(actions)
        cdef Py_ssize_t i, n = len(items), total = 0
        cdef size_t k
        cdef object consts
        self._n = 0
        for a in items:
            if type(a) is not tuple or len(<tuple>a) != 6:
                raise TypeError("kcovx: a comparison action is a 6-tuple")
            consts = (<tuple>a)[5]
            if type(consts) is not tuple:
                raise TypeError("kcovx: a comparison action's literals are a tuple")
            if len(<tuple>consts) > CMP_CONSTS_MAX:
                raise ValueError(f"kcovx: more than {CMP_CONSTS_MAX} literals in one action")
            total += len(<tuple>consts)
        if <size_t>n > SIZE_MAX / sizeof(cmp_act_t) or <size_t>total > SIZE_MAX / sizeof(
            cmp_const_t
        ):
            raise MemoryError("kcovx: a comparison table this large does not fit in memory")
        self._acts = <cmp_act_t *> calloc(<size_t>(n if n else 1), sizeof(cmp_act_t))
        self._pool = <cmp_const_t *> calloc(<size_t>(total if total else 1), sizeof(cmp_const_t))
        if self._acts == NULL or self._pool == NULL:
            raise MemoryError("kcovx: no memory for a comparison table")
        k = 0
        for i in range(n):
            a = items[i]
            in_kind, in_tag, in_pc, in_each, out_tag, consts = a
            if in_kind not in (0, CMP_TAKE, CMP_PEEK) or in_each not in (0, 1):
                raise ValueError(f"kcovx: comparison action {i} has a bad kind")
            if in_each and not in_kind:
                raise ValueError(f"kcovx: comparison action {i} compares items with nothing")
            self._acts[i].in_kind = in_kind
            self._acts[i].in_each = in_each
            self._acts[i].in_tag = _u64(in_tag)
            self._acts[i].in_pc = _u64(in_pc)
            self._acts[i].out_tag = _u64(out_tag)
            self._acts[i].const0 = <uint32_t>k
            self._acts[i].nconst = <uint32_t>len(<tuple>consts)
            for c in consts:
                if type(c) is not tuple or len(<tuple>c) != 2:
                    raise TypeError("kcovx: a comparison literal is a (value, pc) pair")
                value, pc = c
                if type(value) not in (int, str, bytes):
                    raise TypeError(
                        f"kcovx: a comparison literal is an int, str or bytes, not "
                        f"{type(value).__name__}"
                    )
                kcovx_pycmp_encode(<PyObject *>value, &self._pool[k].val)
                if self._pool[k].val.kind == 0:
                    raise ValueError(f"kcovx: comparison literal {value!r} is outside 64 bits")
                self._pool[k].pc = _u64(pc)
                k += 1
        self._n = n
        self._actions = items

    def __dealloc__(self):
        free(self._acts)
        free(self._pool)

    @cython.binding(False)  # a builtin method: CPython specialises calls to it
    def cmp(self, Py_ssize_t i, object x):
        """Record what action i says about ``x`` (if this thread traces comparisons) and
        return ``x``.  Never raises: an index out of range records nothing."""
        cdef kcovx_area_t *t = kcovx_tls_cmp_target
        if t != NULL and <size_t>i < <size_t>self._n:
            _cmp_act(t, &self._acts[i], self._pool, x)
        return x

    @cython.binding(False)
    def held(self, Py_ssize_t i, object x):
        """``cmp(i, x)``, returning an object whose ``.v`` is ``x`` (for match value
        patterns, which must be attribute lookups)."""
        cdef kcovx_area_t *t = kcovx_tls_cmp_target
        cdef _Held h = _Held.__new__(_Held)
        if t != NULL and <size_t>i < <size_t>self._n:
            _cmp_act(t, &self._acts[i], self._pool, x)
        h.v = x
        return h

    def __len__(self):
        return self._n

    @property
    def actions(self):
        """The actions, as given."""
        return self._actions

    def __repr__(self):
        return f"<kcovx.Comparisons of {self._n} actions>"

    def __reduce__(self):
        return (Comparisons, (self._actions,))


# --------------------------------------------------------------------------------------------
# Hooks for the Python layer (private).

def _set_thread_target(Area area, int mode):
    """Set (mode MODE_TRACE_PC or MODE_TRACE_CMP) or clear (area None) the calling thread's
    recording target."""
    if area is None:
        kcovx_rt_set_target(NULL, 0)
        return
    if mode != KCOVX_MODE_TRACE_PC and mode != KCOVX_MODE_TRACE_CMP:
        kcovx_rt_set_target(NULL, 0)
        raise ValueError(f"bad target mode {mode}")
    kcovx_rt_set_target(&area.c, mode)


@cython.final
cdef class _Unique:
    """An Area's unique-mode layout: the bitmap at its start, the trace after it.  One per
    Area, made on first use and kept as long as the Area (a thread's unique target points
    into it); its fields change only when its owner enables it again."""

    cdef kcovx_unique_t u


def _set_thread_unique(Area area, object bitmap_words):
    """Make area, in unique mode with a bitmap of bitmap_words words, the calling thread's only
    recording target.  1 <= bitmap_words <= area.size - 2."""
    cdef uint64_t bw = _u64(bitmap_words)
    cdef _Unique un
    if bw < 1 or bw > area.c.size or area.c.size - bw < 2:
        kcovx_rt_set_target(NULL, 0)
        raise ValueError(f"bad bitmap size {bw} for an area of {area.c.size} words")
    if area._unique is None:
        area._unique = _Unique()
    un = <_Unique> area._unique
    kcovx_rt_set_target(NULL, 0)  # nothing records while the layout changes
    un.u.bitmap = area.c.words
    un.u.nbits = bw * 64
    un.u.trace.words = area.c.words + bw
    un.u.trace.size = area.c.size - bw
    kcovx_rt_set_unique(&un.u)


def _reset_trace(Area area, object bitmap_words):
    """KCOV_RESET_TRACE: zero the first bitmap_words words (the bitmap) and the count after
    them (0 words: the count is word 0)."""
    cdef uint64_t bw = _u64(bitmap_words)
    cdef kcovx_area_t trace
    if bw >= area.c.size:
        raise ValueError(f"bad bitmap size {bw} for an area of {area.c.size} words")
    memset(area.c.words, 0, <size_t>(bw * sizeof(uint64_t)))
    trace.words = area.c.words + bw
    trace.size = area.c.size - bw
    kcovx_publish_count(&trace, 0)


def _set_collecting(bint on):
    """Turn the gvisor pending set on or off.  Off also forgets what was pending."""
    global _collecting
    if kcovx_rt_set_collecting(1 if on else 0) < 0:
        raise MemoryError("kcovx: no memory for the gvisor covered set")
    _collecting = 1 if on else 0
    if not on:
        _pending_clear()


def _clear_pending():
    """gVisor ClearCoverageData: forget every PC covered so far."""
    kcovx_rt_consume(NULL)
    _pending_clear()


def _pending_len():
    return _pend.n + kcovx_rt_pending()


def _native_objects():
    """The native objects the runtime has seen: (path, build_id, base, lo, span, unit) each,
    path and build_id as bytes, in registration order."""
    cdef size_t i, n = kcovx_rt_object_count()
    cdef const kcovx_rt_object_t *o
    out = []
    for i in range(n):
        o = kcovx_rt_object_at(i)
        out.append((<bytes> o.path, (<char *> o.build_id)[:o.build_id_len], o.base, o.lo,
                    o.span, o.unit))
    return out


def _native_pc_of(object addr):
    """The native PC a hook returning to code address addr records (registers its object)."""
    return kcovx_rt_pc_of(<uintptr_t> _u64(addr))


def _native_dropped():
    """Native PCs the gvisor covered set could not take (no memory for stamps, unknown code)."""
    return kcovx_rt_dropped()


# --------------------------------------------------------------------------------------------
# The C API.

cdef int _api_append_pc(kcovx_area_t *a, uint64_t pc) noexcept nogil:
    return kcovx_append_pc(a, pc)

cdef uint64_t _api_append_pcs(kcovx_area_t *a, const uint64_t *pcs, uint64_t n) noexcept nogil:
    return kcovx_append_pcs(a, pcs, n)

cdef int _api_append_cmp(kcovx_area_t *a, uint64_t type, uint64_t arg1, uint64_t arg2,
                         uint64_t pc) noexcept nogil:
    return kcovx_append_cmp(a, type, arg1, arg2, pc)

# The C API's trace_pc/trace_cmp are called with the GIL held (the GIL guards the pending set)
# and return 0, or -1 with the exception set: exactly the C convention of an `except -1`
# function, so they raise what kcovx.trace_pc/trace_cmp raise and are stored in the struct's
# `noexcept` slots with a cast (the C signatures are the same).
ctypedef int (*_trace_pc_slot)(uint64_t) noexcept
ctypedef int (*_trace_cmp_slot)(uint64_t, uint64_t, uint64_t, uint64_t) noexcept

cdef int _api_trace_pc(uint64_t pc) except -1:
    if _record_pc(pc) < 0:
        raise MemoryError("kcovx: no memory to record a PC")
    return 0

cdef int _api_trace_cmp(uint64_t type, uint64_t arg1, uint64_t arg2, uint64_t pc) except -1:
    _check_cmp(type, arg1, arg2)
    _record_cmp(type, arg1, arg2, pc)
    return 0

cdef kcovx_area_t *_api_area_of(PyObject *obj) noexcept:
    if obj != NULL and isinstance(<object> obj, Area):
        return &(<Area> obj).c
    PyErr_SetString(TypeError, b"expected a kcovx._area.Area")
    return NULL

cdef kcovx_api_t _api
_api.abi_version = KCOVX_ABI_VERSION
_api.struct_size = sizeof(kcovx_api_t)
_api.append_pc = _api_append_pc
_api.append_pcs = _api_append_pcs
_api.append_cmp = _api_append_cmp
_api.trace_pc = <_trace_pc_slot> _api_trace_pc
_api.trace_cmp = <_trace_cmp_slot> _api_trace_cmp
_api.area_of = _api_area_of

_C_API = PyCapsule_New(<void *> &_api, KCOVX_CAPSULE_NAME, NULL)


# --------------------------------------------------------------------------------------------
# AFL's edge map (kcovx.afl): an ordered trace folded into AFL's byte counters.  Called by the
# fork server between inputs, when the area's one writer (the child) is stopped or gone.

cdef inline uint64_t _afl_mix(uint64_t x) noexcept nogil:
    # splitmix64's finalizer: every bit of a PC reaches every bit of the edge index.
    x ^= x >> 30
    x *= <uint64_t> 0xBF58476D1CE4E5B9
    x ^= x >> 27
    x *= <uint64_t> 0x94D049BB133111EB
    x ^= x >> 31
    return x


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _afl_fold_words(const uint64_t *pcs, uint64_t n, uint8_t *edges,
                          uint64_t mask) noexcept nogil:
    cdef uint64_t prev = 0
    cdef uint64_t cur
    cdef uint64_t i
    for i in range(n):
        cur = _afl_mix(pcs[i])
        edges[(cur ^ (prev >> 1)) & mask] += 1  # u8: wraps at 256, as AFL's counters do
        prev = cur


def afl_fold(Area area, object afl_map):
    """Fold the area's ordered trace (TRACE_PC) into AFL's edge map ``afl_map``, a writable
    C-contiguous buffer whose length in bytes is a power of two (at least 2): for each PC,
    ``afl_map[(mix(pc) ^ (mix(prev) >> 1)) & (len - 1)] += 1`` (u8, wrapping), ``prev`` the PC
    before it (``mix(prev)`` is 0 for the first).  The area is not changed.  Returns the
    number of PCs folded (the count, clipped to the area)."""
    cdef Py_buffer view
    cdef uint64_t n = 0
    cdef uint64_t nbytes
    try:
        PyObject_GetBuffer(afl_map, &view, PyBUF_WRITABLE)
    except BufferError as exc:
        raise ValueError(
            f"expected a writable C-contiguous buffer for the AFL map: {exc}"
        ) from None
    try:
        nbytes = <uint64_t> view.len
        if nbytes < 2 or (nbytes & (nbytes - 1)) != 0:
            raise ValueError(f"the AFL map must be a power of two bytes (>= 2), got {nbytes}")
        if area.c.size > 1:
            n = kcovx_load_count(&area.c)
            if n > area.c.size - 1:
                n = area.c.size - 1
        with nogil:
            _afl_fold_words(area.c.words + 1, n, <uint8_t *> view.buf, nbytes - 1)
    finally:
        PyBuffer_Release(&view)
    return n


# --------------------------------------------------------------------------------------------
# kcovx.h's constants for Python: KCOVX_X is X here.  kcovx.abi re-exports them under kcov's
# names; nothing in Python spells their values.

ABI_VERSION = KCOVX_ABI_VERSION
CAPSULE_NAME = KCOVX_CAPSULE_NAME.decode("ascii")
TRACE_PC = KCOVX_TRACE_PC
TRACE_CMP = KCOVX_TRACE_CMP
CMP_CONST = KCOVX_CMP_CONST
CMP_SIZE_SHIFT = KCOVX_CMP_SIZE_SHIFT
CMP_MASK = KCOVX_CMP_MASK
CMP_TYPE_MAX = KCOVX_CMP_TYPE_MAX
WORDS_PER_CMP = KCOVX_WORDS_PER_CMP
MODE_DISABLED = KCOVX_MODE_DISABLED
MODE_INIT = KCOVX_MODE_INIT
MODE_TRACE_PC = KCOVX_MODE_TRACE_PC
MODE_TRACE_CMP = KCOVX_MODE_TRACE_CMP
MODE_UNIQUE_PC = KCOVX_MODE_UNIQUE_PC
MAX_WORDS = KCOVX_MAX_WORDS
RT_SONAME = KCOVX_RT_SONAME.decode("ascii")
RT_ABI_VERSION = KCOVX_RT_ABI_VERSION
NATIVE_BIT = KCOVX_NATIVE_BIT
NATIVE_UNKNOWN_UNIT = KCOVX_NATIVE_UNKNOWN_UNIT
