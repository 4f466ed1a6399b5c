/* Python binding of the ggml-exact Q8_0 quantizer: _core.quantize_q8_0.
 *
 * The caller passes the source values and preallocated output planes (quants, fp16 scales) as
 * buffers, so a converter can quantize straight into an mmap of the output file. The work runs
 * without the GIL, split by blocks over `threads` worker threads; the bytes do not depend on
 * the split, since every block is quantized on its own.
 */
#include "pyapi.h" /* Python.h first, as it asks */

#include <float.h>
#include <math.h>
#include <string.h>

#if !defined(_WIN32)
#include <pthread.h>
#endif

#include "half.h"
#include "kernels.h"

#define MAX_THREADS 256

typedef struct {
    const lmp_kernels *k;
    const char *src;
    int dtype;
    size_t esize;
    int64_t b0, b1; /* block range */
    int8_t *q;
    uint16_t *d;
    int rc;
} job;

static void run_job(job *j) {
    int64_t n = (j->b1 - j->b0) * LMP_QK;
    j->rc = j->k->quantize_q8_0(j->src + (size_t)(j->b0 * LMP_QK) * j->esize, j->dtype, n,
                                j->q + j->b0 * LMP_QK, j->d + j->b0);
}

#if !defined(_WIN32)
static void *job_main(void *arg) {
    run_job(arg);
    return NULL;
}
#endif

/* Runs the jobs, on threads where possible; a thread that cannot start has its job done here. */
static void run_jobs(job *jobs, int nj) {
#if !defined(_WIN32)
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 1; i < nj; i++) started[i] = pthread_create(&tid[i], NULL, job_main, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (int i = 1; i < nj; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else run_job(&jobs[i]);
    }
#else
    for (int i = 0; i < nj; i++) run_job(&jobs[i]);
#endif
}

/* Index of the first inf/nan element, or -1. Only used to word the error. */
static int64_t first_nonfinite(const void *src, int dtype, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v;
        if (dtype == LMP_F32) v = ((const float *)src)[i];
        else if (dtype == LMP_F16) v = lmp_f16_to_f32(((const uint16_t *)src)[i]);
        else v = lmp_bf16_to_f32(((const uint16_t *)src)[i]);
        if (!(fabsf(v) <= FLT_MAX)) return i;
    }
    return -1;
}

static int get_buf(PyObject *obj, Py_buffer *v, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    return 0;
}

