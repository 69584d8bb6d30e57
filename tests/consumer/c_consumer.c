/*
 * tests/consumer/c_consumer.c: a real consumer of kcovx's capsule C API, in plain C.
 *
 * Owns nothing of kcovx: it does what a third-party C extension would do.  At import it calls
 * kcovx.h's kcovx_import_api(), which refuses (ImportError) an abi_version other than the
 * KCOVX_ABI_VERSION it was compiled against or a struct smaller than its kcovx_api_t.  Each
 * function then calls one slot of the API.  Built at test time by tests/test_consumer.py with
 * include_dirs=[kcovx.get_include()] (or a doctored copy of kcovx.h, to show the refusal);
 * never committed built.
 *
 * Threading: every function here runs with the GIL held (trace_pc/trace_cmp/area_of need it);
 * the append functions are on areas whose one writer is the calling thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kcovx.h"

/* kcovx.h's prefixed kcov constants are the kernel's, and both headers go in one file. */
#if defined(__has_include)
#if __has_include(<linux/kcov.h>)
#include <linux/kcov.h>
_Static_assert(KCOVX_TRACE_PC == KCOV_TRACE_PC && KCOVX_TRACE_CMP == KCOV_TRACE_CMP, "modes");
_Static_assert(KCOVX_CMP_CONST == KCOV_CMP_CONST && KCOVX_CMP_MASK == KCOV_CMP_MASK, "bits");
_Static_assert(KCOVX_CMP_SIZE(0) == KCOV_CMP_SIZE(0) && KCOVX_CMP_SIZE(3) == KCOV_CMP_SIZE(3),
               "sizes");
#endif
#endif

static const kcovx_api_t *api = NULL;

/* "O&" converter: a Python int in [0, 2**64) to uint64_t; OverflowError/TypeError otherwise. */
static int to_u64(PyObject *obj, void *out)
{
    unsigned long long v;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    *(uint64_t *)out = (uint64_t)v;
    return 1;
}

/* area_size(obj) -> int: api->area_of(obj)->size; TypeError for anything but an Area. */
static PyObject *c_area_size(PyObject *self, PyObject *obj)
{
    kcovx_area_t *a = api->area_of(obj);
    (void)self;
    if (a == NULL)
        return NULL; /* area_of set TypeError */
    return PyLong_FromUnsignedLongLong(a->size);
}

