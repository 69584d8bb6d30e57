/*
 * kcovx_dso.c: linked into every instrumented object by kcovx.sancov.link_args() (as
 * kcovx_dso.o).  Its destructor runs when the object is unloaded (dlclose, or process exit)
 * and tells kcovx's runtime to forget the object, so that code loaded later at the same
 * addresses is not recorded under this object's unit.  Everything here is static, so the
 * stub linked into several objects never clashes; it is built without instrumentation.
 */
#include <stdint.h>

void kcovx_rt_forget(uintptr_t addr);

#if defined(__clang__)
#define KCOVX_DSO_NOCOV __attribute__((no_sanitize("coverage")))
#elif defined(__GNUC__) && __GNUC__ >= 12
#define KCOVX_DSO_NOCOV __attribute__((no_sanitize_coverage))
#else
#define KCOVX_DSO_NOCOV
#endif

__attribute__((destructor, used)) KCOVX_DSO_NOCOV static void kcovx_dso_unloading(void)
{
    /* any address inside this object's code names it: this function's own */
    kcovx_rt_forget((uintptr_t)&kcovx_dso_unloading);
}
