/* Kernel dispatch: detect the CPU, pick the best kernel table it can run, expose the choice.
 *
 * The active table pointer is the only mutable global of the C core, with its companion, the
 * GEMV prefetch profile of the CPU's vendor (gemv_prefetch.c), and a cached AVX512-BF16 feature
 * bit (lmp_bf16_act_matmul). All are resolved on first use
 * (LMPACK_KERNELS may force a path) and changed only by set_kernel_path and the _gemv_prefetch
 * benchmark hook. A table is offered
 * only when the CPU has the instructions AND the OS saves the register state they need (xgetbv
 * on x86, getauxval/sysctl on arm64): the SIMD files are compiled with raised targets and must
 * never run before this check.
 *
 * This file also holds the private test hooks (_matmul, _quantize_act_q8, _dot_f32, _axpy_f32,
 * _gemv_prefetch)
 * that let the Python tests drive any table entry directly.
 */
#include "pyapi.h" /* Python.h first, as it asks */

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_x86.h"
#include "kernels.h"

#if defined(__aarch64__)
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP_FPHP
#define HWCAP_FPHP (1 << 9)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

/* ------------------------------------------------------------------------------------------ */
/* CPU features                                                                                */

typedef struct {
    const char *name;
    int present;
} feature;

enum {
    F_AVX, F_AVX2, F_FMA, F_F16C, F_AVX512F, F_AVX512BW, F_AVX512VL, F_AVX512DQ, F_AVX512VNNI,
    F_AVX512BF16, F_AVXVNNI, F_AMX, F_OS_AVX, F_OS_AVX512, F_NEON, F_DOTPROD, F_FP16, F_AMX_INT8,
    F_AMX_BF16, F_OS_AMX, F_NFEAT
};

static const char *const feature_names[F_NFEAT] = {
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni",
    "avx512bf16", "avxvnni", "amx", "os_avx", "os_avx512", "neon", "dotprod", "fp16", "amx_int8",
    "amx_bf16", "os_amx",
};

#if defined(LMP_X86)
/* XCR0: which register states the OS saves on a context switch. */
static unsigned long long xgetbv0(void) {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#endif
}
#endif

