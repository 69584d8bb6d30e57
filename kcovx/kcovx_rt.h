/*
 * kcovx_rt.h: the interface between the compiled core (kcovx/_area.pyx) and the native
 * runtime library (kcovx/sancov/libkcovx_rt.so, built from kcovx/sancov/kcovx_rt.c), private
 * to those two (setup.py defines KCOVX_BUILDING_CORE for the core; kcovx_rt.c defines
 * KCOVX_BUILDING_RT).  Extensions record through the sanitizer-coverage hooks the runtime
 * exports, or through the C API (kcovx.h).
 *
 * The runtime owns every piece of state a recording needs, because native hooks and Python
 * probes must see the same state:
 *
 * - The per-thread recording targets of the linux profile: kcovx_tls_pc_target is the area of
 *   the device this thread enabled in KCOVX_MODE_TRACE_PC (or, tagged, its unique-mode layout:
 *   see KCOVX_UNIQUE_TAG below), kcovx_tls_cmp_target the one it enabled in
 *   KCOVX_MODE_TRACE_CMP; NULL when none; at most one is set.  Each is read and
 *   written only by its own thread (the core sets it through kcovx_rt_set_target on behalf of
 *   the Python layer), so it needs no lock; the Python layer holds a reference to the Area
 *   while it is a target, so the pointer never outlives the mapping.  Both live in one
 *   initial-exec thread-local struct (kcovx_thread) with the runtime's own per-thread state:
 *   one GOT load for its offset, then %fs-relative loads.
 *
 * - The gvisor profile's covered set: each PC covered since the last consume, once, shared by
 *   all threads.  Python PCs are kept by the core, under the GIL (a stamp per dense block
 *   index, a hash set, and their own first-hit order); a consume writes them first, then the
 *   native PCs, each kind in the order first covered.  Native PCs are deduplicated here, by a
 *   stamp per code byte of their object: the number of the period in which that call
 *   site was last pushed, compared with the current period's and set with a compare-and-swap,
 *   so native threads add without the GIL and without locks, a repeat hit costs three loads,
 *   and clearing is starting a new period: O(1).  A first hit reserves a slot in the current
 *   one of two order buffers; the consumer (kcovx_rt_consume, with the GIL)
 *   gives the other buffer the next period number, switches to it, waits for the pushes still
 *   in flight on the old one (a few instructions each), and drains it.  The order buffers
 *   hold KCOVX_RT_ORDER_CAP PCs (gVisor's largest area): a PC beyond that in one period is
 *   dropped, as gVisor would drop it at the area's end.
 *
 * - The native objects seen: each instrumented object (shared library or executable) whose
 *   hooks ran while something recorded, registered on its first such hook call.  A native
 *   PC is  unit << 32 | offset,  unit = 0x80000000 | a 31-bit hash of the object's GNU
 *   build-id (else its file's base name), never 0xFFFFFFFF, and offset = the return address of
 *   the hook call minus the object's load bias (the call site's link-time address + the call's
 *   length), as kcov strips KASLR's offset.  Python units have the top bit clear, so the two
 *   never collide.  Records are immutable once published; the registry only grows.
 */
#ifndef KCOVX_RT_H
#define KCOVX_RT_H

#if !defined(KCOVX_BUILDING_CORE) && !defined(KCOVX_BUILDING_RT)
#error "kcovx_rt.h is private to kcovx's core and runtime: use the C API (kcovx.h)"
#endif

#include <stddef.h>
#include <stdint.h>

#include "kcovx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever anything below changes: the core refuses a runtime of another version. */
#define KCOVX_RT_ABI_VERSION 2u
#define KCOVX_RT_SONAME "libkcovx_rt.so"

/* gVisor's largest area (kcovAreaSizeMax, in words): one period's first hits fit. */
#define KCOVX_RT_ORDER_CAP ((uint64_t)10 * 1024 * 1024)

/* The upper 32 bits of native PCs: bit 31 of the unit set.  The unit of PCs whose object
   could not be identified (a hook called from code outside any loaded object, or while this
   thread was registering an object). */
#define KCOVX_NATIVE_BIT ((uint64_t)1 << 63)
#define KCOVX_NATIVE_UNKNOWN_UNIT 0xFFFFFFFFu

#define KCOVX_RT_TLS extern __thread __attribute__((tls_model("initial-exec")))

/* One thread-local struct, so a hook finds all of a thread's state from one GOT entry. */
struct kcovx_rt_object;
typedef struct kcovx_thread {
    kcovx_area_t *pc_target;
    kcovx_area_t *cmp_target;
    const struct kcovx_rt_object *last; /* runtime-private: the object of the last hook */
    int registering;                    /* runtime-private: inside register_object */
} kcovx_thread_t;

KCOVX_RT_TLS kcovx_thread_t kcovx_thread;
#define kcovx_tls_pc_target (kcovx_thread.pc_target)
#define kcovx_tls_cmp_target (kcovx_thread.cmp_target)

