/* The eyecare._core module: exception classes and the method tables of the py_*.c files. */
#define EC_PY_MODULE_MAIN
#include "python/py_common.h"

PyObject *ec_py_EyecareError, *ec_py_FormatError, *ec_py_NoDeviceError, *ec_py_DeviceError, *ec_py_DeviceMemoryError;

PyObject *ec_py_raise(ec_status s)
{
    PyObject *type = ec_py_EyecareError;
    switch (s) {
    case EC_ERR_ARG: case EC_ERR_LIMIT: type = PyExc_ValueError; break;
    case EC_ERR_IO: type = PyExc_OSError; break;
    case EC_ERR_FORMAT: type = ec_py_FormatError; break;
    case EC_ERR_NO_DEVICE: type = ec_py_NoDeviceError; break;
    case EC_ERR_DEVICE: type = ec_py_DeviceError; break;
    case EC_ERR_OOM: type = ec_py_DeviceMemoryError; break;
    case EC_ERR_INTERRUPTED: type = PyExc_KeyboardInterrupt; break;
    default: break;
    }
    /* A message cut at the buffer's end may split a UTF-8 character: decode leniently. */
    const char *msg = ec_last_error();
    PyObject *text = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
    if (!text) return NULL;
    if (s != EC_ERR_OOM) {
        PyErr_SetObject(type, text);
        Py_DECREF(text);
        return NULL;
    }
    /* DeviceMemoryError carries the figures of its message as numbers: .needed and .available (bytes), None when the
     * failure was not an allocation (the driver failing while executing work, host memory). */
    uint64_t needed, available;
    int known = ec_oom_figures(&needed, &available);
    PyObject *exc = PyObject_CallOneArg(type, text);
    Py_DECREF(text);
    if (!exc) return NULL;
    PyObject *n = known ? PyLong_FromUnsignedLongLong(needed) : (Py_INCREF(Py_None), Py_None);
    PyObject *a = known ? PyLong_FromUnsignedLongLong(available) : (Py_INCREF(Py_None), Py_None);
    if (n && a && PyObject_SetAttrString(exc, "needed", n) == 0 && PyObject_SetAttrString(exc, "available", a) == 0)
        PyErr_SetObject(type, exc);
    Py_XDECREF(n);
    Py_XDECREF(a);
    Py_DECREF(exc);
    return NULL;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "eyecare._core",
                                    "The Vulkan core of eyecare (C). Use the eyecare package, not this module.", -1, NULL};

static int add_methods(PyObject *m, PyMethodDef *table)
{
    for (; table->ml_name; table++) {
        PyObject *f = PyCFunction_NewEx(table, NULL, PyModule_GetNameObject(m));
        if (!f || PyModule_AddObject(m, table->ml_name, f) < 0) return -1;
    }
    return 0;
}

static PyObject *new_error(PyObject *m, const char *name, PyObject *bases, const char *doc)
{
    char qualified[128];
    snprintf(qualified, sizeof qualified, "eyecare.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(qualified, doc, bases, NULL);
    if (e) { Py_INCREF(e); PyModule_AddObject(m, name, e); }
    return e;
}

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    ec_py_EyecareError = new_error(m, "EyecareError", NULL, "Base class of the errors eyecare raises.");
    if (!ec_py_EyecareError) return NULL;
    ec_py_FormatError = new_error(m, "FormatError", PyTuple_Pack(2, ec_py_EyecareError, PyExc_ValueError),
                                  "A file (checkpoint, safetensors, image) is invalid or hostile.");
    ec_py_NoDeviceError = new_error(m, "NoDeviceError", PyTuple_Pack(2, ec_py_EyecareError, PyExc_RuntimeError),
                                    "No usable Vulkan driver or device.");
    ec_py_DeviceError = new_error(m, "DeviceError", PyTuple_Pack(2, ec_py_EyecareError, PyExc_RuntimeError),
                                  "The Vulkan device reported a failure.");
    ec_py_DeviceMemoryError = new_error(m, "DeviceMemoryError", PyTuple_Pack(2, ec_py_EyecareError, PyExc_MemoryError),
                                        "Out of device memory, or over the EYECARE_MAX_DEVICE_MEMORY budget.");
    if (!ec_py_FormatError || !ec_py_NoDeviceError || !ec_py_DeviceError || !ec_py_DeviceMemoryError) return NULL;
    if (ec_py_tensor_type_init(m) < 0) return NULL;
    PyMethodDef *tables[] = {ec_py_device_methods, ec_py_tensor_methods, ec_py_ops_methods, ec_py_safetensors_methods,
                             ec_py_image_methods, ec_py_vision_methods, ec_py_decoder_methods, ec_py_probe_methods};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
        if (add_methods(m, tables[i]) < 0) return NULL;
    return m;
}
