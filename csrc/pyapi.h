/* Declarations of everything csrc/module.c registers in lmpack._core; each lives in the file
 * of its concern. Python-facing functions take and return buffer-protocol objects (no numpy C
 * API), so the extension builds without numpy headers. */
#ifndef LMPACK_PYAPI_H
#define LMPACK_PYAPI_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* crc32c.c */
PyObject *lmp_py_crc32c(PyObject *self, PyObject *args);

/* dispatch.c */
PyObject *lmp_py_cpu_features(PyObject *self, PyObject *noargs);
PyObject *lmp_py_kernel_path(PyObject *self, PyObject *noargs);
PyObject *lmp_py_set_kernel_path(PyObject *self, PyObject *args);
PyObject *lmp_py_kernel_paths(PyObject *self, PyObject *noargs);
PyObject *lmp_py_gemv_prefetch(PyObject *self, PyObject *args);
int lmp_dispatch_init(void); /* module init: resolve the table, warn on a bad LMPACK_KERNELS */
PyObject *lmp_py_test_matmul(PyObject *self, PyObject *args);
PyObject *lmp_py_test_has_bf16_act(PyObject *self, PyObject *noargs);
PyObject *lmp_py_test_quantize_act_q8(PyObject *self, PyObject *args);
PyObject *lmp_py_test_dot_f32(PyObject *self, PyObject *args);
PyObject *lmp_py_test_axpy_f32(PyObject *self, PyObject *args);
PyObject *lmp_py_test_silu_mul_f32(PyObject *self, PyObject *args);
PyObject *lmp_py_test_attend_f32(PyObject *self, PyObject *args);

/* py_quant.c */
PyObject *lmp_py_quantize_q8_0(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *lmp_py_q8_0_relayout(PyObject *self, PyObject *args);

/* finite.c */
PyObject *lmp_py_count_nonfinite(PyObject *self, PyObject *args);

/* writeback.c */
PyObject *lmp_py_write_behind(PyObject *self, PyObject *args);

/* py_model.c: the Model type */
extern PyTypeObject LmpModel_Type;

#endif
