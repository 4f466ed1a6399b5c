/* Counting NaN/Inf values in a float buffer, for the converter's check that a checkpoint's weights
 * are finite before they are written (a NaN weight turns every logit into NaN at run time).
 *
 * A float is not finite exactly when its exponent bits are all ones, so the test is on the bit
 * pattern: one AND and one compare per element, a loop the compiler vectorizes, run with the GIL
 * released. It is a pass over memory the conversion reads anyway, at memory speed.
 */
#include "pyapi.h"

#include <stdint.h>
#include <string.h>

/* Blocks of 2^16 elements keep the per-lane counters narrow (the same width as the data), which
 * is what lets the compiler keep the whole loop in vector registers. */
#define BLOCK 65536

static int64_t count32(const uint32_t *x, int64_t n, uint32_t mask) {
    int64_t bad = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = n - i0 < BLOCK ? n : i0 + BLOCK;
        uint32_t c = 0;
        for (int64_t i = i0; i < i1; i++) c += (x[i] & mask) == mask;
        bad += c;
    }
    return bad;
}

static int64_t count16(const uint16_t *x, int64_t n, uint16_t mask) {
    int64_t bad = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = n - i0 < BLOCK ? n : i0 + BLOCK;
        uint32_t c = 0;
        for (int64_t i = i0; i < i1; i++) c += (uint16_t)(x[i] & mask) == mask;
        bad += c;
    }
    return bad;
}

/* count_nonfinite(buffer, dtype) -> int, dtype one of "f32", "f16", "bf16" (bf16 as raw bits). */
PyObject *lmp_py_count_nonfinite(PyObject *self, PyObject *args) {
    Py_buffer b;
    const char *dtype;
    if (!PyArg_ParseTuple(args, "y*s:count_nonfinite", &b, &dtype)) return NULL;
    int64_t bad = 0;
    int kind = strcmp(dtype, "f32") == 0 ? 4 : strcmp(dtype, "f16") == 0 ? 2 : strcmp(dtype, "bf16") == 0 ? 3 : 0;
    if (!kind || (b.len % (kind == 4 ? 4 : 2)) != 0 || ((uintptr_t)b.buf % (kind == 4 ? 4 : 2)) != 0) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "count_nonfinite: need an aligned buffer of f32, f16 or bf16, got '%.10s'",
                     dtype);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (kind == 4)
        bad = count32((const uint32_t *)b.buf, (int64_t)(b.len / 4), 0x7F800000u);
    else
        bad = count16((const uint16_t *)b.buf, (int64_t)(b.len / 2), kind == 2 ? 0x7C00u : 0x7F80u);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromLongLong((long long)bad);
}
