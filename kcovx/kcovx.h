/*
 * kcovx.h: the one definition of the kcovx ABI: the area layout, the constants both sides of
 * the C/Python boundary use (kcov's trace modes and comparison type bits, the device modes, the
 * size limit), the appends into an area, and the C API with its import helper.  Python reads
 * every constant from here through kcovx._area (KCOVX_X is kcovx._area.X) and kcovx.abi
 * re-exports them; nothing else spells their values.
 *
 * Layout (the kcov ABI).  An area is `size` little-endian uint64 words, 1 <= size <=
 * KCOVX_MAX_WORDS.  Word 0 is the count; the entries follow it.  In PC mode an entry is one
 * word (capacity size-1); in CMP mode an entry is a record of KCOVX_WORDS_PER_CMP words
 * {type, arg1, arg2, pc} (capacity floor((size-1)/4)).  When an entry does not fit it is
 * dropped and the count is left alone: that is clipping.  Nothing else reports an overflow.
 *
 * Ownership and memory order.  An area has ONE writer at a time (the thread that owns it; the
 * Python layer enforces that for devices, and callers of the C API promise it).  Readers may be
 * anywhere: other threads, other processes mapping the same file.  Every append
 *   1. reads the count from word 0 with a relaxed atomic load, because user code may have
 *      reset it or written any value there, and that value is honoured;
 *   2. writes the entry words with plain stores;
 *   3. publishes the new count with a release store.
 * A reader that loads word 0 with acquire (on x86-64 any load) therefore never sees a count
 * that covers a word not yet written.  Counts use wrapping uint64 arithmetic, as the kernels
 * do; where the kernels' arithmetic would write outside the area, nothing is written.  The
 * memory belongs to the kcovx._area.Area that mapped it: an area pointer is valid while that
 * object is alive.
 *
 * Threading.  The appends take no locks, make no Python calls, never allocate, and are safe
 * without the GIL.  A detached area has size 0 and `words` pointing at a private zero word, so
 * every append on it is a no-op and never dereferences NULL.  kcovx_import_api and the C API's
 * trace_pc/trace_cmp/area_of need the GIL.
 */
#ifndef KCOVX_H
#define KCOVX_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The C API: the capsule's name, and the version of kcovx_api_t and of the area layout. */
#define KCOVX_ABI_VERSION 1u
#define KCOVX_CAPSULE_NAME "kcovx._area._C_API"

/*
 * kcov's constants (<linux/kcov.h>), prefixed KCOVX_ so that this header and <linux/kcov.h>
 * can be included together.  Trace modes, the argument of KCOV_ENABLE:
 */
#define KCOVX_TRACE_PC 0
#define KCOVX_TRACE_CMP 1

/* The type word of a CMP record: KCOVX_CMP_SIZE(n) for a 2**n-byte comparison (n in 0..3),
   or'ed with KCOVX_CMP_CONST when one operand is a compile-time constant. */
#define KCOVX_CMP_CONST 1u
#define KCOVX_CMP_SIZE_SHIFT 1
#define KCOVX_CMP_SIZE(n) ((uint64_t)(n) << KCOVX_CMP_SIZE_SHIFT)
#define KCOVX_CMP_MASK KCOVX_CMP_SIZE(3)
#define KCOVX_CMP_TYPE_MAX (KCOVX_CMP_MASK | KCOVX_CMP_CONST) /* larger types are refused */
#define KCOVX_WORDS_PER_CMP 4u                                /* {type, arg1, arg2, pc} */

/* A device's mode (the kernels' KCOV_MODE_*, kcovx.Mode).  The per-thread recording targets
   (kcovx_rt.h) exist for the two tracing modes. */
#define KCOVX_MODE_DISABLED 0
#define KCOVX_MODE_INIT 1
#define KCOVX_MODE_TRACE_PC 2
#define KCOVX_MODE_TRACE_CMP 3
/* kcovx's (no kernel has it yet): PC tracing in KCOV_UNIQUE_ENABLE's unique mode (linux
   profile).  Linux's 4 is KCOV_MODE_REMOTE, which kcovx does not provide. */
#define KCOVX_MODE_UNIQUE_PC 5

/*
 * The largest area, in words (far above both kernels' limits).  Byte offsets into an area stay
 * below 2**59, so no size computed on an area wraps, in uint64 or in a signed Py_ssize_t; a
 * kcovx_area_t built by hand must respect it too.
 */
#define KCOVX_MAX_WORDS ((uint64_t)1 << 56)

typedef struct kcovx_area {
    uint64_t *words; /* words[0] is the count; never NULL */
    uint64_t size;   /* in words, <= KCOVX_MAX_WORDS; 0 when detached */
} kcovx_area_t;

#if defined(__GNUC__) || defined(__clang__)
#define KCOVX_INLINE static inline __attribute__((always_inline))
#define KCOVX_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define KCOVX_INLINE static inline
#define KCOVX_LIKELY(x) (x)
#endif