static void detect(int f[F_NFEAT]) {
    memset(f, 0, sizeof(int) * F_NFEAT);
#if defined(LMP_X86)
    unsigned r[4];
    lmp_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    if (max_leaf < 1) return;
    lmp_cpuid(1, 0, r);
    int osxsave = (r[2] >> 27) & 1;
    f[F_FMA] = (r[2] >> 12) & 1;
    f[F_AVX] = (r[2] >> 28) & 1;
    f[F_F16C] = (r[2] >> 29) & 1;
    if (osxsave) {
        unsigned long long xcr0 = xgetbv0();
        f[F_OS_AVX] = (xcr0 & 0x6) == 0x6;             /* XMM and YMM state */
        f[F_OS_AVX512] = f[F_OS_AVX] && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
        f[F_OS_AMX] = (xcr0 & 0x60000) == 0x60000;            /* XTILECFG, XTILEDATA */
    }
    if (max_leaf >= 7) {
        lmp_cpuid(7, 0, r);
        f[F_AVX2] = (r[1] >> 5) & 1;
        f[F_AVX512F] = (r[1] >> 16) & 1;
        f[F_AVX512DQ] = (r[1] >> 17) & 1;
        f[F_AVX512BW] = (r[1] >> 30) & 1;
        f[F_AVX512VL] = (r[1] >> 31) & 1;
        f[F_AVX512VNNI] = (r[2] >> 11) & 1;
        f[F_AMX] = (r[3] >> 24) & 1; /* AMX-TILE */
        f[F_AMX_INT8] = (r[3] >> 25) & 1;
        f[F_AMX_BF16] = (r[3] >> 22) & 1;
        unsigned sub_max = r[0];
        if (sub_max >= 1) {
            lmp_cpuid(7, 1, r);
            f[F_AVXVNNI] = (r[0] >> 4) & 1;
            f[F_AVX512BF16] = (r[0] >> 5) & 1;
        }
    }
#elif defined(__aarch64__)
    f[F_NEON] = 1; /* Advanced SIMD is mandatory on AArch64 */
#if defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP);
    f[F_NEON] = (hw & HWCAP_ASIMD) != 0;
    f[F_DOTPROD] = (hw & HWCAP_ASIMDDP) != 0;
    f[F_FP16] = (hw & HWCAP_FPHP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof(v);
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0) f[F_DOTPROD] = v != 0;
    v = 0;
    len = sizeof(v);
    if (sysctlbyname("hw.optional.arm.FEAT_FP16", &v, &len, NULL, 0) == 0) f[F_FP16] = v != 0;
#endif
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Tables                                                                                      */

typedef struct {
    const lmp_kernels *table;
    int (*runnable)(const int f[F_NFEAT]);
} path;

static int run_scalar(const int f[F_NFEAT]) { return 1; }

#if defined(LMP_X86)
static int run_avx2(const int f[F_NFEAT]) {
    return f[F_OS_AVX] && f[F_AVX] && f[F_AVX2] && f[F_FMA] && f[F_F16C];
}
static int run_avx512(const int f[F_NFEAT]) {
    return run_avx2(f) && f[F_OS_AVX512] && f[F_AVX512F] && f[F_AVX512BW] && f[F_AVX512VL] &&
           f[F_AVX512DQ] && f[F_AVX512VNNI];
}
#endif
#if defined(LMP_HAVE_AMX)
/* AMX-TILE, -INT8 and -BF16, their state enabled in XCR0 (bits 17-18), and Linux's permission
 * to use it (asked once; a refusal, e.g. under an old kernel, leaves the AVX-512 table). */
static int run_amx(const int f[F_NFEAT]) {
    return run_avx512(f) && f[F_AMX] && f[F_AMX_INT8] && f[F_AMX_BF16] && f[F_OS_AMX] && lmp_amx_enable() == 0;
}
#endif
#if defined(__aarch64__)
static int run_neon(const int f[F_NFEAT]) { return f[F_NEON] && f[F_DOTPROD]; }
#endif

/* Best last. */
static const path paths[] = {
    {&lmp_kernels_scalar, run_scalar},
#if defined(LMP_X86)
    {&lmp_kernels_avx2, run_avx2},
    {&lmp_kernels_avx512, run_avx512},
#endif
#if defined(LMP_HAVE_AMX)
    {&lmp_kernels_amx, run_amx},
#endif
#if defined(__aarch64__)
    {&lmp_kernels_neon, run_neon},
#endif
};
#define NPATHS ((int)(sizeof(paths) / sizeof(paths[0])))

static _Atomic(const lmp_kernels *) g_active;

static const lmp_kernels *best_table(void) {
    int f[F_NFEAT];
    detect(f);
    const lmp_kernels *best = &lmp_kernels_scalar;
    for (int i = 0; i < NPATHS; i++)
        if (paths[i].runnable(f)) best = paths[i].table;
    return best;
}

/* The table called `name` if this CPU can run it, else NULL. */
static const lmp_kernels *runnable_table(const char *name) {
    int f[F_NFEAT];
    detect(f);
    for (int i = 0; i < NPATHS; i++)
        if (strcmp(paths[i].table->name, name) == 0 && paths[i].runnable(f)) return paths[i].table;
    return NULL;
}

/* First choice: LMPACK_KERNELS when it names a runnable table, else the best one. */
static const lmp_kernels *initial_table(void) {
    const char *env = getenv("LMPACK_KERNELS");
    if (env && *env) {
        const lmp_kernels *t = runnable_table(env);
        if (t) return t;
    }
    return best_table();
}

const lmp_kernels *lmp_active_kernels(void) {
    const lmp_kernels *t = atomic_load_explicit(&g_active, memory_order_acquire);
    if (!t) {
        /* Racing first callers compute the same answer, so whichever store wins is fine. */
        const lmp_kernels *expected = NULL;
        t = initial_table();
        if (!atomic_compare_exchange_strong(&g_active, &expected, t)) t = expected;
    }
    return t;
}

lmp_matmul_fn lmp_bf16_act_matmul(const lmp_kernels *k) {
#if defined(LMP_X86)
    if (k == &lmp_kernels_avx512) {
        static _Atomic int has_bf16 = -1; /* racing first callers store the same answer */
        int h = atomic_load_explicit(&has_bf16, memory_order_relaxed);
        if (h < 0) {
            int f[F_NFEAT];
            detect(f);
            h = f[F_AVX512BF16];
            atomic_store_explicit(&has_bf16, h, memory_order_relaxed);
        }
        if (!h) return NULL;
    }
#endif
    return k->matmul_bf16_act;
}

static PyObject *paths_list(void) {
    int f[F_NFEAT];
    detect(f);
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int i = 0; i < NPATHS; i++) {
        if (!paths[i].runnable(f)) continue;
        PyObject *s = PyUnicode_FromString(paths[i].table->name);
        if (!s || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(s);
    }
    return list;
}

int lmp_dispatch_init(void) {
    const char *env = getenv("LMPACK_KERNELS");
    if (env && *env && !runnable_table(env)) {
        PyObject *avail = paths_list();
        if (!avail) return -1;
        PyObject *sep = PyUnicode_FromString(", ");
        PyObject *names = sep ? PyUnicode_Join(sep, avail) : NULL;
        Py_XDECREF(sep);
        Py_DECREF(avail);
        if (!names) return -1;
        int rc = PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                                  "LMPACK_KERNELS=%s is not a kernel path this CPU can run "
                                  "(choose from %U); using %s",
                                  env, names, best_table()->name);
        Py_DECREF(names);
        if (rc < 0) return -1;
    }
    (void)lmp_active_kernels();
    (void)lmp_gemv_prefetch_active();
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Python surface                                                                              */

PyObject *lmp_py_cpu_features(PyObject *self, PyObject *noargs) {
    int f[F_NFEAT];
    detect(f);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < F_NFEAT; i++) {
        if (PyDict_SetItemString(d, feature_names[i], f[i] ? Py_True : Py_False) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

PyObject *lmp_py_kernel_path(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(lmp_active_kernels()->name);
}

PyObject *lmp_py_kernel_paths(PyObject *self, PyObject *noargs) { return paths_list(); }

/* _gemv_prefetch([name]) -> the active profile's name, after switching to `name` if given
 * (ValueError, naming the profiles, otherwise). For benchmarks comparing them in one process, and
 * tests; results never depend on it. */
PyObject *lmp_py_gemv_prefetch(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s:_gemv_prefetch", &name)) return NULL;
    if (name && lmp_gemv_prefetch_set(name) != 0) {
        char names[256];
        lmp_gemv_prefetch_names(names, sizeof names);
        PyErr_Format(PyExc_ValueError, "unknown GEMV prefetch profile %R (%s)", PyTuple_GET_ITEM(args, 0), names);
        return NULL;
    }
    return PyUnicode_FromString(lmp_gemv_prefetch_active()->name);
}

PyObject *lmp_py_set_kernel_path(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_kernel_path", &name)) return NULL;
    const lmp_kernels *t = runnable_table(name);
    if (!t) {
        PyObject *avail = paths_list();
        if (!avail) return NULL;
        PyErr_Format(PyExc_ValueError, "kernel path '%s' cannot run on this CPU (available: %R)",
                     name, avail);
        Py_DECREF(avail);
        return NULL;
    }
    atomic_store_explicit(&g_active, t, memory_order_release);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* Test hooks: drive one entry of the active table on caller-owned buffers.                   */

/* Gets a C-contiguous buffer of exactly `nbytes` bytes (any size if nbytes < 0) whose address
 * is a multiple of `align`; sets ValueError/TypeError naming `what` otherwise. */
static int get_buf(PyObject *obj, Py_buffer *v, int writable, Py_ssize_t nbytes, size_t align,
                   const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (nbytes >= 0 && v->len != nbytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, v->len, nbytes);
        PyBuffer_Release(v);
        return -1;
    }
    if ((uintptr_t)v->buf % align != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to %zu bytes", what, align);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static int parse_dtype(const char *s) {
    static const char *const names[LMP_DTYPE_COUNT] = {"f32", "f16", "bf16", "q8_0"};
    for (int i = 0; i < LMP_DTYPE_COUNT; i++)
        if (strcmp(s, names[i]) == 0) return i;
    PyErr_Format(PyExc_ValueError, "unknown dtype '%s' (expected f32, f16, bf16 or q8_0)", s);
    return -1;
}

PyObject *lmp_py_test_has_bf16_act(PyObject *self, PyObject *noargs) {
    return PyBool_FromLong(lmp_bf16_act_matmul(lmp_active_kernels()) != NULL);
}

PyObject *lmp_py_test_matmul(PyObject *self, PyObject *args) {
    const char *dts;
    PyObject *wo, *wso, *xo, *xso, *yo;
    Py_ssize_t rows, cols, ntok, r0, r1;
    if (!PyArg_ParseTuple(args, "sOOnnOOnOnn:_matmul", &dts, &wo, &wso, &rows, &cols, &xo, &xso,
                          &ntok, &yo, &r0, &r1))
        return NULL;
    /* "bf16_act": bf16 weights against bf16 activations, the table's matmul_bf16_act */
    const int bact = strcmp(dts, "bf16_act") == 0;
    int dt = bact ? LMP_BF16 : parse_dtype(dts);
    if (dt < 0) return NULL;
    lmp_matmul_fn fn = bact ? lmp_bf16_act_matmul(lmp_active_kernels()) : lmp_active_kernels()->matmul[dt];
    if (!fn) {
        PyErr_Format(PyExc_ValueError, "the %s kernels have no bf16-activation matmul on this CPU",
                     lmp_active_kernels()->name);
        return NULL;
    }
    if (rows <= 0 || cols <= 0 || ntok <= 0 || rows > (1 << 24) || cols > (1 << 24) ||
        ntok > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "rows, cols and ntok must be positive and sane");
        return NULL;
    }
    if (r0 < 0 || r0 > r1 || r1 > rows) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= r0 <= r1 <= rows");
        return NULL;
    }
    int q8 = dt == LMP_Q8_0;
    if (q8 && cols % LMP_QK != 0) {
        PyErr_SetString(PyExc_ValueError, "q8_0 needs cols % 32 == 0");
        return NULL;
    }
    if (q8 != (wso != Py_None) || q8 != (xso != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "scales are given for q8_0 and only for q8_0");
        return NULL;
    }
    static const int esize[LMP_DTYPE_COUNT] = {4, 2, 2, 1};
    Py_buffer wb, wsb = {0}, xb, xsb = {0}, yb;
    if (get_buf(wo, &wb, 0, rows * cols * esize[dt], esize[dt], "w") < 0) return NULL;
    if (q8 && get_buf(wso, &wsb, 0, rows * (cols / LMP_QK) * 2, 2, "w_scales") < 0) goto fail_w;
    const int xsize = q8 ? 1 : bact ? 2 : 4;
    if (get_buf(xo, &xb, 0, ntok * cols * xsize, xsize, "x") < 0) goto fail_ws;
    if (q8 && get_buf(xso, &xsb, 0, ntok * (cols / LMP_QK) * 4, 4, "x_scales") < 0) goto fail_x;
    if (get_buf(yo, &yb, 1, ntok * rows * 4, 4, "y") < 0) goto fail_xs;

    lmp_weight w = {wb.buf, q8 ? wsb.buf : NULL, rows, cols, dt};
    lmp_q8_act act = {xb.buf, q8 ? xsb.buf : NULL};
    const void *x = q8 ? (const void *)&act : xb.buf;
    Py_BEGIN_ALLOW_THREADS
    fn(&w, r0, r1, x, ntok, yb.buf, rows);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&yb);
    if (q8) PyBuffer_Release(&xsb);
    PyBuffer_Release(&xb);
    if (q8) PyBuffer_Release(&wsb);
    PyBuffer_Release(&wb);
    Py_RETURN_NONE;

fail_xs:
    if (q8) PyBuffer_Release(&xsb);
fail_x:
    PyBuffer_Release(&xb);
fail_ws:
    if (q8) PyBuffer_Release(&wsb);
fail_w:
    PyBuffer_Release(&wb);
    return NULL;
}

PyObject *lmp_py_test_quantize_act_q8(PyObject *self, PyObject *args) {
    PyObject *xo, *qo, *do_;
    if (!PyArg_ParseTuple(args, "OOO:_quantize_act_q8", &xo, &qo, &do_)) return NULL;
    Py_buffer xb, qb, db;
    if (get_buf(xo, &xb, 0, -1, 4, "x") < 0) return NULL;
    Py_ssize_t n = xb.len / 4;
    if (xb.len % 4 != 0 || n % LMP_QK != 0) {
        PyErr_Format(PyExc_ValueError, "x must hold a multiple of 32 float32 values, got %zd bytes",
                     xb.len);
        PyBuffer_Release(&xb);
        return NULL;
    }
    if (get_buf(qo, &qb, 1, n, 1, "q") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    if (get_buf(do_, &db, 1, n / LMP_QK * 4, 4, "d") < 0) {
        PyBuffer_Release(&qb);
        PyBuffer_Release(&xb);
        return NULL;
    }
    const lmp_kernels *k = lmp_active_kernels();
    Py_BEGIN_ALLOW_THREADS
    k->quantize_act_q8(xb.buf, n, qb.buf, db.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&db);
    PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    Py_RETURN_NONE;
}

PyObject *lmp_py_test_dot_f32(PyObject *self, PyObject *args) {
    PyObject *ao, *bo;
    if (!PyArg_ParseTuple(args, "OO:_dot_f32", &ao, &bo)) return NULL;
    Py_buffer ab, bb;
    if (get_buf(ao, &ab, 0, -1, 4, "a") < 0) return NULL;
    if (ab.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "a must hold float32 values");
        PyBuffer_Release(&ab);
        return NULL;
    }
    if (get_buf(bo, &bb, 0, ab.len, 4, "b") < 0) {
        PyBuffer_Release(&ab);
        return NULL;
    }
    float r = lmp_active_kernels()->dot_f32(ab.buf, bb.buf, ab.len / 4);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&ab);
    return PyFloat_FromDouble(r);
}

