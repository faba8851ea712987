/* eyecare._core's safetensors reader: the SafetensorsFile type over safetensors.h.
 *
 * The ec_st_file lives in a capsule, not in the SafetensorsFile itself: arrays returned by get() are
 * views into the file's mapping and hold the capsule as their base, so close() can drop the file's
 * reference at once while the mapping stays until the last view is gone. */
#include "python/py_common.h"

#include <string.h>

#include "io/json.h"
#include "io/safetensors.h"
#include "vk/tensor.h"

#define CAPSULE_NAME "eyecare._core.safetensors_mapping"

typedef struct {
    PyObject_HEAD
    PyObject *mapping; /* capsule owning the ec_st_file; NULL once closed */
    ec_st_file *f;     /* the capsule's pointer, NULL once closed */
    PyObject *path;    /* str, as given */
} StFileObject;

static PyTypeObject StFileType;

static void mapping_destroy(PyObject *capsule) { ec_st_close(PyCapsule_GetPointer(capsule, CAPSULE_NAME)); }

/* ------------------------------------------------------------------------------------------------
 * Opening and closing */

static PyObject *st_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", NULL};
    PyObject *path_bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&:SafetensorsFile", kwlist, PyUnicode_FSConverter, &path_bytes))
        return NULL;
    ec_st_file *f = NULL;
    ec_status s;
    /* Parsing a large header and scanning a directory take a while: let other threads run. */
    EC_NOGIL(s, ec_st_open(PyBytes_AS_STRING(path_bytes), &f));
    if (s) {
        Py_DECREF(path_bytes);
        return ec_py_raise(s);
    }
    StFileObject *self = (StFileObject *)type->tp_alloc(type, 0);
    if (self) self->mapping = PyCapsule_New(f, CAPSULE_NAME, mapping_destroy);
    if (!self || !self->mapping) {
        ec_st_close(f);
        Py_XDECREF(self);
        Py_DECREF(path_bytes);
        return NULL;
    }
    self->f = f; /* owned by the capsule from here on */
    self->path = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(path_bytes), PyBytes_GET_SIZE(path_bytes));
    Py_DECREF(path_bytes);
    if (!self->path) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void st_dealloc(StFileObject *self)
{
    Py_XDECREF(self->mapping);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *st_close(StFileObject *self, PyObject *unused)
{
    self->f = NULL;
    Py_CLEAR(self->mapping);
    Py_RETURN_NONE;
}

static PyObject *st_enter(StFileObject *self, PyObject *unused)
{
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *st_exit(StFileObject *self, PyObject *args) { return st_close(self, NULL); }

static int check_open(StFileObject *self)
{
    if (self->f) return 0;
    PyErr_SetString(PyExc_ValueError, "I/O operation on a closed SafetensorsFile");
    return -1;
}

/* The tensor called `name` (a str); KeyError when there is none. */
static int lookup(StFileObject *self, PyObject *name, ec_st_tensor *t)
{
    if (check_open(self)) return -1;
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "tensor names are str, not %s", Py_TYPE(name)->tp_name);
        return -1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (!s) return -1;
    ptrdiff_t i = strlen(s) == (size_t)len ? ec_st_index(self->f, s) : -1; /* names never hold a NUL */
    if (i < 0) {
        PyErr_Format(PyExc_KeyError, "%U has no tensor %R", self->path, name);
        return -1;
    }
    ec_st_at(self->f, (size_t)i, t);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Names, metadata, info */

static PyObject *utf8(const char *s) { return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "strict"); }

static PyObject *st_names(StFileObject *self, PyObject *unused)
{
    if (check_open(self)) return NULL;
    size_t n = ec_st_count(self->f);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *name = utf8(ec_st_name(self->f, i));
        if (!name) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)i, name);
    }
    return list;
}

static PyObject *st_metadata(StFileObject *self, PyObject *unused)
{
    if (check_open(self)) return NULL;
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < ec_st_metadata_count(self->f); i++) {
        const char *key, *value;
        ec_st_metadata_at(self->f, i, &key, &value);
        PyObject *k = utf8(key), *v = utf8(value);
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) Py_CLEAR(d);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *shape_tuple(const ec_st_tensor *t)
{
    PyObject *shape = PyTuple_New(t->ndim);
    for (int i = 0; shape && i < t->ndim; i++) {
        PyObject *d = PyLong_FromLongLong(t->shape[i]);
        if (!d) Py_CLEAR(shape);
        else PyTuple_SET_ITEM(shape, i, d);
    }
    return shape;
}

