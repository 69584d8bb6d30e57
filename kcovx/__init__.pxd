# kcovx/__init__.pxd: what `cimport kcovx` gives other Cython code.
#
# The Area class layout (``area.c`` is the kcovx_area_t every append takes) and the inline,
# `noexcept nogil` appends of kcovx.h.  Build with include_dirs=[kcovx.get_include()].
# Contract: one writer per area; see kcovx.h for the memory order.

from kcovx._area cimport (
    KCOVX_ABI_VERSION,
    KCOVX_CAPSULE_NAME,
    Area,
    kcovx_api_t,
    kcovx_append_batch_gvisor,
    kcovx_append_cmp,
    kcovx_append_pc,
    kcovx_append_pcs,
    kcovx_area_t,
    kcovx_load_count,
    kcovx_publish_count,
)
