/* Shared by the Python binding files (py_*.c): the NumPy C API set-up and the mapping from the core's
 * ec_status codes to Python exceptions. Each py_*.c file exports one PyMethodDef table that
 * py_module.c puts into the module. */
#ifndef EC_PY_COMMON_H
#define EC_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL eyecare_ARRAY_API
#ifndef EC_PY_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "errors.h"

/* The exception classes, created in py_module.c (all derive from eyecare.EyecareError):
 * FormatError (also a ValueError), NoDeviceError, DeviceError, DeviceMemoryError (also a MemoryError). */
extern PyObject *ec_py_EyecareError, *ec_py_FormatError, *ec_py_NoDeviceError, *ec_py_DeviceError,
    *ec_py_DeviceMemoryError;

/* Raises the Python exception for the core's last error and returns NULL. */
PyObject *ec_py_raise(ec_status s);

/* Runs `call` (an expression yielding ec_status) with the GIL released. */
#define EC_NOGIL(status_var, call) \
    do { Py_BEGIN_ALLOW_THREADS status_var = (call); Py_END_ALLOW_THREADS } while (0)

/* The default context (created on first use from EYECARE_DEVICE, EYECARE_VALIDATE,
 * EYECARE_MAX_DEVICE_MEMORY); NULL with a Python exception set when there is no usable device. */
struct ec_context;
struct ec_context *ec_py_context(void);
/* Wraps a device tensor in an eyecare._core.Tensor, which owns it from then on (NULL on error). */
PyObject *ec_py_tensor_wrap(void *tensor);

/* Method tables are weak while the binding files are being written in parallel; a missing table is skipped. */
extern PyMethodDef ec_py_device_methods[] __attribute__((weak));      /* py_device.c: devices(), context */
extern PyMethodDef ec_py_tensor_methods[] __attribute__((weak));      /* py_tensor.c: the Tensor type's module functions */
extern PyMethodDef ec_py_ops_methods[] __attribute__((weak));         /* py_ops.c: one function per op, for tests */
extern PyMethodDef ec_py_safetensors_methods[] __attribute__((weak)); /* py_safetensors.c */
extern PyMethodDef ec_py_image_methods[] __attribute__((weak));       /* py_image.c */

#endif