static PyObject *st_info(StFileObject *self, PyObject *name)
{
    ec_st_tensor t;
    if (lookup(self, name, &t)) return NULL;
    PyObject *shape = shape_tuple(&t);
    if (!shape) return NULL;
    return Py_BuildValue("(sN)", ec_st_dtype_name(t.dtype), shape);
}

static Py_ssize_t st_len(StFileObject *self)
{
    if (check_open(self)) return -1;
    return (Py_ssize_t)ec_st_count(self->f);
}

static int st_contains(StFileObject *self, PyObject *name)
{
    if (check_open(self)) return -1;
    ec_st_tensor t;
    if (lookup(self, name, &t) == 0) return 1;
    if (!PyErr_ExceptionMatches(PyExc_KeyError) && !PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
    PyErr_Clear();
    return 0;
}

static PyObject *st_iter(StFileObject *self)
{
    PyObject *names = st_names(self, NULL);
    if (!names) return NULL;
    PyObject *it = PyObject_GetIter(names);
    Py_DECREF(names);
    return it;
}

static PyObject *st_repr(StFileObject *self)
{
    if (!self->f) return PyUnicode_FromFormat("<closed SafetensorsFile %R>", self->path);
    return PyUnicode_FromFormat("<SafetensorsFile %R, %zu tensors>", self->path, ec_st_count(self->f));
}

static PyObject *st_get_path(StFileObject *self, void *unused)
{
    Py_INCREF(self->path);
    return self->path;
}

static PyObject *st_get_closed(StFileObject *self, void *unused) { return PyBool_FromLong(self->f == NULL); }

/* ------------------------------------------------------------------------------------------------
 * get(): NumPy arrays */

/* NumPy's type for a dtype, or -1. BF16 has no NumPy type: its raw bits come back as uint16. */
static int numpy_type(ec_st_dtype d)
{
    switch (d) {
    case EC_ST_BOOL: return NPY_BOOL;
    case EC_ST_U8: return NPY_UINT8;
    case EC_ST_I8: return NPY_INT8;
    case EC_ST_I16: return NPY_INT16;
    case EC_ST_U16: return NPY_UINT16;
    case EC_ST_F16: return NPY_FLOAT16;
    case EC_ST_BF16: return NPY_UINT16;
    case EC_ST_I32: return NPY_INT32;
    case EC_ST_U32: return NPY_UINT32;
    case EC_ST_F32: return NPY_FLOAT32;
    case EC_ST_I64: return NPY_INT64;
    case EC_ST_U64: return NPY_UINT64;
    case EC_ST_F64: return NPY_FLOAT64;
    case EC_ST_C64: return NPY_COMPLEX64;
    default: return -1;
    }
}

/* safetensors data is little-endian; on a big-endian host NumPy is told so. */
static PyArray_Descr *little_endian_descr(int type)
{
    PyArray_Descr *descr = PyArray_DescrFromType(type);
#if NPY_BYTE_ORDER == NPY_BIG_ENDIAN
    if (descr) {
        PyArray_Descr *le = PyArray_DescrNewByteorder(descr, NPY_LITTLE);
        Py_DECREF(descr);
        descr = le;
    }
#endif
    return descr;
}

/* A private, read-only copy, for data that is not aligned to its item size (a file written by a tool
 * that does not align tensors): NumPy could view it, but much code (torch.from_numpy, BLAS) assumes
 * alignment. */
static PyObject *aligned_copy(PyArray_Descr *descr, int ndim, npy_intp *dims, const ec_st_tensor *t, PyObject *keep)
{
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, ndim, dims, NULL, NULL, 0, NULL);
    if (!arr) return NULL;
    Py_INCREF(keep); /* the mapping must outlive the copy even if another thread closes the file */
    Py_BEGIN_ALLOW_THREADS
    memcpy(PyArray_DATA((PyArrayObject *)arr), t->data, t->nbytes);
    Py_END_ALLOW_THREADS
    Py_DECREF(keep);
    PyArray_CLEARFLAGS((PyArrayObject *)arr, NPY_ARRAY_WRITEABLE);
    return arr;
}

