# kcovx/_area.pxd: the cimport surface of the compiled core.
#
# Owns: the C declarations of kcovx.h (the ABI constants, area layout, inline appends, the C API
# struct and its import helper) and the layout of the Area class, so other Cython code can reach
# an area's words without a Python call.  Declarations only: every value is kcovx.h's.
# Threading: the inline appends are `noexcept nogil` and assume one writer per area (see
# kcovx.h); reading `Area.c` needs no lock because it never changes after construction;
# import_api needs the GIL.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "kcovx.h" nogil:
    const unsigned int KCOVX_ABI_VERSION
    const char *KCOVX_CAPSULE_NAME

    const int KCOVX_TRACE_PC
    const int KCOVX_TRACE_CMP
    const uint64_t KCOVX_CMP_CONST
    const int KCOVX_CMP_SIZE_SHIFT
    uint64_t KCOVX_CMP_SIZE(uint64_t n) noexcept
    const uint64_t KCOVX_CMP_MASK
    const uint64_t KCOVX_CMP_TYPE_MAX
    const unsigned int KCOVX_WORDS_PER_CMP

    const int KCOVX_MODE_DISABLED
    const int KCOVX_MODE_INIT
    const int KCOVX_MODE_TRACE_PC
    const int KCOVX_MODE_TRACE_CMP
    const int KCOVX_MODE_UNIQUE_PC

    const uint64_t KCOVX_MAX_WORDS

    ctypedef struct kcovx_area_t:
        uint64_t *words
        uint64_t size

    uint64_t kcovx_load_count(const kcovx_area_t *a) noexcept
    void kcovx_publish_count(kcovx_area_t *a, uint64_t count) noexcept
    int kcovx_append_pc(kcovx_area_t *a, uint64_t pc) noexcept
    uint64_t kcovx_append_pcs(kcovx_area_t *a, const uint64_t *pcs, uint64_t n) noexcept
    int kcovx_append_cmp(kcovx_area_t *a, uint64_t type, uint64_t arg1, uint64_t arg2,
                         uint64_t pc) noexcept
    uint64_t kcovx_append_batch_gvisor(kcovx_area_t *a, const uint64_t *pcs,
                                       uint64_t n) noexcept

    const int KCOVX_CMP_OK
    const int KCOVX_CMP_BAD_TYPE
    const int KCOVX_CMP_BAD_OPERAND
    uint64_t kcovx_cmp_nbytes(uint64_t type) noexcept
    int kcovx_cmp_check(uint64_t type, uint64_t arg1, uint64_t arg2) noexcept

    ctypedef struct kcovx_api_t:
        uint32_t abi_version
        uint32_t struct_size
        int (*append_pc)(kcovx_area_t *area, uint64_t pc) noexcept nogil
        uint64_t (*append_pcs)(kcovx_area_t *area, const uint64_t *pcs,
                               uint64_t n) noexcept nogil
        int (*append_cmp)(kcovx_area_t *area, uint64_t type, uint64_t arg1, uint64_t arg2,
                          uint64_t pc) noexcept nogil
        # these two need the GIL: it guards the Python side of the gvisor pending set
        int (*trace_pc)(uint64_t pc) noexcept
        int (*trace_cmp)(uint64_t type, uint64_t arg1, uint64_t arg2,
                         uint64_t pc) noexcept
        kcovx_area_t *(*area_of)(PyObject *obj) noexcept


cdef extern from "kcovx.h":
    const kcovx_api_t *_kcovx_import_api "kcovx_import_api"() except NULL


cdef inline const kcovx_api_t *import_api() except NULL:
    """kcovx.h's kcovx_import_api for Cython: the checked C API, or an exception (ImportError on
    an ABI mismatch; see kcovx.h).  Call once at module level:
    ``cdef const kcovx.kcovx_api_t *api = kcovx.import_api()``."""
    return _kcovx_import_api()


@cython.final
cdef class Area:
    # The mapping: `c.words` points at `nbytes` bytes mapped MAP_SHARED, unmapped only when
    # this object (and so every buffer exported from it) is gone.
    cdef kcovx_area_t c
    cdef readonly uint64_t nbytes
    cdef readonly object path
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    # The core's unique-mode view of this area (kcovx._area._Unique), made on first use.
    cdef object _unique