PyObject *lmp_py_quantize_q8_0(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"src", "src_dtype", "quants_out", "scales_out", "threads", NULL};
    PyObject *so, *qo, *dout;
    const char *dts;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OsOO|i:quantize_q8_0", kwlist, &so, &dts, &qo,
                                     &dout, &threads))
        return NULL;
    int dtype;
    size_t esize;
    if (strcmp(dts, "f32") == 0) dtype = LMP_F32, esize = 4;
    else if (strcmp(dts, "f16") == 0) dtype = LMP_F16, esize = 2;
    else if (strcmp(dts, "bf16") == 0) dtype = LMP_BF16, esize = 2;
    else {
        PyErr_Format(PyExc_ValueError, "src_dtype must be 'f32', 'f16' or 'bf16', got '%s'", dts);
        return NULL;
    }
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "threads must be >= 1, got %d", threads);
        return NULL;
    }

    Py_buffer sb, qb, db;
    if (get_buf(so, &sb, 0, "src") < 0) return NULL;
    if (get_buf(qo, &qb, 1, "quants_out") < 0) {
        PyBuffer_Release(&sb);
        return NULL;
    }
    if (get_buf(dout, &db, 1, "scales_out") < 0) {
        PyBuffer_Release(&qb);
        PyBuffer_Release(&sb);
        return NULL;
    }

    PyObject *result = NULL;
    int64_t n = (int64_t)(sb.len / (Py_ssize_t)esize);
    if (sb.len % (Py_ssize_t)esize != 0) {
        PyErr_Format(PyExc_ValueError, "src has %zd bytes, not a whole number of %s values",
                     sb.len, dts);
    } else if (n % LMP_QK != 0) {
        PyErr_Format(PyExc_ValueError, "src has %lld values, not a multiple of 32", (long long)n);
    } else if (qb.len != n) {
        PyErr_Format(PyExc_ValueError, "quants_out has %zd bytes, expected %lld", qb.len,
                     (long long)n);
    } else if (db.len != n / LMP_QK * 2) {
        PyErr_Format(PyExc_ValueError, "scales_out has %zd bytes, expected %lld", db.len,
                     (long long)(n / LMP_QK * 2));
    } else if ((uintptr_t)sb.buf % esize != 0 || (uintptr_t)db.buf % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "src and scales_out must be aligned to their element size");
    } else {
        int64_t nb = n / LMP_QK;
        int nj = threads > MAX_THREADS ? MAX_THREADS : threads;
        if (nj > nb) nj = nb > 0 ? (int)nb : 1;
        job jobs[MAX_THREADS];
        const lmp_kernels *k = lmp_active_kernels();
        for (int i = 0; i < nj; i++) {
            jobs[i] = (job){k, sb.buf, dtype, esize, nb * i / nj, nb * (i + 1) / nj,
                            qb.buf, db.buf, 0};
        }
        int failed = 0;
        int64_t bad = -1;
        Py_BEGIN_ALLOW_THREADS
        run_jobs(jobs, nj);
        for (int i = 0; i < nj; i++) failed |= jobs[i].rc != 0;
        if (failed) bad = first_nonfinite(sb.buf, dtype, n);
        Py_END_ALLOW_THREADS
        if (failed) {
            PyErr_Format(PyExc_ValueError, "non-finite value at element %lld", (long long)bad);
        } else {
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyBuffer_Release(&db);
    PyBuffer_Release(&qb);
    PyBuffer_Release(&sb);
    return result;
}

/* _core.q8_0_relayout(quants, scales, blocks, to_blocks): moves Q8_0 between lmpack's two planes
 * (int8 quants, fp16 scales; docs/FORMAT.md) and ggml's interleaved 34-byte blocks (the fp16
 * scale, then 32 quants), in the direction `to_blocks` says. GGUF export and import go through
 * it: a pure byte copy, so a Q8_0 tensor crosses between the formats without re-quantizing, at
 * memory speed (numpy's strided copies of the same bytes ran at ~1 GB/s). */
PyObject *lmp_py_q8_0_relayout(PyObject *self, PyObject *args) {
    PyObject *qo, *dout, *bo;
    int to_blocks;
    if (!PyArg_ParseTuple(args, "OOOp:q8_0_relayout", &qo, &dout, &bo, &to_blocks)) return NULL;
    Py_buffer qb, db, bb;
    if (get_buf(qo, &qb, !to_blocks, "quants") < 0) return NULL;
    if (get_buf(dout, &db, !to_blocks, "scales") < 0) {
        PyBuffer_Release(&qb);
        return NULL;
    }
    if (get_buf(bo, &bb, to_blocks, "blocks") < 0) {
        PyBuffer_Release(&db);
        PyBuffer_Release(&qb);
        return NULL;
    }
    PyObject *result = NULL;
    int64_t nb = (int64_t)(qb.len / LMP_QK);
    if (qb.len % LMP_QK != 0 || db.len != nb * 2 || bb.len != nb * (LMP_QK + 2)) {
        PyErr_Format(PyExc_ValueError,
                     "sizes do not match: %zd quant bytes, %zd scale bytes, %zd block bytes",
                     qb.len, db.len, bb.len);
    } else {
        char *q = qb.buf, *d = db.buf, *b = bb.buf;
        Py_BEGIN_ALLOW_THREADS
        if (to_blocks) {
            for (int64_t i = 0; i < nb; i++) {
                memcpy(b + i * (LMP_QK + 2), d + i * 2, 2);
                memcpy(b + i * (LMP_QK + 2) + 2, q + i * LMP_QK, LMP_QK);
            }
        } else {
            for (int64_t i = 0; i < nb; i++) {
                memcpy(d + i * 2, b + i * (LMP_QK + 2), 2);
                memcpy(q + i * LMP_QK, b + i * (LMP_QK + 2) + 2, LMP_QK);
            }
        }
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&bb);
    PyBuffer_Release(&db);
    PyBuffer_Release(&qb);
    return result;
}