PyObject *lmp_py_test_axpy_f32(PyObject *self, PyObject *args) {
    float a;
    PyObject *xo, *yo;
    if (!PyArg_ParseTuple(args, "fOO:_axpy_f32", &a, &xo, &yo)) return NULL;
    Py_buffer xb, yb;
    if (get_buf(xo, &xb, 0, -1, 4, "x") < 0) return NULL;
    if (xb.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "x must hold float32 values");
        PyBuffer_Release(&xb);
        return NULL;
    }
    if (get_buf(yo, &yb, 1, xb.len, 4, "y") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    lmp_active_kernels()->axpy_f32(a, xb.buf, yb.buf, xb.len / 4);
    PyBuffer_Release(&yb);
    PyBuffer_Release(&xb);
    Py_RETURN_NONE;
}

PyObject *lmp_py_test_silu_mul_f32(PyObject *self, PyObject *args) {
    PyObject *go, *uo;
    if (!PyArg_ParseTuple(args, "OO:_silu_mul_f32", &go, &uo)) return NULL;
    Py_buffer gb, ub;
    if (get_buf(go, &gb, 1, -1, 4, "g") < 0) return NULL;
    if (gb.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "g must hold float32 values");
        PyBuffer_Release(&gb);
        return NULL;
    }
    if (get_buf(uo, &ub, 0, gb.len, 4, "u") < 0) {
        PyBuffer_Release(&gb);
        return NULL;
    }
    const lmp_kernels *k = lmp_active_kernels();
    float *g = gb.buf;
    const float *u = ub.buf;
    const int64_t n = gb.len / 4;
    if (k->silu_mul_f32) k->silu_mul_f32(g, u, n);
    else for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    PyBuffer_Release(&ub);
    PyBuffer_Release(&gb);
    Py_RETURN_NONE;
}