static PyObject *st_get(StFileObject *self, PyObject *name)
{
    ec_st_tensor t;
    if (lookup(self, name, &t)) return NULL;
    int type = numpy_type(t.dtype);
    if (type < 0)
        return ec_py_raise(ec_st_unsupported(&t, "get()", "BOOL, U8, I8, I16, U16, F16, BF16 (as uint16 bits), I32, "
                                             "U32, F32, I64, U64, F64 and C64"));
    if (t.ndim > NPY_MAXDIMS)
        return PyErr_Format(PyExc_ValueError, "tensor %R has %d dimensions; NumPy allows at most %d", name, t.ndim,
                            NPY_MAXDIMS);
    npy_intp dims[NPY_MAXDIMS];
    for (int i = 0; i < t.ndim; i++) dims[i] = (npy_intp)t.shape[i];
    PyArray_Descr *descr = little_endian_descr(type);
    if (!descr) return NULL;
    if ((uintptr_t)t.data % (ec_st_dtype_bits(t.dtype) / 8)) return aligned_copy(descr, t.ndim, dims, &t, self->mapping);
    /* flags 0: a C-ordered, read-only view (the mapping is read-only: a write would fault). */
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, t.ndim, dims, NULL, (void *)t.data, 0, NULL);
    if (!arr) return NULL;
    Py_INCREF(self->mapping);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, self->mapping) < 0) { /* steals the reference */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* ------------------------------------------------------------------------------------------------
 * to_device(): device tensors */

/* Element i of an integer tensor, widened to int64; *out_of_range for U64 values above INT64_MAX. */
static int64_t integer_at(const ec_st_tensor *t, size_t i, int *out_of_range)
{
    const unsigned char *p = (const unsigned char *)t->data;
    switch (t->dtype) {
    case EC_ST_BOOL: case EC_ST_U8: return p[i];
    case EC_ST_I8: { int8_t v; memcpy(&v, p + i, 1); return v; }
    case EC_ST_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case EC_ST_U16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case EC_ST_U32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case EC_ST_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); return v; }
    case EC_ST_U64: {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        if (v > INT64_MAX) { *out_of_range = 1; return 0; }
        return (int64_t)v;
    }
    default: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    }
}

/* Device tensors hold integers as int32 (token ids, positions): convert, refusing values that would
 * wrap. */
static ec_status integers_to_int32(const ec_st_tensor *t, int32_t **out)
{
    int32_t *dst = malloc((size_t)t->numel * sizeof *dst + 1);
    if (!dst)
        return ec_fail(EC_ERR_OOM, "out of host memory converting a %lld-element tensor to int32", (long long)t->numel);
    for (size_t i = 0; i < (size_t)t->numel; i++) {
        int too_big = 0;
        int64_t v = integer_at(t, i, &too_big);
        if (too_big || v < INT32_MIN || v > INT32_MAX) {
            char name[100];
            ec_json_printable(name, sizeof name, t->name, strlen(t->name));
            free(dst);
            return ec_fail(EC_ERR_ARG, "tensor '%s' (%s) holds a value out of the int32 range device tensors use, at "
                           "flat index %zu", name, ec_st_dtype_name(t->dtype), i);
        }
        dst[i] = (int32_t)v;
    }
    *out = dst;
    return EC_OK;
}

static ec_status create_and_upload(ec_context *ctx, ec_dtype dtype, int ndim, const int64_t *shape, const void *data,
                                   size_t nbytes, ec_tensor **out)
{
    EC_TRY(ec_tensor_create(ctx, dtype, ndim, shape, out));
    ec_status s = nbytes ? ec_tensor_upload(*out, data, nbytes) : EC_OK; /* a zero-byte copy is invalid Vulkan */
    if (s) {
        ec_tensor_destroy(*out);
        *out = NULL;
    }
    return s;
}

/* The device dtype for a tensor: float types as stored, integer types as int32 (*convert set);
 * -1 for the rest. */
static int device_dtype(ec_st_dtype d, int *convert)
{
    *convert = 0;
    switch (d) {
    case EC_ST_F32: return EC_F32;
    case EC_ST_F16: return EC_F16;
    case EC_ST_BF16: return EC_BF16;
    case EC_ST_I32: return EC_I32;
    case EC_ST_BOOL: case EC_ST_U8: case EC_ST_I8: case EC_ST_I16: case EC_ST_U16: case EC_ST_U32: case EC_ST_I64:
    case EC_ST_U64:
        *convert = 1;
        return EC_I32;
    default: return -1;
    }
}

