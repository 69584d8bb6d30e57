/*
 * tests/native/nativecov.c: a small C extension built at test time with
 * kcovx.sancov.compile_args()/link_args() (tests/_native_support.py).  Each function has a known
 * shape, and lines the tests look up by their marker comments (LINE:name), so a trace can be
 * checked PC by PC and each PC symbolized to the right line.
 *
 * branch() is if-converted at -O2 (one basic block: its two arms are a setcc), so pick() is its
 * counterpart whose arms stay separate blocks (each stores to its own volatile): the tests that
 * need a PC per arm use pick().
 *
 * Threading: every function but the *_nogil ones runs with the GIL; those release it around
 * the instrumented work, and in_pthread runs it in a pthread that has no Python thread state.
 * fork_loop forks from C: its child runs only instrumented C and _exit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

/* Leaf functions: noinline so that each is its own call site sequence in every build. */
__attribute__((noinline)) static int branch(long x)
{
    if (x > 10) /* LINE:branch_test */
        return 1; /* LINE:branch_big */
    return 0;     /* LINE:branch_small */
}

__attribute__((noinline)) static long loop(long n)
{
    long s = 0;
    for (long i = 0; i < n; i++) /* LINE:loop_head */
        s += i;                  /* LINE:loop_body */
    return s;
}

__attribute__((noinline)) static int classify(int v)
{
    switch (v) { /* LINE:switch */
    case 3: return 30;
    case 17: return 170;
    case 1000: return 10000;
    default: return -1;
    }
}

static volatile long pick_big_hits, pick_small_hits;

__attribute__((noinline)) static int pick(long x)
{
    if (x > 10) {        /* LINE:pick_test */
        pick_big_hits++; /* LINE:pick_big */
        return 1;
    }
    pick_small_hits++; /* LINE:pick_small */
    return 0;
}

/* Switches over the other operand widths: cases[1] is 8 and 64. */
__attribute__((noinline)) static int classify8(uint8_t v)
{
    switch (v) { /* LINE:switch8 */
    case 7: return 1;
    case 200: return 2;
    case 250: return 3;
    default: return 0;
    }
}

__attribute__((noinline)) static int classify64(uint64_t v)
{
    switch (v) { /* LINE:switch64 */
    case 5: return 1;
    case 0x100000000ull: return 2;
    case 0xFFFFFFFFFFFFFFF0ull: return 3;
    default: return 0;
    }
}

/* Float comparisons: gcc emits trace_cmpf/trace_cmpd for them; kcov has no float records. */
__attribute__((noinline)) static int fcmp(double d, float f)
{
    int r = 0;
    if (d < 2.5) /* LINE:fcmp_d */
        r |= 1;
    if (f > 0.5f) /* LINE:fcmp_f */
        r |= 2;
    return r;
}

/* Comparisons of each width against constants (const_cmp) and against variables (cmp). */
__attribute__((noinline)) static int cmp_all(uint8_t a8, uint16_t a16, uint32_t a32, uint64_t a64,
                                             uint8_t b8, uint16_t b16, uint32_t b32, uint64_t b64)
{
    int r = 0;
    if (a8 == 0x4B) r |= 1;                   /* LINE:c1 */
    if (a16 == 0x4B43) r |= 2;                /* LINE:c2 */
    if (a32 == 0x4B434F56u) r |= 4;           /* LINE:c4 */
    if (a64 == 0x4B434F5658585858ull) r |= 8; /* LINE:c8 */
    if (a8 == b8) r |= 16;                    /* LINE:v1 */
    if (a16 == b16) r |= 32;                  /* LINE:v2 */
    if (a32 == b32) r |= 64;                  /* LINE:v4 */
    if (a64 == b64) r |= 128;                 /* LINE:v8 */
    return r;
}

static PyObject *py_branch(PyObject *self, PyObject *arg)
{
    long x = PyLong_AsLong(arg);
    if (x == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(branch(x));
}

static PyObject *py_loop(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(loop(n));
}

static PyObject *py_classify(PyObject *self, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(classify((int)v));
}

static PyObject *py_classify8(PyObject *self, PyObject *arg)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(classify8((uint8_t)v));
}

static PyObject *py_classify64(PyObject *self, PyObject *arg)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(classify64((uint64_t)v));
}