/* _attend_f32(q, k, v, nh, ntok, npos0, hd, ld, scale, out, per_query) -> bool: the active
 * table's block attention (kernels.h) on contiguous q and out [ntok, nh*hd] and key/value rows
 * at stride ld, either as one block or one call per query; False if the table has none. */
PyObject *lmp_py_test_attend_f32(PyObject *self, PyObject *args) {
    PyObject *qo, *ko, *vo, *oo;
    long long nh, ntok, npos0, hd, ld;
    float scale;
    int per_query;
    if (!PyArg_ParseTuple(args, "OOOLLLLLfOp:_attend_f32", &qo, &ko, &vo, &nh, &ntok, &npos0, &hd, &ld, &scale,
                          &oo, &per_query))
        return NULL;
    if (nh < 1 || ntok < 1 || npos0 < 1 || hd < 1 || ld < hd || ld > (1 << 24) || nh > 1024 || ntok > 4096 || hd > 4096 ||
        npos0 > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "bad attention shape");
        return NULL;
    }
    const lmp_kernels *k = lmp_active_kernels();
    if (!k->attend_f32) Py_RETURN_FALSE;
    const int64_t nq = nh * ntok, maxpos = npos0 + ntok - 1;
    Py_buffer qb, kb, vb, ob;
    if (get_buf(qo, &qb, 0, nq * hd * 4, 4, "q") < 0) return NULL;
    if (get_buf(ko, &kb, 0, ((maxpos - 1) * ld + hd) * 4, 4, "k") < 0) goto fail_q;
    if (get_buf(vo, &vb, 0, ((maxpos - 1) * ld + hd) * 4, 4, "v") < 0) goto fail_k;
    if (get_buf(oo, &ob, 1, nq * hd * 4, 4, "out") < 0) goto fail_v;
    float *s = malloc((size_t)(LMP_ATT_ROWS * maxpos) * sizeof(float));
    if (!s) {
        PyErr_NoMemory();
        goto fail_o;
    }
    const float *q = qb.buf, *kr = kb.buf, *vr = vb.buf;
    float *out = ob.buf;
    Py_BEGIN_ALLOW_THREADS
    if (per_query) {
        for (int64_t t = 0; t < ntok; t++)
            for (int64_t j = 0; j < nh; j++)
                k->attend_f32(q + (t * nh + j) * hd, nh * hd, 1, 1, kr, vr, ld, npos0 + t, hd, scale, s,
                              out + (t * nh + j) * hd, nh * hd);
    } else {
        k->attend_f32(q, nh * hd, nh, ntok, kr, vr, ld, npos0, hd, scale, s, out, nh * hd);
    }
    Py_END_ALLOW_THREADS
    free(s);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&qb);
    Py_RETURN_TRUE;
fail_o:
    PyBuffer_Release(&ob);
fail_v:
    PyBuffer_Release(&vb);
fail_k:
    PyBuffer_Release(&kb);
fail_q:
    PyBuffer_Release(&qb);
    return NULL;
}