KCOVX_INLINE uint64_t kcovx_load_count(const kcovx_area_t *a)
{
    return __atomic_load_n(&a->words[0], __ATOMIC_RELAXED);
}

KCOVX_INLINE void kcovx_publish_count(kcovx_area_t *a, uint64_t count)
{
    __atomic_store_n(&a->words[0], count, __ATOMIC_RELEASE);
}

/*
 * Linux __sanitizer_cov_trace_pc: pos = count + 1; if pos < size, store the PC at pos and the
 * count pos.  Returns 1 if the PC was stored, 0 if it was clipped.  A user-written count of
 * 2^64-1 wraps pos to 0; Linux then ends with the PC in word 0, and so does this.
 */
KCOVX_INLINE int kcovx_append_pc(kcovx_area_t *a, uint64_t pc)
{
    uint64_t *w = a->words;
    uint64_t pos = __atomic_load_n(&w[0], __ATOMIC_RELAXED) + 1;
    if (KCOVX_LIKELY(pos < a->size)) {
        if (KCOVX_LIKELY(pos != 0)) {
            w[pos] = pc;
            __atomic_store_n(&w[0], pos, __ATOMIC_RELEASE);
        } else {
            __atomic_store_n(&w[0], pc, __ATOMIC_RELEASE);
        }
        return 1;
    }
    return 0;
}

/*
 * n PCs in order, with the same result as n calls of kcovx_append_pc, but one count load,
 * one copy and one publish.  Returns how many were stored.
 */
static inline uint64_t kcovx_append_pcs(kcovx_area_t *a, const uint64_t *pcs, uint64_t n)
{
    uint64_t done = 0;
    while (done < n) {
        uint64_t count = kcovx_load_count(a);
        if (count == UINT64_MAX) { /* the wrap case: one at a time, exactly as Linux */
            if (!kcovx_append_pc(a, pcs[done]))
                return done;
            done++;
            continue;
        }
        if (count + 1 >= a->size)
            return done;
        uint64_t room = a->size - 1 - count;
        uint64_t k = n - done < room ? n - done : room;
        memmove(&a->words[count + 1], pcs + done, (size_t)(k * sizeof(uint64_t)));
        kcovx_publish_count(a, count + k);
        return done + k;
    }
    return done;
}

/* Bytes compared by a record of this type: 2**n for KCOVX_CMP_SIZE(n). */
KCOVX_INLINE uint64_t kcovx_cmp_nbytes(uint64_t type)
{
    return (uint64_t)1 << ((type & KCOVX_CMP_MASK) >> KCOVX_CMP_SIZE_SHIFT);
}

/* What kcovx_cmp_check says about a comparison. */
#define KCOVX_CMP_OK 0
#define KCOVX_CMP_BAD_TYPE 1    /* type above KCOVX_CMP_TYPE_MAX */
#define KCOVX_CMP_BAD_OPERAND 2 /* an operand does not fit in kcovx_cmp_nbytes(type) bytes */

/* Whether kcovx records this comparison (trace_cmp refuses the others with ValueError). */
KCOVX_INLINE int kcovx_cmp_check(uint64_t type, uint64_t arg1, uint64_t arg2)
{
    uint64_t nbytes;
    if (type > KCOVX_CMP_TYPE_MAX)
        return KCOVX_CMP_BAD_TYPE;
    nbytes = kcovx_cmp_nbytes(type);
    if (nbytes < sizeof(uint64_t) && ((arg1 | arg2) >> (8 * nbytes)) != 0)
        return KCOVX_CMP_BAD_OPERAND;
    return KCOVX_CMP_OK;
}

/*
 * Linux write_comp_data: a record of four words goes at 1 + 4*count, only if all four fit.
 * The type is stored as given (kcovx_cmp_check is the caller's business, as in the kernel).
 * Returns 1 if stored, 0 if clipped.  Where Linux's wrapping bound check would pass with the
 * record outside the area (a user-written count near 2^62), nothing is written.
 */
KCOVX_INLINE int kcovx_append_cmp(kcovx_area_t *a, uint64_t type, uint64_t arg1, uint64_t arg2,
                                  uint64_t pc)
{
    uint64_t *w = a->words;
    uint64_t count = __atomic_load_n(&w[0], __ATOMIC_RELAXED);
    uint64_t start = 1 + count * KCOVX_WORDS_PER_CMP;
    if (KCOVX_LIKELY(start < a->size && a->size - start >= KCOVX_WORDS_PER_CMP)) {
        w[start] = type;
        w[start + 1] = arg1;
        w[start + 2] = arg2;
        w[start + 3] = pc;
        __atomic_store_n(&w[0], count + 1, __ATOMIC_RELEASE);
        return 1;
    }
    return 0;
}

/*
 * gVisor's task work (kcov.go TaskWork): write a batch of PCs at byte offset 8*(1+count),
 * computed in wrapping uint64 arithmetic, stopping at the end of the area; then count += n.
 * The count is written back even when nothing fits.  Returns how many PCs were written.
 */
