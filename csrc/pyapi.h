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

/* py_quant.c */
PyObject *lmp_py_quantize_q8_0(PyObject *self, PyObject *args, PyObject *kwargs);

/* py_model.c: the Model type */
extern PyTypeObject LmpModel_Type;

#endif
