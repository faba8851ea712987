/* eyecare._core.Tensor: a device tensor owned by a Python object (freed explicitly with free() or when
 * garbage-collected). Conversions between NumPy dtypes live in eyecare/tensor.py; this file takes
 * C-contiguous arrays of the exact item size. */
#include "python/py_common.h"

#include "vk/tensor.h"

typedef struct {
    PyObject_HEAD
    ec_tensor *t;
} TensorObject;

static PyTypeObject TensorType;

static void tensor_release(TensorObject *self)
{
    if (!self->t) return;
    ec_context *ctx = self->t->ctx;
    /* Under the lock, so that an op that checked this tensor (under the lock too) runs to completion
     * before the memory goes. */
    ec_py_lock(ctx);
    ec_tensor_destroy(self->t);
    self->t = NULL;
    pthread_mutex_unlock(&ctx->lock);
}

static void tensor_dealloc(TensorObject *self)
{
    tensor_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *ec_py_tensor_wrap(void *tensor)
{
    TensorObject *o = PyObject_New(TensorObject, &TensorType);
    if (!o) { ec_tensor_destroy(tensor); return NULL; }
    o->t = tensor;
    return (PyObject *)o;
}

void *ec_py_tensor_get(PyObject *obj, int allow_none)
{
    if (allow_none && obj == Py_None) return NULL;
    if (!PyObject_TypeCheck(obj, &TensorType)) {
        PyErr_Format(PyExc_TypeError, "expected an eyecare Tensor, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    TensorObject *o = (TensorObject *)obj;
    if (!o->t) PyErr_SetString(PyExc_ValueError, "the tensor has been freed");
    return o->t;
}

static int npy_type_of(ec_dtype d)
{
    switch (d) {
    case EC_F32: return NPY_FLOAT32;
    case EC_F16: return NPY_FLOAT16;
    case EC_BF16: return NPY_UINT16; /* NumPy has no bfloat16: the raw bits */
    default: return NPY_INT32;
    }
}

static int parse_dtype(const char *name, ec_dtype *out)
{
    const char *names[] = {"float32", "float16", "bfloat16", "int32"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) { *out = (ec_dtype)i; return 0; }
    PyErr_Format(PyExc_ValueError, "unknown dtype '%s' (float32, float16, bfloat16 or int32)", name);
    return -1;
}

static int parse_shape(PyObject *seq, int *ndim, int64_t *shape)
{
    PyObject *fast = PySequence_Fast(seq, "shape must be a sequence of ints");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > EC_MAX_DIMS) { Py_DECREF(fast); PyErr_Format(PyExc_ValueError, "tensors have 1 to %d dimensions", EC_MAX_DIMS); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        shape[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (shape[i] == -1 && PyErr_Occurred()) { Py_DECREF(fast); return -1; }
    }
    *ndim = (int)n;
    Py_DECREF(fast);
    return 0;
}

/* _core.empty(shape, dtype) -> Tensor with undefined contents */
static PyObject *py_empty(PyObject *self, PyObject *args)
{
    PyObject *shape_obj;
    const char *dtype_name = "float32";
    if (!PyArg_ParseTuple(args, "O|s", &shape_obj, &dtype_name)) return NULL;
    int ndim; int64_t shape[EC_MAX_DIMS]; ec_dtype dtype;
    if (parse_shape(shape_obj, &ndim, shape) || parse_dtype(dtype_name, &dtype)) return NULL;
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    ec_tensor *t = NULL;
    ec_status s;
    EC_DEVICE_CALL(ctx, s, ec_tensor_create(ctx, dtype, ndim, shape, &t));
    if (s) return ec_py_raise(s);
    return ec_py_tensor_wrap(t);
}

static ec_status create_and_upload(ec_context *ctx, ec_dtype dtype, int ndim, const int64_t *shape, const void *data,
                                   size_t nbytes, ec_tensor **out)
{
    EC_TRY(ec_tensor_create(ctx, dtype, ndim, shape, out));
    ec_status s = ec_tensor_upload(*out, data, nbytes);
    if (s) { ec_tensor_destroy(*out); *out = NULL; }
    return s;
}

/* _core.from_array(array, dtype) -> Tensor; the array must be C-contiguous with the dtype's item size */
static PyObject *py_from_array(PyObject *self, PyObject *args)
{
    PyObject *obj;
    const char *dtype_name;
    if (!PyArg_ParseTuple(args, "Os", &obj, &dtype_name)) return NULL;
    ec_dtype dtype;
    if (parse_dtype(dtype_name, &dtype)) return NULL;
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(obj, npy_type_of(dtype), 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!arr) return NULL;
    int ndim = PyArray_NDIM(arr);
    int64_t shape[EC_MAX_DIMS] = {1};
    if (ndim > EC_MAX_DIMS) { Py_DECREF(arr); return PyErr_Format(PyExc_ValueError, "tensors have at most %d dimensions", EC_MAX_DIMS); }
    for (int i = 0; i < ndim; i++) shape[i] = PyArray_DIM(arr, i);
    ec_context *ctx = ec_py_context();
    if (!ctx) { Py_DECREF(arr); return NULL; }
    ec_tensor *t = NULL;
    ec_status s;
    const void *data = PyArray_DATA(arr);
    size_t nbytes = (size_t)PyArray_NBYTES(arr);
    EC_DEVICE_CALL(ctx, s, create_and_upload(ctx, dtype, ndim ? ndim : 1, shape, data, nbytes, &t));
    Py_DECREF(arr);
    if (s) return ec_py_raise(s);
    return ec_py_tensor_wrap(t);
}

static ec_status create_quantized(ec_context *ctx, ec_dtype dtype, const int64_t *shape, const void *data, size_t data_bytes,
                                  const void *scales, size_t scale_bytes, ec_tensor **out)
{
    EC_TRY(ec_tensor_create(ctx, dtype, 2, shape, out));
    ec_status s = ec_tensor_upload_quantized(*out, data, data_bytes, scales, scale_bytes);
    if (s) { ec_tensor_destroy(*out); *out = NULL; }
    return s;
}

/* _core.quantized_tensor(packed, scales, dtype, k) -> Tensor [N, k] of dtype 'int8' or 'int4': packed is uint8
 * [N, blocks * 32] (int8) or [N, blocks * 16] (int4), scales float16 [N, blocks], blocks = ceil(k / 32). */
static PyObject *py_quantized_tensor(PyObject *self, PyObject *args)
{
    PyObject *data_obj, *scale_obj;
    const char *dtype_name;
    long long k;
    if (!PyArg_ParseTuple(args, "OOsL", &data_obj, &scale_obj, &dtype_name, &k)) return NULL;
    ec_dtype dtype;
    if (strcmp(dtype_name, "int8") == 0) dtype = EC_Q8;
    else if (strcmp(dtype_name, "int4") == 0) dtype = EC_Q4;
    else return PyErr_Format(PyExc_ValueError, "quantized dtype '%s' is not 'int8' or 'int4'", dtype_name);
    PyArrayObject *data = (PyArrayObject *)PyArray_FROMANY(data_obj, NPY_UINT8, 2, 2, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!data) return NULL;
    PyArrayObject *scales = (PyArrayObject *)PyArray_FROMANY(scale_obj, NPY_FLOAT16, 2, 2, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!scales) { Py_DECREF(data); return NULL; }
    int64_t n = PyArray_DIM(data, 0), blocks = k > 0 ? ec_qblocks(k) : 0;
    int64_t per_block = dtype == EC_Q4 ? EC_QBLOCK / 2 : EC_QBLOCK;
    if (k < 1 || n < 1 || PyArray_DIM(data, 1) != blocks * per_block || PyArray_DIM(scales, 0) != n || PyArray_DIM(scales, 1) != blocks) {
        PyErr_Format(PyExc_ValueError, "a %s weight of %lld columns is packed as [N, %lld] uint8 with [N, %lld] float16 scales "
                     "(N >= 1), not [%lld, %lld] and [%lld, %lld]", dtype_name, k, (long long)(blocks * per_block), (long long)blocks,
                     (long long)n, (long long)PyArray_DIM(data, 1), (long long)PyArray_DIM(scales, 0), (long long)PyArray_DIM(scales, 1));
        Py_DECREF(data); Py_DECREF(scales);
        return NULL;
    }
    ec_context *ctx = ec_py_context();
    if (!ctx) { Py_DECREF(data); Py_DECREF(scales); return NULL; }
    int64_t shape[2] = {n, (int64_t)k};
    ec_tensor *t = NULL;
    ec_status s;
    const void *dp = PyArray_DATA(data), *sp = PyArray_DATA(scales);
    size_t db = (size_t)PyArray_NBYTES(data), sb = (size_t)PyArray_NBYTES(scales);
    EC_DEVICE_CALL(ctx, s, create_quantized(ctx, dtype, shape, dp, db, sp, sb, &t));
    Py_DECREF(data);
    Py_DECREF(scales);
    if (s) return ec_py_raise(s);
    return ec_py_tensor_wrap(t);
}

/* Tensor.packed() -> (uint8 packed integers, float16 scales) of a quantized tensor, read back from the device. */
static PyObject *tensor_packed(TensorObject *self, PyObject *unused)
{
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    if (!t) return NULL;
    if (!ec_dtype_quantized(t->dtype))
        return PyErr_Format(PyExc_TypeError, "packed() is for int8/int4 tensors; this one is %s (use numpy())", ec_dtype_name(t->dtype));
    int64_t blocks = ec_qblocks(t->shape[1]);
    npy_intp ddims[2] = {(npy_intp)t->shape[0], (npy_intp)(blocks * (t->dtype == EC_Q4 ? EC_QBLOCK / 2 : EC_QBLOCK))};
    npy_intp sdims[2] = {(npy_intp)t->shape[0], (npy_intp)blocks};
    PyArrayObject *data = (PyArrayObject *)PyArray_SimpleNew(2, ddims, NPY_UINT8);
    PyArrayObject *scales = data ? (PyArrayObject *)PyArray_SimpleNew(2, sdims, NPY_FLOAT16) : NULL;
    if (!scales) { Py_XDECREF(data); return NULL; }
    ec_status s;
    void *dp = PyArray_DATA(data), *sp = PyArray_DATA(scales);
    size_t db = (size_t)PyArray_NBYTES(data), sb = (size_t)PyArray_NBYTES(scales);
    EC_DEVICE_CALL(t->ctx, s, ec_tensor_download_quantized(t, dp, db, sp, sb));
    if (s) { Py_DECREF(data); Py_DECREF(scales); return ec_py_raise(s); }
    return Py_BuildValue("(NN)", data, scales);
}

static PyObject *tensor_numpy(TensorObject *self, PyObject *unused)
{
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    if (!t) return NULL;
    if (ec_dtype_quantized(t->dtype))
        return PyErr_Format(PyExc_TypeError, "an %s tensor is packed: packed() gives its integers and scales", ec_dtype_name(t->dtype));
    npy_intp dims[EC_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    PyArrayObject *arr = (PyArrayObject *)PyArray_SimpleNew(t->ndim, dims, npy_type_of(t->dtype));
    if (!arr) return NULL;
    ec_status s;
    void *data = PyArray_DATA(arr);
    EC_DEVICE_CALL(t->ctx, s, ec_tensor_download(t, data, t->nbytes));
    if (s) { Py_DECREF(arr); return ec_py_raise(s); }
    return (PyObject *)arr;
}

static PyObject *tensor_write(TensorObject *self, PyObject *args)
{
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    if (!t) return NULL;
    if (ec_dtype_quantized(t->dtype))
        return PyErr_Format(PyExc_TypeError, "an %s tensor is made whole by eyecare._core.quantized_tensor, not written", ec_dtype_name(t->dtype));
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(obj, npy_type_of(t->dtype), 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!arr) return NULL;
    ec_status s;
    const void *data = PyArray_DATA(arr);
    size_t nbytes = (size_t)PyArray_NBYTES(arr);
    EC_DEVICE_CALL(t->ctx, s, ec_tensor_upload(t, data, nbytes));
    Py_DECREF(arr);
    if (s) return ec_py_raise(s);
    Py_RETURN_NONE;
}

static PyObject *tensor_free(TensorObject *self, PyObject *unused)
{
    tensor_release(self);
    Py_RETURN_NONE;
}

static PyObject *tensor_shape(TensorObject *self, void *closure)
{
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    if (!t) return NULL;
    PyObject *tuple = PyTuple_New(t->ndim);
    for (int i = 0; tuple && i < t->ndim; i++) PyTuple_SET_ITEM(tuple, i, PyLong_FromLongLong(t->shape[i]));
    return tuple;
}

static PyObject *tensor_dtype(TensorObject *self, void *closure)
{
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    return t ? PyUnicode_FromString(ec_dtype_name(t->dtype)) : NULL;
}

static PyObject *tensor_nbytes(TensorObject *self, void *closure)
{
    ec_tensor *t = ec_py_tensor_get((PyObject *)self, 0);
    return t ? PyLong_FromSize_t(t->nbytes) : NULL;
}

static PyObject *tensor_is_freed(TensorObject *self, void *closure) { return PyBool_FromLong(self->t == NULL); }

static PyObject *tensor_repr(TensorObject *self)
{
    if (!self->t) return PyUnicode_FromString("<eyecare Tensor (freed)>");
    ec_tensor *t = self->t;
    char dims[128] = "";
    size_t used = 0;
    for (int i = 0; i < t->ndim; i++)
        used += snprintf(dims + used, sizeof dims - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    return PyUnicode_FromFormat("<eyecare Tensor shape=(%s) dtype=%s>", dims, ec_dtype_name(t->dtype));
}

static PyMethodDef tensor_methods[] = {
    {"numpy", (PyCFunction)tensor_numpy, METH_NOARGS, "Copy the tensor to a new NumPy array (bfloat16 as uint16 bits)."},
    {"write", (PyCFunction)tensor_write, METH_VARARGS, "write(array): overwrite the contents (same size)."},
    {"packed", (PyCFunction)tensor_packed, METH_NOARGS, "packed() -> (uint8 integers, float16 scales) of an int8/int4 tensor."},
    {"free", (PyCFunction)tensor_free, METH_NOARGS, "Release the device memory now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tensor_getset[] = {
    {"shape", (getter)tensor_shape, NULL, "shape tuple", NULL},
    {"dtype", (getter)tensor_dtype, NULL, "'float32', 'float16', 'bfloat16', 'int32', or 'int8' / 'int4' (block-quantized weights)", NULL},
    {"nbytes", (getter)tensor_nbytes, NULL, "bytes of data", NULL},
    {"freed", (getter)tensor_is_freed, NULL, "True once free() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eyecare._core.Tensor",
    .tp_basicsize = sizeof(TensorObject),
    .tp_dealloc = (destructor)tensor_dealloc,
    .tp_repr = (reprfunc)tensor_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A tensor in device memory. Create with eyecare.tensor(array) or eyecare.empty(shape).",
    .tp_methods = tensor_methods,
    .tp_getset = tensor_getset,
};

int ec_py_tensor_type_init(PyObject *module)
{
    if (PyType_Ready(&TensorType) < 0) return -1;
    Py_INCREF(&TensorType);
    return PyModule_AddObject(module, "Tensor", (PyObject *)&TensorType);
}

PyMethodDef ec_py_tensor_methods[] = {
    {"empty", py_empty, METH_VARARGS, "empty(shape, dtype='float32') -> Tensor"},
    {"from_array", py_from_array, METH_VARARGS, "from_array(array, dtype) -> Tensor (C-contiguous, exact item size)"},
    {"quantized_tensor", py_quantized_tensor, METH_VARARGS,
     "quantized_tensor(packed, scales, dtype, k) -> Tensor [N, k] of dtype 'int8' or 'int4' (eyecare/quantize.py makes both parts)"},
    {NULL, NULL, 0, NULL},
};