static PyObject *st_to_device(StFileObject *self, PyObject *name)
{
    ec_st_tensor t;
    if (lookup(self, name, &t)) return NULL;
    int convert;
    int dtype = device_dtype(t.dtype, &convert);
    if (dtype < 0)
        return ec_py_raise(ec_st_unsupported(&t, "to_device()", "F32, F16 and BF16 as stored, and integer dtypes as "
                                             "int32"));
    if (t.ndim > EC_MAX_DIMS)
        return PyErr_Format(PyExc_ValueError, "tensor %R has %d dimensions; device tensors have at most %d", name, t.ndim,
                            EC_MAX_DIMS);
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    /* A device tensor has at least one dimension: a 0-d scalar becomes shape (1,), as in from_array. */
    int64_t shape[EC_MAX_DIMS] = {1};
    int ndim = t.ndim ? t.ndim : 1;
    if (t.ndim) memcpy(shape, t.shape, (size_t)t.ndim * sizeof *shape);

    PyObject *keep = self->mapping; /* t.data stays mapped even if another thread closes the file */
    Py_INCREF(keep);
    ec_status s = EC_OK;
    int32_t *converted = NULL;
    if (convert) EC_NOGIL(s, integers_to_int32(&t, &converted));
    const void *data = convert ? (const void *)converted : t.data;
    size_t nbytes = convert ? (size_t)t.numel * sizeof(int32_t) : t.nbytes;
    ec_tensor *dev = NULL;
    if (s == EC_OK) EC_DEVICE_CALL(ctx, s, create_and_upload(ctx, (ec_dtype)dtype, ndim, shape, data, nbytes, &dev));
    free(converted);
    Py_DECREF(keep);
    if (s) return ec_py_raise(s);
    return ec_py_tensor_wrap(dev);
}

/* ------------------------------------------------------------------------------------------------
 * The type and the module functions */

static PyMethodDef st_methods[] = {
    {"names", (PyCFunction)st_names, METH_NOARGS, "names() -> list of the tensor names, sorted."},
    {"metadata", (PyCFunction)st_metadata, METH_NOARGS,
     "metadata() -> dict of the header's \"__metadata__\" strings (all shards' for a sharded checkpoint)."},
    {"info", (PyCFunction)st_info, METH_O, "info(name) -> (dtype, shape): dtype as in the file ('BF16', 'F32', ...)."},
    {"get", (PyCFunction)st_get, METH_O,
     "get(name) -> a read-only NumPy array viewing the file's mapping (copied only when the data is unaligned).\n"
     "BF16 comes back as uint16 bits. Raises KeyError for an unknown name, FormatError for dtypes NumPy lacks (F8...)."},
    {"to_device", (PyCFunction)st_to_device, METH_O,
     "to_device(name) -> eyecare Tensor on the default device: F32/F16/BF16/I32 as stored, other integer dtypes\n"
     "(I64 ...) converted to int32 (ValueError if a value does not fit); a 0-d tensor becomes shape (1,)."},
    {"close", (PyCFunction)st_close, METH_NOARGS,
     "close(): release the file; arrays from get() keep its mapping alive until they are gone."},
    {"__enter__", (PyCFunction)st_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)st_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef st_getset[] = {
    {"path", (getter)st_get_path, NULL, "the path the checkpoint was opened with", NULL},
    {"closed", (getter)st_get_closed, NULL, "whether close() was called", NULL},
    {NULL},
};

static PySequenceMethods st_as_sequence = {
    .sq_length = (lenfunc)st_len,
    .sq_contains = (objobjproc)st_contains,
};

static PyTypeObject StFileType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eyecare._core.SafetensorsFile",
    .tp_basicsize = sizeof(StFileObject),
    .tp_dealloc = (destructor)st_dealloc,
    .tp_repr = (reprfunc)st_repr,
    .tp_as_sequence = &st_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SafetensorsFile(path): a safetensors checkpoint (a .safetensors file, an index .json, or a directory),\n"
              "validated completely on open; tensors are read without copying from a read-only mapping.",
    .tp_iter = (getiterfunc)st_iter,
    .tp_methods = st_methods,
    .tp_getset = st_getset,
    .tp_new = st_new,
};

static PyObject *py_safetensors_file_type(PyObject *module, PyObject *unused)
{
    if (PyType_Ready(&StFileType) < 0) return NULL;
    Py_INCREF(&StFileType);
    return (PyObject *)&StFileType;
}

static PyObject *py_safetensors_open(PyObject *module, PyObject *path)
{
    if (PyType_Ready(&StFileType) < 0) return NULL;
    return PyObject_CallOneArg((PyObject *)&StFileType, path);
}

PyMethodDef ec_py_safetensors_methods[] = {
    {"safetensors_open", py_safetensors_open, METH_O,
     "safetensors_open(path) -> SafetensorsFile (see eyecare.safetensors.open_safetensors)."},
    {"safetensors_file_type", py_safetensors_file_type, METH_NOARGS, "The SafetensorsFile type."},
    {NULL},
};