/*
 * KCOV_UNIQUE_ENABLE (linux profile): the area starts with a bitmap of `nbits` bits, one per
 * dense block index; the trace (count, then PCs) follows it.  The first hit of a block whose
 * index is inside the bitmap sets its bit and appends its PC; later hits append nothing; a
 * block without an index inside the bitmap appends every hit.  One writer, as for any area
 * (the bitmap is the user's too: a reset zeroes it).
 *
 * A thread in unique mode has kcovx_tls_pc_target pointing at its kcovx_unique_t with the
 * low bit set (KCOVX_UNIQUE_TAG; the struct is 8-byte aligned), so that "nothing enabled"
 * stays one thread-local load and a branch.
 *
 * Dense block indices: every instrumented block has one, from one counter per process
 * (kcovx_rt_reserve_indices): Python probes take a range each when made; a native call site
 * takes the next one on its first hit (clang's guards take a range at load).
 */
typedef struct kcovx_unique {
    kcovx_area_t trace; /* words[0] is the trace's count: the area's word bitmap_words */
    uint64_t *bitmap;   /* the area's first words */
    uint64_t nbits;     /* 64 * bitmap words */
} kcovx_unique_t;

#define KCOVX_UNIQUE_TAG ((uintptr_t)1)
#define KCOVX_NO_INDEX UINT64_MAX

KCOVX_INLINE kcovx_unique_t *kcovx_unique_of(kcovx_area_t *target)
{
    return (kcovx_unique_t *)((uintptr_t)target & ~KCOVX_UNIQUE_TAG);
}

KCOVX_INLINE int kcovx_is_unique(const kcovx_area_t *target)
{
    return ((uintptr_t)target & KCOVX_UNIQUE_TAG) != 0;
}

/* Record block idx (pc its PC) in unique mode; idx KCOVX_NO_INDEX: no index (every hit). */
KCOVX_INLINE void kcovx_unique_record(kcovx_unique_t *u, uint64_t idx, uint64_t pc)
{
    if (idx < u->nbits) {
        uint64_t *w = &u->bitmap[idx >> 6];
        uint64_t m = (uint64_t)1 << (idx & 63);
        uint64_t old = __atomic_load_n(w, __ATOMIC_RELAXED);
        if (old & m)
            return;
        __atomic_store_n(w, old | m, __ATOMIC_RELAXED);
    }
    kcovx_append_pc(&u->trace, pc);
}

/* Non-zero while some gvisor-profile device is tracing: hooks and probes then add to the
   covered set.  Written with the GIL by kcovx_rt_set_collecting; read relaxed everywhere. */
extern int kcovx_rt_collecting;

/* A native object as the registry knows it. */
typedef struct kcovx_rt_object {
    uintptr_t lo;       /* start of its executable segments in this process */
    uintptr_t span;     /* bytes from lo to the end of the last executable segment */
    uintptr_t base;     /* load bias (dl_iterate_phdr's dlpi_addr) */
    uint64_t unit;      /* upper 32 bits of its PCs */
    uint64_t *stamps;   /* gvisor: per byte of [lo, lo + span), the period of its last push;
                           shared by copies of one binary (same unit and layout) */
    uint32_t *sites;    /* dense index + 1 of the call site at each byte; 0: none yet (shared
                           as the stamps are) */
    uint32_t build_id_len;
    uint8_t build_id[64];
    char path[4096];    /* as the loader names it; /proc/self/exe resolved for the program */
} kcovx_rt_object_t;

unsigned kcovx_rt_abi_version(void);

/* Set (area non-NULL, mode KCOVX_MODE_TRACE_PC or _CMP) or clear the calling thread's target
   (clearing its unique target too). */
void kcovx_rt_set_target(kcovx_area_t *area, int mode);

/* Make u the calling thread's only target (unique mode), or clear every target (NULL). */
void kcovx_rt_set_unique(kcovx_unique_t *u);

/* Take n consecutive dense block indices; returns the first.  Any thread. */
uint64_t kcovx_rt_reserve_indices(uint64_t n);

/* gvisor: turn collecting on (allocating the order buffers on first use: -1, nothing changed,
   on no memory) or off (and forget what was pending).  With the GIL. */
int kcovx_rt_set_collecting(int on);

/* gvisor task work: drain the pending native PCs (in first-hit order) into area with gVisor's
   batch rule (after the core's own batch of Python PCs, which publishes the count even when
   empty), or nowhere when area is NULL; forget them all.  Returns how many were written.  With
   the GIL (one consumer at a time). */
uint64_t kcovx_rt_consume(kcovx_area_t *area);

/* PCs pending since the last consume (an upper bound while native threads add). */
uint64_t kcovx_rt_pending(void);

/* The registry: how many objects, and the i-th (NULL past the end).  Any thread. */
size_t kcovx_rt_object_count(void);
const kcovx_rt_object_t *kcovx_rt_object_at(size_t i);

/* The native PC of a code address (registering its object if needed), as a hook at that
   return address would record it. */
uint64_t kcovx_rt_pc_of(uintptr_t addr);

/* PCs a native hook could not record in the gvisor set (no stamp memory, unknown object). */
uint64_t kcovx_rt_dropped(void);

/* The object containing code address addr is being unloaded (kcovx_dso.c's destructor):
   forget it, so code loaded there later registers as itself.  Its record stays, with an empty
   range; any thread. */
void kcovx_rt_forget(uintptr_t addr);

#ifdef __cplusplus
}
#endif

#endif /* KCOVX_RT_H */
