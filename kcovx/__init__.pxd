# kcovx/__init__.pxd: what `cimport kcovx` gives other Cython code.
#
# The Area class layout (``area.c`` is the kcovx_area_t every append takes), the inline,
# `noexcept nogil` appends of kcovx.h, its ABI constants, and ``import_api()`` for the checked
# capsule API.  Build with include_dirs=[kcovx.get_include()].
# Contract: one writer per area; see kcovx.h for the memory order.

from kcovx._area cimport (
    KCOVX_ABI_VERSION,
    KCOVX_CAPSULE_NAME,
    KCOVX_CMP_BAD_OPERAND,
    KCOVX_CMP_BAD_TYPE,
    KCOVX_CMP_CONST,
    KCOVX_CMP_MASK,
    KCOVX_CMP_OK,
    KCOVX_CMP_SIZE,
    KCOVX_CMP_TYPE_MAX,
    KCOVX_MAX_WORDS,
    KCOVX_TRACE_CMP,
    KCOVX_TRACE_PC,
    KCOVX_WORDS_PER_CMP,
    Area,
    import_api,
    kcovx_api_t,
    kcovx_append_batch_gvisor,
    kcovx_append_cmp,
    kcovx_append_pc,
    kcovx_append_pcs,
    kcovx_area_t,
    kcovx_cmp_check,
    kcovx_cmp_nbytes,
    kcovx_load_count,
    kcovx_publish_count,
)
