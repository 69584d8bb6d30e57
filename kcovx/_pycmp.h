/*
 * kcovx/_pycmp.h: comparison records from instrumented Python code (included by _area.pyx
 * only; not part of the ABI).
 *
 * Owns: the encoding of a Python operand for a KCOV_TRACE_CMP record, the per-thread stash
 * that carries a comparison's left operand to the moment its right operand is known, and the
 * records a pair of operands gives.
 *
 * Encoding (README.md, "Comparison records"), in the kcov ABI only:
 * - int operands (bool and int subclasses included, their int value) in [-2**63, 2**64): one
 *   record {KCOV_CMP_SIZE(n) | const, arg1, arg2, pc}, 2**n the smallest width in bytes that
 *   holds both operands (as signed or unsigned), each operand stored modulo 2**(8 << n);
 * - str (its UTF-8, lone surrogates as 3 bytes), bytes and bytearray operands, both of the
 *   same kind (str with str; bytes with bytes or bytearray): the first at most
 *   KCOVX_PYCMP_STR_MAX bytes of each side: a header record {KCOV_CMP_SIZE(3) | const,
 *   n1, n2, pc} (n the bytes recorded from that side), then for k = 0, 8, 16 .. < max(n1, n2)
 *   one chunk record {KCOV_CMP_SIZE(w) | const, side 1 bytes k.., side 2 bytes k.., pc}: the
 *   bytes little-endian, zero past a side's n, w the smallest width holding the bytes left of
 *   the longer side (at most 8).  An int record of size 8 always has an operand outside
 *   [-2**31, 2**32), so a size-8 record with both operands <= KCOVX_PYCMP_STR_MAX is always
 *   a header;
 * - anything else (floats, mixed kinds, ints beyond 64 bits): nothing.
 * `const`: KCOV_CMP_CONST when one side is a literal in the source, which is then arg1.
 *
 * Threading and ownership: every function here runs with the GIL held, on the calling
 * thread's own target (kcovx_tls_cmp_target, one writer per area).  The stash is thread-local
 * and holds encodings, never references, so nothing it holds can dangle or keep an object
 * alive.  Its entries are tagged with the comparison's PC; an entry is taken by the topmost
 * match (entries above it, left by an operand that raised, are dropped), and a full stash
 * drops its oldest entry: a mismatch (a generator suspended between its operands) can only
 * lose or misattribute a record, never change what the program computes.  Nothing here calls
 * Python code, allocates, or raises: an operand that cannot be encoded records nothing.
 */
#ifndef KCOVX_PYCMP_H
#define KCOVX_PYCMP_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "kcovx.h"

#define KCOVX_PYCMP_STR_MAX 32u /* bytes of a str/bytes operand recorded */
#define KCOVX_PYCMP_STASH 16u   /* left operands a thread carries at once */

enum { KCOVX_PYCMP_NONE = 0, KCOVX_PYCMP_INT = 1, KCOVX_PYCMP_BYTES = 2, KCOVX_PYCMP_STR = 3 };

typedef struct kcovx_pycmp_val {
    uint32_t kind;
    uint32_t n;     /* INT: width in bytes (1, 2, 4, 8); STR/BYTES: bytes recorded */
    uint64_t v;     /* INT: the value modulo 2**64 */
    uint8_t b[KCOVX_PYCMP_STR_MAX]; /* STR/BYTES: the bytes, zero past n */
} kcovx_pycmp_val_t;

typedef struct kcovx_pycmp_stash {
    uint32_t top; /* entries in use, the newest at top - 1 */
    uint64_t tag[KCOVX_PYCMP_STASH];
    kcovx_pycmp_val_t val[KCOVX_PYCMP_STASH];
} kcovx_pycmp_stash_t;

static __thread kcovx_pycmp_stash_t kcovx_pycmp_stash;

static inline uint32_t kcovx_pycmp_width(int64_t v)
{
    if (v >= -128 && v < 256)
        return 1;
    if (v >= -32768 && v < 65536)
        return 2;
    if (v >= -2147483648LL && v < 4294967296LL)
        return 4;
    return 8;
}

