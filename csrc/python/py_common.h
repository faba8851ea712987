/* Shared by the Python binding files (py_*.c): the NumPy C API set-up, the mapping from the core's
 * ec_status codes to Python exceptions, and the default device context. Each py_*.c file exports one
 * PyMethodDef table that py_module.c puts into the module. */
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
#include "vk/vk_context.h"

/* The exception classes, created in py_module.c (all derive from eyecare.EyecareError):
 * FormatError (also a ValueError), NoDeviceError, DeviceError, DeviceMemoryError (also a MemoryError). */
extern PyObject *ec_py_EyecareError, *ec_py_FormatError, *ec_py_NoDeviceError, *ec_py_DeviceError,
    *ec_py_DeviceMemoryError;

/* Raises the Python exception for the core's last error and returns NULL. */
PyObject *ec_py_raise(ec_status s);

/* Runs `call` (an expression yielding ec_status) with the GIL released. */
#define EC_NOGIL(status_var, call) \
    do { Py_BEGIN_ALLOW_THREADS status_var = (call); Py_END_ALLOW_THREADS } while (0)

/* Runs `work` with the GIL released and the context locked, so that threads take turns on the device;
 * on failure whatever was recorded is dropped. */
#define EC_DEVICE_CALL(ctx, status_var, work)        \
    do {                                              \
        Py_BEGIN_ALLOW_THREADS                        \
        pthread_mutex_lock(&(ctx)->lock);             \
        status_var = (work);                          \
        if (status_var) ec_batch_abort(ctx);          \
        pthread_mutex_unlock(&(ctx)->lock);           \
        Py_END_ALLOW_THREADS                          \
    } while (0)

/* Takes the context lock from a thread holding the GIL. While another thread's device work holds the
 * lock it waits with the GIL released, and it never holds the lock while waiting for the GIL, so the
 * two locks cannot deadlock. Every GIL holder that needs the context lock goes through here. */
void ec_py_lock(ec_context *ctx);

/* The default context (created on first use from EYECARE_DEVICE, EYECARE_VALIDATE,
 * EYECARE_MAX_DEVICE_MEMORY); NULL with a Python exception set when there is no usable device. */
ec_context *ec_py_context(void);

/* Wraps a device tensor (ec_tensor *) in an eyecare._core.Tensor, which owns it from then on. */
PyObject *ec_py_tensor_wrap(void *tensor);
/* The ec_tensor * inside an eyecare._core.Tensor (NULL with TypeError/ValueError set otherwise);
 * Py_None gives NULL without an error when allow_none. */
void *ec_py_tensor_get(PyObject *obj, int allow_none);
int ec_py_tensor_type_init(PyObject *module); /* adds eyecare._core.Tensor */

/* The method tables of the binding files, one per concern; py_module.c puts them all into the module. */
extern PyMethodDef ec_py_device_methods[];      /* py_device.c: devices, context */
extern PyMethodDef ec_py_probe_methods[];       /* py_probe.c: host read bandwidth */
extern PyMethodDef ec_py_tensor_methods[];      /* py_tensor.c: creating tensors */
extern PyMethodDef ec_py_ops_methods[];         /* py_ops.c: one function per op, for tests */
extern PyMethodDef ec_py_safetensors_methods[]; /* py_safetensors.c */
extern PyMethodDef ec_py_image_methods[];       /* py_image.c */
extern PyMethodDef ec_py_vision_methods[];      /* py_vision.c: the SigLIP tower + connector */
extern PyMethodDef ec_py_decoder_methods[];     /* py_decoder.c: Phi-3 / Qwen2 */

#endif
