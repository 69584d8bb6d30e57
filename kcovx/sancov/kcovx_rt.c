/*
 * kcovx_rt.c: kcovx's native runtime, built into kcovx/sancov/libkcovx_rt.so (soname
 * libkcovx_rt.so, no Python dependency).  It defines the sanitizer-coverage hooks that
 * `-fsanitize-coverage=trace-pc,trace-cmp` (gcc, clang) and clang's `trace-pc-guard` make
 * instrumented code call, and it owns the recording state shared with Python probes (see
 * kcovx/kcovx_rt.h for that state and its contracts).  kcovx's core links against it, so
 * `import kcovx` loads it; instrumented objects link against it too (kcovx.sancov.link_args:
 * -lkcovx_rt with an rpath), so they load and run whatever the import order, recording nothing
 * until a device is enabled.  One process has one runtime: the loader matches the soname.
 *
 * What a hook records is what a Python probe of the same thread records:
 *   linux profile: the PC (trace-pc, trace-pc-guard) appended to the calling thread's
 *     TRACE_PC area, or the comparison record(s) (trace-cmp, const-cmp, switch) appended to
 *     its TRACE_CMP area, with kcovx.h's appends (so Python and native events of one thread
 *     interleave in one ordered trace, and a record goes in only if it fits); in unique mode
 *     (KCOV_UNIQUE_ENABLE) the PC of a call site's first hit only, by its dense index (a
 *     call site is numbered on its first hit in unique mode, a guard at load);
 *   gvisor profile: the PC added to the global covered set (kcovx_rt.h).
 * Float comparisons (gcc's trace_cmpf/cmpd) record nothing: kcov's ABI has no float records.
 *
 * Threading and signals.  Hooks take no locks, never call Python, never allocate, and run in
 * any thread: a thread with nothing enabled (every thread kcovx did not enable, including
 * pthreads started from C) pays a thread-local load, a global load and two branches.  The
 * first hook call from an object not seen before registers it (dl_iterate_phdr, a mutex, an
 * mmap for its gvisor stamps and site numbers): that slow path runs once per object.  A hook interrupting this
 * thread's own registration (a signal handler) records its PC under the unknown unit rather
 * than wait for itself.  fork: the registry lock is held across fork, the order buffers'
 * in-flight counts are reset in the child (the threads that held them are gone there), and the
 * child's thread records into no area (its targets are cleared: the kernel gives a child no kcov).
 *
 * Memory order.  Registry: records are written under reg_lock, then published by a release
 * store of the count; readers load the count with acquire and read records without a lock.
 * Order buffers: see enter() and kcovx_rt_consume (sequentially consistent
 * in-flight handshake).  Areas: kcovx.h.
 *
 * Nothing here may be instrumented: setup.py builds it without any -fsanitize flag a user's
 * CFLAGS carry, and every function is NOCOV as well, so a hook never calls a hook.
 */
#define _GNU_SOURCE
#define KCOVX_BUILDING_RT 1

#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kcovx_rt.h"

#if defined(__clang__)
#define NOCOV __attribute__((no_sanitize("coverage")))
#elif defined(__GNUC__) && __GNUC__ >= 12
#define NOCOV __attribute__((no_sanitize_coverage))
#else
#define NOCOV
#endif
#define HOOK __attribute__((visibility("default"))) NOCOV
#define EXPORT __attribute__((visibility("default")))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define RET_IP() ((uintptr_t)__builtin_return_address(0))


EXPORT __thread __attribute__((tls_model("initial-exec"))) kcovx_thread_t kcovx_thread;
/* The collecting flag: hooks read the hidden name directly (no GOT load); the core reads the
   exported alias. */
__attribute__((visibility("hidden"))) int collecting;
extern int kcovx_rt_collecting __attribute__((alias("collecting"), visibility("default")));

/* ------------------------------------------------------------------------------------------
 * The registry of native objects. */

#define MAX_OBJECTS 512

static kcovx_rt_object_t objects[MAX_OBJECTS];
static uint64_t next_index; /* the next dense block index (kcovx_rt.h) */
static size_t n_objects; /* published with release */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t dropped;

#define tls_last (kcovx_thread.last)
#define tls_registering (kcovx_thread.registering)

