/* lmpack._core: the module object and its method table; the functions live beside their concern. */
#include "forward.h"
#include "pyapi.h"

static PyMethodDef core_methods[] = {
    {"crc32c", lmp_py_crc32c, METH_VARARGS,
     "crc32c(buffer, crc=0) -> int: CRC-32C (Castagnoli) of a bytes-like object, continuing from crc."},
    {"cpu_features", lmp_py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict[str, bool]: instruction-set features detected on this CPU."},
    {"kernel_path", lmp_py_kernel_path, METH_NOARGS,
     "kernel_path() -> str: name of the active kernel table (scalar, avx2, avx512, neon)."},
    {"kernel_paths", lmp_py_kernel_paths, METH_NOARGS,
     "kernel_paths() -> list[str]: kernel tables this CPU can run, best last."},
    {"set_kernel_path", lmp_py_set_kernel_path, METH_VARARGS,
     "set_kernel_path(name) -> None: force a kernel table (ValueError if this CPU cannot run it)."},
    {"quantize_q8_0", (PyCFunction)(void (*)(void))lmp_py_quantize_q8_0, METH_VARARGS | METH_KEYWORDS,
     "quantize_q8_0(src, src_dtype, quants_out, scales_out, threads=1) -> None: ggml-exact Q8_0."},
    {"count_nonfinite", lmp_py_count_nonfinite, METH_VARARGS,
     "count_nonfinite(buffer, dtype) -> int: NaN/Inf elements of an f32, f16 or bf16 (bits) buffer."},
    {"q8_0_relayout", lmp_py_q8_0_relayout, METH_VARARGS,
     "q8_0_relayout(quants, scales, blocks, to_blocks) -> None: Q8_0 planes <-> ggml 34-byte blocks."},
    {"write_behind", lmp_py_write_behind, METH_VARARGS,
     "write_behind(fd, offset, nbytes, wait) -> bool: start writing the range to disk (and, if wait,\n"
     "wait for it); False where the platform cannot, so the caller falls back to fdatasync."},
    {"_gemv_prefetch", lmp_py_gemv_prefetch, METH_VARARGS,
     "_gemv_prefetch([name]) -> str: benchmark hook, the GEMV prefetch profile (an unknown name's error lists them)."},
    {"_has_bf16_act", lmp_py_test_has_bf16_act, METH_NOARGS,
     "_has_bf16_act(): whether the active kernel table runs the bf16-activation matmul on this CPU."},
    {"_matmul", lmp_py_test_matmul, METH_VARARGS,
     "_matmul(dtype, w, w_scales, rows, cols, x, x_scales, ntok, y, r0, r1): test hook, one matmul."},
    {"_quantize_act_q8", lmp_py_test_quantize_act_q8, METH_VARARGS,
     "_quantize_act_q8(x_f32, q_out, d_out): test hook, the activation quantizer."},
    {"_dot_f32", lmp_py_test_dot_f32, METH_VARARGS, "_dot_f32(a, b) -> float: test hook."},
    {"_axpy_f32", lmp_py_test_axpy_f32, METH_VARARGS, "_axpy_f32(a, x, y): test hook, y += a*x."},
    {"_silu_mul_f32", lmp_py_test_silu_mul_f32, METH_VARARGS,
     "_silu_mul_f32(g, u): test hook, g = silu(g) * u (the scalar loop where the table has none)."},
    {"_attend_f32", lmp_py_test_attend_f32, METH_VARARGS,
     "_attend_f32(q, k, v, nh, ntok, npos0, hd, ld, scale, out, per_query) -> bool: test hook, the\n"
     "table's block attention as one block or query by query (False: the table has none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "lmpack._core",
    "C core of lmpack: kernels behind one dispatch table, the Llama forward pass, CRC-32C.",
    -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    if (lmp_dispatch_init() < 0) return NULL;
    if (PyType_Ready(&LmpModel_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m) return NULL;
    Py_INCREF(&LmpModel_Type);
    if (PyModule_AddObject(m, "Model", (PyObject *)&LmpModel_Type) < 0) {
        Py_DECREF(&LmpModel_Type);
        Py_DECREF(m);
        return NULL;
    }
    /* tokens per pass through the layers: what a ring cache can step back (lmp_can_start) */
    if (PyModule_AddIntConstant(m, "CHUNK", LMP_CHUNK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* softmax rows of scratch per thread and context position (run_state_bytes sizes them) */
    if (PyModule_AddIntConstant(m, "ATT_ROWS", LMP_ATT_ROWS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
