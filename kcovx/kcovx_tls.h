/*
 * kcovx_tls.h: the calling thread's recording targets in the linux profile, private to the
 * compiled core (kcovx/_area.pyx is its only includer; setup.py defines KCOVX_BUILDING_CORE).
 *
 * kcovx_tls_pc_target is the area of the device this thread enabled in KCOVX_MODE_TRACE_PC,
 * kcovx_tls_cmp_target the one it enabled in KCOVX_MODE_TRACE_CMP; NULL when none.  At most one
 * of them is set.  trace_pc, Probe subscripts, trace_cmp and the C API's trace_pc/trace_cmp read
 * them on every event.
 *
 * Threading and ownership.  Each variable is per thread and is only read and written by its
 * own thread (set and cleared through kcovx._area._set_thread_target), so it needs no lock and
 * no atomics.  The Python layer holds a reference to the Area while it is a target, so the
 * pointer never outlives the mapping.  initial-exec TLS makes each access one %fs-relative load
 * instead of a __tls_get_addr call; the 16 bytes come from the static TLS surplus glibc keeps
 * for dlopen'ed modules.  The variables are defined here (static): a second includer would get
 * its own, unused copies, hence the guard.  Extensions record through the C API instead.
 */
#ifndef KCOVX_TLS_H
#define KCOVX_TLS_H

#ifndef KCOVX_BUILDING_CORE
#error "kcovx_tls.h is the compiled core's thread-local state: use the C API's trace_pc/trace_cmp"
#endif

#include "kcovx.h"

#define KCOVX_TLS static __thread __attribute__((tls_model("initial-exec")))

KCOVX_TLS kcovx_area_t *kcovx_tls_pc_target = NULL;
KCOVX_TLS kcovx_area_t *kcovx_tls_cmp_target = NULL;

#endif /* KCOVX_TLS_H */
