/*
 * tests/native/guardcov.c: clang's trace-pc-guard pair driven by hand, for a gcc-only machine.
 * Built WITHOUT -fsanitize-coverage (only kcovx.sancov.link_args()): it calls
 * __sanitizer_cov_trace_pc_guard_init on its own guard arrays, as clang's module constructor
 * does, and __sanitizer_cov_trace_pc_guard from hit(), as clang's instrumentation does at the
 * start of each block, so the runtime's side of the pair is tested without clang.
 *
 * Threading: everything runs with the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop);
void __sanitizer_cov_trace_pc_guard(uint32_t *guard);

#define N_GUARDS 8
static uint32_t guards_a[N_GUARDS], guards_b[N_GUARDS];

static uint32_t *array_of(long which)
{
    return which == 0 ? guards_a : guards_b;
}

/* init(which): guard_init over array which (0 or 1); returns its guards. */
static PyObject *py_init(PyObject *self, PyObject *arg)
{
    long which = PyLong_AsLong(arg);
    uint32_t *g;
    PyObject *out;
    if (which == -1 && PyErr_Occurred())
        return NULL;
    g = array_of(which);
    __sanitizer_cov_trace_pc_guard_init(g, g + N_GUARDS);
    out = PyList_New(N_GUARDS);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < N_GUARDS; i++) {
        PyObject *v = PyLong_FromUnsignedLong(g[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

/* The one call site of the guard hook: the PC it records is the return address of this call. */
__attribute__((noinline)) static void guard_hit(uint32_t *guard)
{
    __sanitizer_cov_trace_pc_guard(guard); /* LINE:guard_call */
    __asm__ volatile("" ::: "memory");     /* keep the call a call, not a tail jump */
}

/* hit(i): the guard hook on guards_a[i]. */
static PyObject *py_hit(PyObject *self, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= N_GUARDS)
        return PyErr_Format(PyExc_IndexError, "guard %ld out of range", i);
    guard_hit(&guards_a[i]);
    Py_RETURN_NONE;
}

/* zero(i): clear guards_a[i], as a program that turns a guard off does. */
static PyObject *py_zero(PyObject *self, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= N_GUARDS)
        return PyErr_Format(PyExc_IndexError, "guard %ld out of range", i);
    guards_a[i] = 0;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", py_init, METH_O, "guard_init over guard array 0 or 1; its guards"},
    {"hit", py_hit, METH_O, "the guard hook on guard i of array 0"},
    {"zero", py_zero, METH_O, "zero guard i of array 0"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "guardcov", NULL, -1, methods};

PyMODINIT_FUNC PyInit_guardcov(void) { return PyModule_Create(&moduledef); }