/* FNV-1a, 64 bits, over a domain tag and the identity; folded to the 31 bits of a unit. */
NOCOV static uint64_t native_unit(const char *tag, const uint8_t *data, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; tag[i]; i++)
        h = (h ^ (uint8_t)tag[i]) * 0x100000001b3ull;
    h = (h ^ 0) * 0x100000001b3ull;
    for (i = 0; i < len; i++)
        h = (h ^ data[i]) * 0x100000001b3ull;
    h = (h ^ (h >> 32)) & 0x7FFFFFFFu;
    if (h == 0x7FFFFFFFu) /* 0xFFFFFFFF is the unknown unit */
        h = 0x7FFFFFFEu;
    return h | 0x80000000u;
}

NOCOV static const kcovx_rt_object_t *find_registered(uintptr_t addr)
{
    size_t n = __atomic_load_n(&n_objects, __ATOMIC_ACQUIRE), i;
    for (i = 0; i < n; i++)
        if (addr - objects[i].lo < objects[i].span)
            return &objects[i];
    return NULL;
}

struct search {
    uintptr_t addr;
    kcovx_rt_object_t *out;
    int found;
};

/* The GNU build-id note among a loaded object's PT_NOTE segments, if any. */
NOCOV static void read_build_id(const struct dl_phdr_info *info, kcovx_rt_object_t *o)
{
    int i;
    for (i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        const uint8_t *p, *end;
        if (ph->p_type != PT_NOTE)
            continue;
        p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        end = p + ph->p_memsz;
        while ((size_t)(end - p) >= sizeof(ElfW(Nhdr))) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            size_t name = (nh->n_namesz + 3u) & ~(size_t)3;
            size_t desc = (nh->n_descsz + 3u) & ~(size_t)3;
            const uint8_t *d = p + sizeof(*nh) + name;
            if (name > (size_t)(end - p) || desc > (size_t)(end - p) ||
                sizeof(*nh) + name + desc > (size_t)(end - p))
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                memcmp(p + sizeof(*nh), "GNU", 4) == 0 && nh->n_descsz > 0 &&
                nh->n_descsz <= sizeof(o->build_id)) {
                memcpy(o->build_id, d, nh->n_descsz);
                o->build_id_len = nh->n_descsz;
                return;
            }
            p = d + desc;
        }
    }
}

NOCOV static int search_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct search *s = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    int i, hit = 0;
    (void)size;
    for (i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start, end;
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        start = info->dlpi_addr + ph->p_vaddr;
        end = start + ph->p_memsz;
        if (start < lo)
            lo = start;
        if (end > hi)
            hi = end;
        if (s->addr >= start && s->addr < end)
            hit = 1;
    }
    if (!hit)
        return 0;
    kcovx_rt_object_t *o = s->out;
    memset(o, 0, sizeof(*o));
    o->lo = lo;
    o->span = hi - lo;
    o->base = info->dlpi_addr;
    if (info->dlpi_name && info->dlpi_name[0]) {
        strncpy(o->path, info->dlpi_name, sizeof(o->path) - 1);
    } else {
        ssize_t n = readlink("/proc/self/exe", o->path, sizeof(o->path) - 1);
        o->path[n > 0 ? n : 0] = 0;
    }
    read_build_id(info, o);
    if (o->build_id_len) {
        o->unit = native_unit("kcovx-native-build-id", o->build_id, o->build_id_len);
    } else {
        const char *slash = strrchr(o->path, '/');
        const char *base = slash ? slash + 1 : o->path;
        o->unit = native_unit("kcovx-native-name", (const uint8_t *)base, strlen(base));
    }
    s->found = 1;
    return 1;
}

/* An object already registered that is the same binary as o (the same unit and the same
   layout of its executable segments: another copy of the file, loaded from another path), whose
   stamps and site numbers o must share so that a PC the two have in common is pushed once per period. */
NOCOV static const kcovx_rt_object_t *same_binary(const kcovx_rt_object_t *o)
{
    size_t i;
    for (i = 0; i < n_objects; i++)
        if (objects[i].unit == o->unit && objects[i].span == o->span &&
            objects[i].lo - objects[i].base == o->lo - o->base && objects[i].stamps != NULL)
            return &objects[i];
    return NULL;
}