static inline uint64_t kcovx_append_batch_gvisor(kcovx_area_t *a, const uint64_t *pcs, uint64_t n)
{
    uint64_t count = kcovx_load_count(a);
    /* byte offset 8*(1+count) mod 2^64, as a word index */
    uint64_t idx = (count + 1) & (UINT64_MAX >> 3);
    uint64_t k = 0;
    if (idx < a->size) {
        uint64_t room = a->size - idx;
        k = n < room ? n : room;
        if (k)
            memmove(&a->words[idx], pcs, (size_t)(k * sizeof(uint64_t)));
    }
    if (a->size)
        kcovx_publish_count(a, count + k);
    return k;
}

/*
 * The C API, published by kcovx._area as the capsule KCOVX_CAPSULE_NAME.  Get it with
 * kcovx_import_api() (below), which checks abi_version and struct_size.
 *
 *   append_pc/append_pcs/append_cmp: the functions above, on an area you own.  No GIL needed.
 *   trace_pc/trace_cmp: what kcovx.trace_pc/trace_cmp do (the calling thread's device in the
 *       linux profile, the global pending set in the gvisor profile), with the same checks.
 *       Call with the GIL held (it guards the set's Python side).  Return 0, or -1 with an
 *       exception set: MemoryError (trace_pc), ValueError for a type above KCOVX_CMP_TYPE_MAX
 *       or an operand wider than the comparison's size (trace_cmp), with kcovx.trace_cmp's
 *       message.
 *   area_of: the area behind a kcovx._area.Area object; NULL with TypeError set otherwise.
 *       Needs the GIL.  The pointer is valid while the object is alive.
 */
#ifdef Py_PYTHON_H
typedef PyObject kcovx_pyobject_t;
#else
typedef struct _object kcovx_pyobject_t;
#endif

typedef struct kcovx_api {
    uint32_t abi_version;
    uint32_t struct_size;
    int (*append_pc)(kcovx_area_t *area, uint64_t pc);
    uint64_t (*append_pcs)(kcovx_area_t *area, const uint64_t *pcs, uint64_t n);
    int (*append_cmp)(kcovx_area_t *area, uint64_t type, uint64_t arg1, uint64_t arg2, uint64_t pc);
    int (*trace_pc)(uint64_t pc);
    int (*trace_cmp)(uint64_t type, uint64_t arg1, uint64_t arg2, uint64_t pc);
    kcovx_area_t *(*area_of)(kcovx_pyobject_t *obj);
} kcovx_api_t;

#ifdef Py_PYTHON_H
/*
 * The C API of the kcovx found at run time, checked against this header (what import_array is
 * to numpy, PyDateTime_IMPORT to datetime).  Imports kcovx._area and its capsule; returns the
 * API, or NULL with an exception set:
 *   ImportError      kcovx cannot be imported, or its abi_version differs from this header's,
 *                    or its struct_size is smaller than this header's kcovx_api_t (the message
 *                    says which, and that the extension must be rebuilt against the installed
 *                    kcovx);
 *   AttributeError   kcovx._area has no _C_API (PyCapsule_Import's error);
 *   ValueError       _C_API is not a capsule named KCOVX_CAPSULE_NAME (PyCapsule_Import's).
 * Call it with the GIL held, once, at module init: the result stays valid for the life of the
 * interpreter (it points into kcovx._area, which is never unloaded).  Defined only when
 * <Python.h> was included before this header.  Cython: `kcovx.import_api()` (kcovx/_area.pxd).
 */
static inline const kcovx_api_t *kcovx_import_api(void)
{
    const kcovx_api_t *api;
    PyObject *core = PyImport_ImportModule("kcovx._area");
    if (core == NULL)
        return NULL;
    Py_DECREF(core);
    api = (const kcovx_api_t *)PyCapsule_Import(KCOVX_CAPSULE_NAME, 0);
    if (api == NULL)
        return NULL;
    if (api->abi_version != KCOVX_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "kcovx C API: the installed kcovx has ABI version %u, this extension was "
                     "built against version %u: rebuild it against the installed kcovx "
                     "(include_dirs=[kcovx.get_include()])",
                     (unsigned)api->abi_version, (unsigned)KCOVX_ABI_VERSION);
        return NULL;
    }
    if (api->struct_size < sizeof(kcovx_api_t)) {
        PyErr_Format(PyExc_ImportError,
                     "kcovx C API: the installed kcovx's API struct is %u bytes, this extension "
                     "was built for %u: rebuild it against the installed kcovx "
                     "(include_dirs=[kcovx.get_include()])",
                     (unsigned)api->struct_size, (unsigned)sizeof(kcovx_api_t));
        return NULL;
    }
    return api;
}
#endif /* Py_PYTHON_H */

#ifdef __cplusplus
}
#endif

#endif /* KCOVX_H */
