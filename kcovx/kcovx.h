/*
 * kcovx.h: the one definition of the kcovx area layout and of the appends into it.
 *
 * Layout (the kcov ABI).  An area is `size` little-endian uint64 words.  Word 0 is the
 * count; the entries follow it.  In PC mode an entry is one word (capacity size-1); in
 * CMP mode an entry is a record of four words {type, arg1, arg2, pc} (capacity
 * floor((size-1)/4)).  When an entry does not fit it is dropped and the count is left
 * alone: that is clipping.  Nothing else reports an overflow.
 *
 * Memory order.  An area has ONE writer at a time (the thread that owns it; the Python
 * layer enforces that for devices, and callers of the C API promise it).  Readers may be
 * anywhere: other threads, other processes mapping the same file.  Every append
 *   1. reads the count from word 0 with a relaxed atomic load, because user code may have
 *      reset it or written any value there, and that value is honoured;
 *   2. writes the entry words with plain stores;
 *   3. publishes the new count with a release store.
 * A reader that loads word 0 with acquire (on x86-64 any load) therefore never sees a count
 * that covers a word not yet written.  Counts use wrapping uint64 arithmetic, as the kernels
 * do; where the kernels' arithmetic would write outside the area, nothing is written.
 *
 * Threading.  These functions take no locks, make no Python calls, never allocate, and are
 * safe without the GIL.  A detached area has size 0 and `words` pointing at a private zero
 * word, so every append on it is a no-op and never dereferences NULL.
 */
#ifndef KCOVX_H
#define KCOVX_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KCOVX_ABI_VERSION 1u
#define KCOVX_CAPSULE_NAME "kcovx._area._C_API"

/* kcov's entry sizes, in words */
#define KCOVX_WORDS_PER_CMP 4u

typedef struct kcovx_area {
    uint64_t *words; /* words[0] is the count; never NULL */
    uint64_t size;   /* in words; 0 when detached */
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

/*
 * Linux write_comp_data: a record of four words goes at 1 + 4*count, only if all four fit.
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
 * The C API, published by kcovx._area as the capsule KCOVX_CAPSULE_NAME.  Check
 * abi_version == KCOVX_ABI_VERSION and struct_size >= the size you use before calling.
 *
 *   append_pc/append_pcs/append_cmp: the functions above, on an area you own.  No GIL needed.
 *   trace_pc/trace_cmp: what kcovx.trace_pc/trace_cmp do (the calling thread's device in the
 *       linux profile, the global pending set in the gvisor profile), with the same checks.
 *       Call with the GIL held (it guards the pending set).  Return 0, or -1 with an exception
 *       set: MemoryError (trace_pc), ValueError for a type above 7 or an operand wider than the
 *       comparison's size (trace_cmp).
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

#ifdef __cplusplus
}
#endif

#endif /* KCOVX_H */