/* load_count(area) -> int: the header's inline kcovx_load_count on api->area_of(area). */
static PyObject *c_load_count(PyObject *self, PyObject *obj)
{
    kcovx_area_t *a = api->area_of(obj);
    (void)self;
    if (a == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(kcovx_load_count(a));
}

/* append_pc(area, pc) -> bool */
static PyObject *c_append_pc(PyObject *self, PyObject *args)
{
    PyObject *obj;
    uint64_t pc;
    kcovx_area_t *a;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO&:append_pc", &obj, to_u64, &pc))
        return NULL;
    if ((a = api->area_of(obj)) == NULL)
        return NULL;
    return PyBool_FromLong(api->append_pc(a, pc));
}

/* append_pcs(area, sequence of int) -> int: how many were stored. */
static PyObject *c_append_pcs(PyObject *self, PyObject *args)
{
    PyObject *obj, *seq, *fast;
    kcovx_area_t *a;
    uint64_t *pcs;
    uint64_t done;
    Py_ssize_t n, i;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO:append_pcs", &obj, &seq))
        return NULL;
    if ((a = api->area_of(obj)) == NULL)
        return NULL;
    if ((fast = PySequence_Fast(seq, "append_pcs: expected a sequence of int")) == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    pcs = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    if (pcs == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (i = 0; i < n; i++) {
        if (!to_u64(PySequence_Fast_GET_ITEM(fast, i), &pcs[i])) {
            PyMem_Free(pcs);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    Py_BEGIN_ALLOW_THREADS /* append_pcs needs no GIL */
    done = api->append_pcs(a, pcs, (uint64_t)n);
    Py_END_ALLOW_THREADS
    PyMem_Free(pcs);
    return PyLong_FromUnsignedLongLong(done);
}

/* append_cmp(area, type, arg1, arg2, pc) -> bool */
static PyObject *c_append_cmp(PyObject *self, PyObject *args)
{
    PyObject *obj;
    uint64_t type, arg1, arg2, pc;
    kcovx_area_t *a;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO&O&O&O&:append_cmp", &obj, to_u64, &type, to_u64, &arg1,
                          to_u64, &arg2, to_u64, &pc))
        return NULL;
    if ((a = api->area_of(obj)) == NULL)
        return NULL;
    return PyBool_FromLong(api->append_cmp(a, type, arg1, arg2, pc));
}

/* trace_pc(pc) -> None: what kcovx.trace_pc does, through the API. */
static PyObject *c_trace_pc(PyObject *self, PyObject *arg)
{
    uint64_t pc;
    (void)self;
    if (!to_u64(arg, &pc))
        return NULL;
    if (api->trace_pc(pc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* trace_cmp(type, arg1, arg2, pc) -> None */
static PyObject *c_trace_cmp(PyObject *self, PyObject *args)
{
    uint64_t type, arg1, arg2, pc;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O&O&O&:trace_cmp", to_u64, &type, to_u64, &arg1, to_u64,
                          &arg2, to_u64, &pc))
        return NULL;
    if (api->trace_cmp(type, arg1, arg2, pc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* api_info() -> (abi_version, struct_size) as found in the capsule. */
static PyObject *c_api_info(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue("(kk)", (unsigned long)api->abi_version,
                         (unsigned long)api->struct_size);
}

static PyMethodDef methods[] = {
    {"area_size", c_area_size, METH_O, "api->area_of(obj)->size"},
    {"load_count", c_load_count, METH_O, "kcovx_load_count(api->area_of(obj))"},
    {"append_pc", c_append_pc, METH_VARARGS, "api->append_pc"},
    {"append_pcs", c_append_pcs, METH_VARARGS, "api->append_pcs"},
    {"append_cmp", c_append_cmp, METH_VARARGS, "api->append_cmp"},
    {"trace_pc", c_trace_pc, METH_O, "api->trace_pc"},
    {"trace_cmp", c_trace_cmp, METH_VARARGS, "api->trace_cmp"},
    {"api_info", c_api_info, METH_NOARGS, "(abi_version, struct_size) of the capsule"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "c_consumer", "A plain-C consumer of the kcovx capsule.", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* kcovx.h's constants as this module saw them at compile time, for the test to compare with
   what kcovx.abi re-exports. */
static const struct {
    const char *name;
    long value;
} constants[] = {
    {"TRACE_PC", KCOVX_TRACE_PC},
    {"TRACE_CMP", KCOVX_TRACE_CMP},
    {"CMP_CONST", (long)KCOVX_CMP_CONST},
    {"CMP_MASK", (long)KCOVX_CMP_MASK},
    {"CMP_SIZE_2", (long)KCOVX_CMP_SIZE(2)},
    {"CMP_TYPE_MAX", (long)KCOVX_CMP_TYPE_MAX},
    {"WORDS_PER_CMP", (long)KCOVX_WORDS_PER_CMP},
    {"MODE_DISABLED", KCOVX_MODE_DISABLED},
    {"MODE_INIT", KCOVX_MODE_INIT},
    {"MODE_TRACE_PC", KCOVX_MODE_TRACE_PC},
    {"MODE_TRACE_CMP", KCOVX_MODE_TRACE_CMP},
    {"MODE_UNIQUE_PC", KCOVX_MODE_UNIQUE_PC},
    {"MAX_WORDS", (long)KCOVX_MAX_WORDS},
};

PyMODINIT_FUNC PyInit_c_consumer(void)
{
    PyObject *m;
    size_t i;

    if ((api = kcovx_import_api()) == NULL)
        return NULL;
    m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    for (i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    if (PyModule_AddIntConstant(m, "ABI_VERSION", (long)KCOVX_ABI_VERSION) < 0 ||
        PyModule_AddStringConstant(m, "CAPSULE_NAME", KCOVX_CAPSULE_NAME) < 0 ||
        PyModule_AddIntConstant(m, "STRUCT_SIZE", (long)sizeof(kcovx_api_t)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