NOCOV static const kcovx_rt_object_t *register_object(uintptr_t addr)
{
    const kcovx_rt_object_t *o;
    if (tls_registering)
        return NULL; /* a signal handler's hook inside this thread's own registration */
    tls_registering = 1;
    pthread_mutex_lock(&reg_lock);
    o = find_registered(addr);
    if (o == NULL && n_objects < MAX_OBJECTS) {
        kcovx_rt_object_t *slot = &objects[n_objects];
        struct search s = {addr, slot, 0};
        dl_iterate_phdr(search_cb, &s);
        if (s.found) {
            /* Copies of one binary (same unit and layout) share their stamps and site
               numbers: their PCs are the same, so they are one call site each.  Otherwise
               span entries each, reserved but untouched: only the pages of code that runs
               become memory. */
            const kcovx_rt_object_t *twin = same_binary(slot);
            if (twin != NULL) {
                slot->stamps = twin->stamps;
                slot->sites = twin->sites;
            } else {
                void *m = mmap(NULL, slot->span ? slot->span * sizeof(uint64_t) : 8,
                               PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                slot->stamps = m == MAP_FAILED ? NULL : (uint64_t *)m;
                m = mmap(NULL, slot->span ? slot->span * sizeof(uint32_t) : 8,
                         PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
                slot->sites = m == MAP_FAILED ? NULL : (uint32_t *)m;
            }
            __atomic_store_n(&n_objects, n_objects + 1, __ATOMIC_RELEASE);
            o = slot;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    tls_registering = 0;
    return o;
}

NOCOV static inline const kcovx_rt_object_t *object_of(uintptr_t ra)
{
    const kcovx_rt_object_t *o = tls_last;
    if (LIKELY(o != NULL && ra - o->lo < o->span))
        return o;
    o = find_registered(ra);
    if (o == NULL)
        o = register_object(ra);
    if (o != NULL)
        tls_last = o; /* one pointer store: a signal never sees half an update */
    return o;
}

NOCOV static inline uint64_t pc_in(const kcovx_rt_object_t *o, uintptr_t ra)
{
    if (UNLIKELY(o == NULL))
        return ((uint64_t)KCOVX_NATIVE_UNKNOWN_UNIT << 32) | (uint32_t)ra;
    return (o->unit << 32) | (uint32_t)(ra - o->base);
}

/* ------------------------------------------------------------------------------------------
 * The gvisor covered set's order buffers. */

struct order {
    uint64_t *buf;
    uint64_t n;        /* slots reserved (may run past the capacity) */
    uint64_t inflight; /* pushes between their reservation and their store */
    uint64_t period;   /* the period whose PCs this buffer collects while current */
    int torn;          /* a fork child's copy, taken while some push was in flight */
};

static struct order orders[2] = {{NULL, 0, 0, 1, 0}, {NULL, 0, 0, 0, 0}};
static unsigned current;   /* which buffer pushes go to */
static uint64_t last_period = 1;
static int orders_ready;   /* buffers mapped (never unmapped) */

/* Announce a push on the current buffer (Dekker with the consumer, which switches first,
   then waits for the old buffer's announced pushes); returns it.  Pair with leave(). */
NOCOV static inline struct order *enter(void)
{
    unsigned g;
    for (;;) {
        g = __atomic_load_n(&current, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&orders[g].inflight, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&current, __ATOMIC_SEQ_CST) == g)
            return &orders[g];
        __atomic_fetch_sub(&orders[g].inflight, 1, __ATOMIC_SEQ_CST);
    }
}

NOCOV static inline void leave(struct order *o)
{
    __atomic_fetch_sub(&o->inflight, 1, __ATOMIC_RELEASE);
}

NOCOV static inline int store(struct order *o, uint64_t pc)
{
    uint64_t i = __atomic_fetch_add(&o->n, 1, __ATOMIC_RELAXED);
    if (LIKELY(i < KCOVX_RT_ORDER_CAP))
        o->buf[i] = pc;
    return i < KCOVX_RT_ORDER_CAP;
}

EXPORT NOCOV uint64_t kcovx_rt_consume(kcovx_area_t *area)
{
    unsigned g;
    struct order *o;
    uint64_t n, k = 0;
    if (!orders_ready)
        return 0;
    g = __atomic_load_n(&current, __ATOMIC_SEQ_CST);
    /* Nothing reserved in this period (the usual case without native code): keep it.  A push
       between its stamp and its reservation lands here later and is drained next time, its
       site stamped with this same period, so it is still pushed once. */
    if (__atomic_load_n(&orders[g].n, __ATOMIC_RELAXED) == 0 && !orders[g].torn)
        return 0;
    /* The next period's number first: a pusher that sees the switch sees it too. */
    __atomic_store_n(&orders[g ^ 1u].period, ++last_period, __ATOMIC_RELAXED);
    __atomic_store_n(&current, g ^ 1u, __ATOMIC_SEQ_CST);
    o = &orders[g];
    while (__atomic_load_n(&o->inflight, __ATOMIC_SEQ_CST) != 0)
        sched_yield();
    n = __atomic_load_n(&o->n, __ATOMIC_ACQUIRE);
    if (n > KCOVX_RT_ORDER_CAP)
        n = KCOVX_RT_ORDER_CAP;
    if (UNLIKELY(o->torn)) {
        /* Some slot was reserved by a thread that did not survive the fork and holds a stale
           word: the period is dropped (its stamps name a period that is over, so the next
           hit of each call site pushes it again). */
        o->torn = 0;
        n = 0;
    }
    if (area != NULL)
        k = kcovx_append_batch_gvisor(area, o->buf, n);
    __atomic_store_n(&o->n, 0, __ATOMIC_RELEASE);
    return k;
}

EXPORT NOCOV uint64_t kcovx_rt_pending(void)
{
    uint64_t n;
    if (!orders_ready)
        return 0;
    n = __atomic_load_n(&orders[__atomic_load_n(&current, __ATOMIC_SEQ_CST)].n,
                        __ATOMIC_RELAXED);
    return n > KCOVX_RT_ORDER_CAP ? KCOVX_RT_ORDER_CAP : n;
}

EXPORT NOCOV int kcovx_rt_set_collecting(int on)
{
    if (on && !orders_ready) {
        size_t bytes = KCOVX_RT_ORDER_CAP * sizeof(uint64_t);
        void *a = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        void *b = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a == MAP_FAILED || b == MAP_FAILED) {
            if (a != MAP_FAILED)
                munmap(a, bytes);
            if (b != MAP_FAILED)
                munmap(b, bytes);
            return -1;
        }
        orders[0].buf = a;
        orders[1].buf = b;
        __atomic_store_n(&orders_ready, 1, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&collecting, on ? 1 : 0, __ATOMIC_RELAXED);
    if (!on) {
        /* forget both periods: pushes racing with this land in the buffer drained second */
        kcovx_rt_consume(NULL);
        kcovx_rt_consume(NULL);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Recording. */

/* gvisor: push a native PC on its call site's first hit of the current period.  A stamp
   equal to the current buffer's period means pushed already: if the buffer switches between
   the two loads, the PC is in the batch being consumed, and the hit counts in that period. */
NOCOV static void gvisor_add(uintptr_t ra)
{
    const kcovx_rt_object_t *o = object_of(ra);
    uint64_t *s, seen, period;
    struct order *b;
    if (UNLIKELY(o == NULL || o->stamps == NULL || !orders_ready)) {
        __atomic_fetch_add(&dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    s = &o->stamps[ra - o->lo];
    seen = __atomic_load_n(s, __ATOMIC_RELAXED);
    if (LIKELY(seen == __atomic_load_n(
                           &orders[__atomic_load_n(&current, __ATOMIC_ACQUIRE)].period,
                           __ATOMIC_RELAXED)))
        return;
    b = enter();
    /* Inside the buffer's period now (the consumer waits for us before draining it, and
       numbers a buffer only while it is not current). */
    period = __atomic_load_n(&b->period, __ATOMIC_RELAXED);
    while (seen != period) {
        if (__atomic_compare_exchange_n(s, &seen, period, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            store(b, pc_in(o, ra));
            break;
        }
    }
    leave(b);
}

/* The dense index of the call site returning to ra: taken on its first hit. */
NOCOV static uint64_t site_index(const kcovx_rt_object_t *o, uintptr_t ra)
{
    uint32_t *slot, v, want;
    if (UNLIKELY(o == NULL || o->sites == NULL))
        return KCOVX_NO_INDEX;
    slot = &o->sites[ra - o->lo];
    v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (LIKELY(v != 0))
        return v - 1;
    want = (uint32_t)(kcovx_rt_reserve_indices(1) + 1);
    if (UNLIKELY(want == 0))
        return KCOVX_NO_INDEX; /* past 2**32 - 1 indices */
    if (__atomic_compare_exchange_n(slot, &v, want, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return want - 1;
    return v - 1; /* another thread numbered it first (the index taken here stays unused) */
}

NOCOV static void record_unique(kcovx_area_t *t, uintptr_t ra)
{
    const kcovx_rt_object_t *o = object_of(ra);
    kcovx_unique_record(kcovx_unique_of(t), site_index(o, ra), pc_in(o, ra));
}

/* record_pc's paths other than "nothing" and "append, the object known": out of line, so the
   hook's own common paths need no stack frame (every call below is a tail call). */
__attribute__((noinline)) NOCOV static void record_pc_slow(kcovx_area_t *t, uintptr_t ra)
{
    if (t != NULL) {
        if (LIKELY(!kcovx_is_unique(t)))
            kcovx_append_pc(t, pc_in(object_of(ra), ra));
        else
            record_unique(t, ra);
    }
    if (__atomic_load_n(&collecting, __ATOMIC_RELAXED))
        gvisor_add(ra);
}

NOCOV static inline void record_pc(uintptr_t ra)
{
    kcovx_area_t *t = kcovx_tls_pc_target;
    const kcovx_rt_object_t *o;
    if (LIKELY(t == NULL)) {
        if (LIKELY(!__atomic_load_n(&collecting, __ATOMIC_RELAXED)))
            return;
        gvisor_add(ra);
        return;
    }
    o = tls_last;
    if (UNLIKELY(kcovx_is_unique(t) || o == NULL || ra - o->lo >= o->span)) {
        record_pc_slow(t, ra);
        return;
    }
    kcovx_append_pc(t, (o->unit << 32) | (uint32_t)(ra - o->base));
    if (UNLIKELY(__atomic_load_n(&collecting, __ATOMIC_RELAXED)))
        gvisor_add(ra);
}

NOCOV static inline void record_cmp(uint64_t type, uint64_t a1, uint64_t a2, uintptr_t ra)
{
    kcovx_area_t *t = kcovx_tls_cmp_target;
    if (LIKELY(t == NULL))
        return;
    kcovx_append_cmp(t, type, a1, a2, pc_in(object_of(ra), ra));
}

HOOK void __sanitizer_cov_trace_pc(void) { record_pc(RET_IP()); }

HOOK void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b)
{
    record_cmp(KCOVX_CMP_SIZE(0), a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b)
{
    record_cmp(KCOVX_CMP_SIZE(1), a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b)
{
    record_cmp(KCOVX_CMP_SIZE(2), a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b)
{
    record_cmp(KCOVX_CMP_SIZE(3), a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b)
{
    record_cmp(KCOVX_CMP_SIZE(0) | KCOVX_CMP_CONST, a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b)
{
    record_cmp(KCOVX_CMP_SIZE(1) | KCOVX_CMP_CONST, a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b)
{
    record_cmp(KCOVX_CMP_SIZE(2) | KCOVX_CMP_CONST, a, b, RET_IP());
}
HOOK void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b)
{
    record_cmp(KCOVX_CMP_SIZE(3) | KCOVX_CMP_CONST, a, b, RET_IP());
}

/* cases[0]: number of cases, cases[1]: the operand's width in bits, cases[2..]: the case
   values.  One const record per case, {case value, operand}, as Linux writes them; widths
   other than 8/16/32/64 record nothing. */
HOOK void __sanitizer_cov_trace_switch(uint64_t val, void *case_table)
{
    /* void *: the type gcc's own declaration of the builtin has */
    const uint64_t *cases = (const uint64_t *)case_table;
    kcovx_area_t *t = kcovx_tls_cmp_target;
    uint64_t type, i, pc;
    uintptr_t ra = RET_IP();
    if (LIKELY(t == NULL))
        return;
    switch (cases[1]) {
    case 8: type = KCOVX_CMP_SIZE(0); break;
    case 16: type = KCOVX_CMP_SIZE(1); break;
    case 32: type = KCOVX_CMP_SIZE(2); break;
    case 64: type = KCOVX_CMP_SIZE(3); break;
    default: return;
    }
    type |= KCOVX_CMP_CONST;
    pc = pc_in(object_of(ra), ra);
    for (i = 0; i < cases[0]; i++)
        kcovx_append_cmp(t, type, cases[i + 2], val, pc);
}

HOOK void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a, (void)b; }
HOOK void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a, (void)b; }

/* clang's trace-pc-guard: each guard gets a non-zero number at load, its block's dense index
   + 1; a guard's hook records like trace_pc.  A guard the program zeroed records nothing (the
   sanitizer convention). */

HOOK void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop)
{
    uint64_t base;
    uint32_t *g;
    if (start == stop || *start)
        return;
    /* guard = dense index + 1, so a guard's number is its block's index (unique mode) */
    base = kcovx_rt_reserve_indices((uint64_t)(stop - start));
    for (g = start; g < stop; g++, base++)
        *g = base + 1 <= UINT32_MAX ? (uint32_t)(base + 1) : UINT32_MAX;
}

HOOK void __sanitizer_cov_trace_pc_guard(uint32_t *guard)
{
    uint32_t v = *guard;
    kcovx_area_t *t;
    uintptr_t ra;
    if (v == 0)
        return;
    t = kcovx_tls_pc_target;
    ra = RET_IP();
    if (UNLIKELY(t != NULL && kcovx_is_unique(t))) {
        const kcovx_rt_object_t *o = object_of(ra);
        kcovx_unique_record(kcovx_unique_of(t), v == UINT32_MAX ? KCOVX_NO_INDEX : v - 1,
                            pc_in(o, ra));
        if (__atomic_load_n(&collecting, __ATOMIC_RELAXED))
            gvisor_add(ra);
        return;
    }
    record_pc(ra);
}

/* ------------------------------------------------------------------------------------------
 * For the core. */

EXPORT NOCOV unsigned kcovx_rt_abi_version(void) { return KCOVX_RT_ABI_VERSION; }

EXPORT NOCOV void kcovx_rt_set_target(kcovx_area_t *area, int mode)
{
    kcovx_tls_pc_target = NULL;
    kcovx_tls_cmp_target = NULL;
    if (area != NULL && mode == KCOVX_MODE_TRACE_PC)
        kcovx_tls_pc_target = area;
    else if (area != NULL && mode == KCOVX_MODE_TRACE_CMP)
        kcovx_tls_cmp_target = area;
}

EXPORT NOCOV void kcovx_rt_set_unique(kcovx_unique_t *u)
{
    kcovx_tls_cmp_target = NULL;
    kcovx_tls_pc_target = u ? (kcovx_area_t *)((uintptr_t)u | KCOVX_UNIQUE_TAG) : NULL;
}

EXPORT NOCOV uint64_t kcovx_rt_reserve_indices(uint64_t n)
{
    return __atomic_fetch_add(&next_index, n, __ATOMIC_RELAXED);
}

EXPORT NOCOV size_t kcovx_rt_object_count(void)
{
    return __atomic_load_n(&n_objects, __ATOMIC_ACQUIRE);
}

EXPORT NOCOV const kcovx_rt_object_t *kcovx_rt_object_at(size_t i)
{
    return i < kcovx_rt_object_count() ? &objects[i] : NULL;
}

EXPORT NOCOV void kcovx_rt_forget(uintptr_t addr)
{
    size_t n, i;
    pthread_mutex_lock(&reg_lock);
    n = n_objects;
    for (i = 0; i < n; i++)
        if (addr - objects[i].lo < objects[i].span)
            /* an empty range matches no address: lookups (and every thread's last-object
               cache, which checks the range each time) pass over it from now on */
            __atomic_store_n(&objects[i].span, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&reg_lock);
}

EXPORT NOCOV uint64_t kcovx_rt_pc_of(uintptr_t addr) { return pc_in(object_of(addr), addr); }

EXPORT NOCOV uint64_t kcovx_rt_dropped(void) { return __atomic_load_n(&dropped, __ATOMIC_RELAXED); }

NOCOV static void before_fork(void) { pthread_mutex_lock(&reg_lock); }
NOCOV static void after_fork_parent(void) { pthread_mutex_unlock(&reg_lock); }
NOCOV static void after_fork_child(void)
{
    int i;
    /* The kernel gives a child no kcov.  Cleared here, inside fork() itself, because the
       Python layer's fork hook runs later (instrumented code of an instrumented interpreter
       runs before it), or never (fork() called from C). */
    kcovx_tls_pc_target = NULL;
    kcovx_tls_cmp_target = NULL;
    for (i = 0; i < 2; i++) {
        if (orders[i].inflight != 0)
            orders[i].torn = 1; /* its pusher is gone: see kcovx_rt_consume */
        orders[i].inflight = 0;
    }
    tls_registering = 0;
    pthread_mutex_unlock(&reg_lock);
}

__attribute__((constructor)) NOCOV static void kcovx_rt_init(void)
{
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