static inline void kcovx_pycmp_utf8(PyObject *s, kcovx_pycmp_val_t *out)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(s), i;
    uint32_t n = 0;
    if (PyUnicode_IS_ASCII(s)) {
        n = len < (Py_ssize_t)KCOVX_PYCMP_STR_MAX ? (uint32_t)len : KCOVX_PYCMP_STR_MAX;
        memcpy(out->b, PyUnicode_DATA(s), n);
    } else {
        int kind = PyUnicode_KIND(s);
        const void *data = PyUnicode_DATA(s);
        uint8_t tmp[4];
        for (i = 0; i < len && n < KCOVX_PYCMP_STR_MAX; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            uint32_t k, m;
            if (c < 0x80) {
                tmp[0] = (uint8_t)c;
                m = 1;
            } else if (c < 0x800) {
                tmp[0] = (uint8_t)(0xC0 | (c >> 6));
                tmp[1] = (uint8_t)(0x80 | (c & 0x3F));
                m = 2;
            } else if (c < 0x10000) {
                tmp[0] = (uint8_t)(0xE0 | (c >> 12));
                tmp[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
                tmp[2] = (uint8_t)(0x80 | (c & 0x3F));
                m = 3;
            } else {
                tmp[0] = (uint8_t)(0xF0 | (c >> 18));
                tmp[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
                tmp[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
                tmp[3] = (uint8_t)(0x80 | (c & 0x3F));
                m = 4;
            }
            for (k = 0; k < m && n < KCOVX_PYCMP_STR_MAX; k++)
                out->b[n++] = tmp[k];
        }
    }
    out->n = n;
    out->kind = KCOVX_PYCMP_STR;
}

/* Encode `o` into `out` (kind NONE: nothing to record).  Runs no Python code: int values are
   read from the object (PyLong_Check objects are never asked for __index__), str and bytes
   from their buffers. */
static inline void kcovx_pycmp_encode(PyObject *o, kcovx_pycmp_val_t *out)
{
    out->kind = KCOVX_PYCMP_NONE;
    if (PyLong_Check(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow == 0) {
            if (v == -1 && PyErr_Occurred()) { /* cannot happen for an int; be safe */
                PyErr_Clear();
                return;
            }
            out->v = (uint64_t)v;
            out->n = kcovx_pycmp_width((int64_t)v);
            out->kind = KCOVX_PYCMP_INT;
        } else if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear(); /* 2**64 or more: not recorded */
                return;
            }
            out->v = (uint64_t)u;
            out->n = 8;
            out->kind = KCOVX_PYCMP_INT;
        }
        return;
    }
    if (PyUnicode_Check(o)) {
        memset(out->b, 0, sizeof(out->b));
        kcovx_pycmp_utf8(o, out);
        return;
    }
    if (PyBytes_Check(o) || PyByteArray_Check(o)) {
        Py_ssize_t len = PyBytes_Check(o) ? PyBytes_GET_SIZE(o) : PyByteArray_GET_SIZE(o);
        const char *p = PyBytes_Check(o) ? PyBytes_AS_STRING(o) : PyByteArray_AS_STRING(o);
        uint32_t n = len < (Py_ssize_t)KCOVX_PYCMP_STR_MAX ? (uint32_t)len : KCOVX_PYCMP_STR_MAX;
        memset(out->b, 0, sizeof(out->b));
        memcpy(out->b, p, n);
        out->n = n;
        out->kind = KCOVX_PYCMP_BYTES;
    }
}

static inline uint64_t kcovx_pycmp_le(const uint8_t *p, uint32_t w)
{
    uint64_t v = 0;
    uint32_t i;
    for (i = 0; i < w; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static inline uint64_t kcovx_pycmp_size(uint32_t w)
{
    return w == 1 ? KCOVX_CMP_SIZE(0) : w == 2 ? KCOVX_CMP_SIZE(1) : w == 4 ? KCOVX_CMP_SIZE(2)
                                                                             : KCOVX_CMP_SIZE(3);
}

/* The records of comparing a (arg1) with b (arg2) at `pc`, appended to `t` while they fit. */
static inline void kcovx_pycmp_record(kcovx_area_t *t, const kcovx_pycmp_val_t *a,
                                      const kcovx_pycmp_val_t *b, uint64_t flags, uint64_t pc)
{
    if (a->kind != b->kind || a->kind == KCOVX_PYCMP_NONE)
        return;
    if (a->kind == KCOVX_PYCMP_INT) {
        uint32_t w = a->n > b->n ? a->n : b->n;
        uint64_t mask = w == 8 ? ~(uint64_t)0 : (((uint64_t)1 << (8 * w)) - 1);
        kcovx_append_cmp(t, kcovx_pycmp_size(w) | flags, a->v & mask, b->v & mask, pc);
        return;
    }
    {
        uint32_t m = a->n > b->n ? a->n : b->n, k;
        if (!kcovx_append_cmp(t, KCOVX_CMP_SIZE(3) | flags, a->n, b->n, pc))
            return;
        for (k = 0; k < m; k += 8) {
            uint32_t left = m - k, w = left <= 1 ? 1 : left <= 2 ? 2 : left <= 4 ? 4 : 8;
            if (!kcovx_append_cmp(t, kcovx_pycmp_size(w) | flags, kcovx_pycmp_le(a->b + k, w),
                                  kcovx_pycmp_le(b->b + k, w), pc))
                return;
        }
    }
}

static inline void kcovx_pycmp_push(uint64_t tag, const kcovx_pycmp_val_t *v)
{
    kcovx_pycmp_stash_t *s = &kcovx_pycmp_stash;
    if (s->top == KCOVX_PYCMP_STASH) { /* full: drop the oldest */
        memmove(&s->tag[0], &s->tag[1], (KCOVX_PYCMP_STASH - 1) * sizeof(s->tag[0]));
        memmove(&s->val[0], &s->val[1], (KCOVX_PYCMP_STASH - 1) * sizeof(s->val[0]));
        s->top--;
    }
    s->tag[s->top] = tag;
    s->val[s->top] = *v;
    s->top++;
}

/* The topmost stashed operand tagged `tag`, or NULL.  `take`: remove it and everything above
   it (left there by operands that raised); else leave the stash as it is. */
static inline const kcovx_pycmp_val_t *kcovx_pycmp_find(uint64_t tag, int take)
{
    kcovx_pycmp_stash_t *s = &kcovx_pycmp_stash;
    uint32_t i = s->top;
    while (i > 0) {
        i--;
        if (s->tag[i] == tag) {
            if (take)
                s->top = i; /* the entry stays readable until the next push */
            return &s->val[i];
        }
    }
    return NULL;
}

#endif /* KCOVX_PYCMP_H */