static PyObject *py_fcmp(PyObject *self, PyObject *args)
{
    double d;
    float f;
    if (!PyArg_ParseTuple(args, "df", &d, &f))
        return NULL;
    return PyLong_FromLong(fcmp(d, f));
}

static PyObject *py_cmp_all(PyObject *self, PyObject *args)
{
    unsigned long long a, b;
    if (!PyArg_ParseTuple(args, "KK", &a, &b))
        return NULL;
    return PyLong_FromLong(cmp_all((uint8_t)a, (uint16_t)a, (uint32_t)a, (uint64_t)a,
                                   (uint8_t)b, (uint16_t)b, (uint32_t)b, (uint64_t)b));
}

/* branch(x) for x in 0..n-1, without the GIL. */
static PyObject *py_branches_nogil(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg), s = 0;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (long i = 0; i < n; i++)
        s += branch(i);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(s);
}

static PyObject *py_pick(PyObject *self, PyObject *arg)
{
    long x = PyLong_AsLong(arg);
    if (x == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(pick(x));
}

/* pick(x) for x in 0..n-1, without the GIL. */
static PyObject *py_picks_nogil(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg), s = 0;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (long i = 0; i < n; i++)
        s += pick(i);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(s);
}

static void *pthread_body(void *arg)
{
    long *n = arg;
    *n = loop(*n) + branch(*n);
    return NULL;
}

/* loop(n) and branch(n) in a new pthread (no Python thread state), joined. */
static PyObject *py_in_pthread(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    pthread_t t;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (pthread_create(&t, NULL, pthread_body, &n) == 0)
        pthread_join(t, NULL);
    else
        n = -1;
    Py_END_ALLOW_THREADS
    if (n == -1)
        return PyErr_Format(PyExc_OSError, "pthread_create failed");
    return PyLong_FromLong(n);
}

/* fork() from C (no Python fork hooks run): the child runs loop(n) and branch(n) and leaves
   with _exit; the parent waits.  Returns the child's exit status. */
static PyObject *py_fork_loop(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    pid_t pid;
    int status = 0;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    pid = fork();
    if (pid < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (pid == 0) {
        long r = loop(n) + branch(n);
        _exit(r == -12345 ? 1 : 0);
    }
    Py_BEGIN_ALLOW_THREADS
    if (waitpid(pid, &status, 0) < 0)
        status = -1;
    Py_END_ALLOW_THREADS
    if (status == -1)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* The code addresses of the leaf functions, for tests that compare PCs with symbols. */
static PyObject *py_addresses(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K}", "branch", (unsigned long long)(uintptr_t)branch,
                         "loop", (unsigned long long)(uintptr_t)loop, "classify",
                         (unsigned long long)(uintptr_t)classify, "cmp_all",
                         (unsigned long long)(uintptr_t)cmp_all);
}

static PyMethodDef methods[] = {
    {"branch", py_branch, METH_O, "1 if x > 10 else 0"},
    {"loop", py_loop, METH_O, "sum(range(n))"},
    {"classify", py_classify, METH_O, "a switch over 3, 17, 1000"},
    {"classify8", py_classify8, METH_O, "a switch over a uint8_t: 7, 200, 250"},
    {"classify64", py_classify64, METH_O, "a switch over a uint64_t: 5, 2**32, 2**64-16"},
    {"fcmp", py_fcmp, METH_VARARGS, "double and float comparisons"},
    {"cmp_all", py_cmp_all, METH_VARARGS, "comparisons of each width: constants, then a vs b"},
    {"branches_nogil", py_branches_nogil, METH_O, "branch(i) for i < n without the GIL"},
    {"pick", py_pick, METH_O, "1 if x > 10 else 0, one block per arm"},
    {"picks_nogil", py_picks_nogil, METH_O, "pick(i) for i < n without the GIL"},
    {"in_pthread", py_in_pthread, METH_O, "loop(n) + branch(n) in a pthread from C"},
    {"fork_loop", py_fork_loop, METH_O, "fork() from C; the child runs loop(n), branch(n)"},
    {"addresses", py_addresses, METH_NOARGS, "code addresses of the leaf functions"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "nativecov", NULL, -1, methods};

PyMODINIT_FUNC PyInit_nativecov(void) { return PyModule_Create(&moduledef); }
