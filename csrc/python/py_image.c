/* Python binding of the image functions (image.h): decode_image, resize_bicubic, make_views. The GIL is released
 * while pixels are decoded or resampled. */
#include "python/py_common.h"

#include "io/image.h"

#define PIXELS_CAPSULE "eyecare._core.image_pixels"

/* max_pixels: a positive integer (an integral float such as 64e6 is accepted too). */
static int max_pixels_converter(PyObject *obj, void *out)
{
    double d;
    if (PyFloat_Check(obj)) {
        d = PyFloat_AsDouble(obj);
        if (!(d >= 1.0 && d <= 1.8e19) || d != (double)(unsigned long long)d) {
            PyErr_Format(PyExc_ValueError, "max_pixels must be a positive whole number, got %R", obj);
            return 0;
        }
        *(uint64_t *)out = (uint64_t)d;
        return 1;
    }
    PyObject *index = PyNumber_Index(obj);
    if (!index) return 0;
    unsigned long long v = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "max_pixels must be a positive integer, got %R", obj);
        return 0;
    }
    if (v == 0) {
        PyErr_SetString(PyExc_ValueError, "max_pixels must be a positive integer, got 0");
        return 0;
    }
    *(uint64_t *)out = v;
    return 1;
}

static void pixels_capsule_free(PyObject *capsule)
{
    ec_image img = {.rgb = PyCapsule_GetPointer(capsule, PIXELS_CAPSULE)};
    ec_image_free(&img);
}

/* Hands a decoded image to NumPy without copying: the array's base is a capsule that frees the pixels. */
static PyObject *image_to_array(ec_image *img)
{
    npy_intp dims[3] = {img->height, img->width, 3};
    PyObject *arr = PyArray_SimpleNewFromData(3, dims, NPY_UINT8, img->rgb);
    if (!arr) {
        ec_image_free(img);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(img->rgb, PIXELS_CAPSULE, pixels_capsule_free);
    if (!capsule) {
        Py_DECREF(arr);
        ec_image_free(img);
        return NULL;
    }
    img->rgb = NULL; /* the capsule owns it now */
    if (PyArray_SetBaseObject((PyArrayObject *)arr, capsule) < 0) { /* steals capsule, which frees the pixels */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* str and os.PathLike are paths; bytes, bytearray, memoryview and other buffers hold the encoded image. */
static int is_path(PyObject *obj)
{
    if (PyUnicode_Check(obj)) return 1;
    if (PyBytes_Check(obj) || PyByteArray_Check(obj) || PyMemoryView_Check(obj)) return 0;
    return PyObject_HasAttrString(obj, "__fspath__");
}

static PyObject *decode_path(PyObject *source, uint64_t max_pixels)
{
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(source, &encoded)) return NULL;
    ec_image img = {0};
    ec_status s;
    const char *path = PyBytes_AS_STRING(encoded);
    EC_NOGIL(s, ec_image_load(path, max_pixels, &img));
    Py_DECREF(encoded);
    if (s != EC_OK) return ec_py_raise(s);
    return image_to_array(&img);
}

static PyObject *decode_buffer(PyObject *source, uint64_t max_pixels)
{
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0) return NULL;
    ec_image img = {0};
    ec_status s;
    EC_NOGIL(s, ec_image_decode(view.buf, (size_t)view.len, max_pixels, &img));
    PyBuffer_Release(&view);
    if (s != EC_OK) return ec_py_raise(s);
    return image_to_array(&img);
}

static PyObject *py_decode_image(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"source", "max_pixels", NULL};
    PyObject *source;
    uint64_t max_pixels = EC_IMAGE_DEFAULT_MAX_PIXELS;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O&:decode_image", kwlist, &source, max_pixels_converter,
                                     &max_pixels))
        return NULL;
    if (is_path(source)) return decode_path(source, max_pixels);
    if (PyObject_CheckBuffer(source)) return decode_buffer(source, max_pixels);
    return PyErr_Format(PyExc_TypeError, "decode_image: expected a path (str or os.PathLike) or bytes, got %s",
                        Py_TYPE(source)->tp_name);
}

/* An image argument as a C-contiguous uint8 array of shape (H, W, 3); NULL with an exception otherwise. */
static PyArrayObject *rgb_array(PyObject *obj, const char *fn)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_UINT8, NPY_ARRAY_IN_ARRAY);
    if (!arr) return NULL;
    if (PyArray_NDIM(arr) != 3 || PyArray_DIM(arr, 2) != 3 || PyArray_DIM(arr, 0) < 1 || PyArray_DIM(arr, 1) < 1 ||
        PyArray_DIM(arr, 0) > EC_IMAGE_MAX_SIDE || PyArray_DIM(arr, 1) > EC_IMAGE_MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "%s: expected a uint8 image of shape (height, width, 3) with sides 1..%d", fn,
                     EC_IMAGE_MAX_SIDE);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *py_resize_bicubic(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"image", "width", "height", NULL};
    PyObject *obj;
    int width, height;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oii:resize_bicubic", kwlist, &obj, &width, &height)) return NULL;
    if (width < 1 || height < 1 || width > EC_IMAGE_MAX_SIDE || height > EC_IMAGE_MAX_SIDE)
        return PyErr_Format(PyExc_ValueError, "resize_bicubic: size %dx%d is out of range (1..%d per side)", width,
                            height, EC_IMAGE_MAX_SIDE);
    PyArrayObject *src = rgb_array(obj, "resize_bicubic");
    if (!src) return NULL;
    npy_intp dims[3] = {height, width, 3};
    PyArrayObject *dst = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_UINT8);
    if (!dst) {
        Py_DECREF(src);
        return NULL;
    }
    int src_w = (int)PyArray_DIM(src, 1), src_h = (int)PyArray_DIM(src, 0);
    ec_status s;
    EC_NOGIL(s, ec_image_resize_bicubic(PyArray_DATA(src), src_w, src_h, (size_t)src_w * 3, PyArray_DATA(dst), width,
                                        height, (size_t)width * 3));
    Py_DECREF(src);
    if (s != EC_OK) {
        Py_DECREF(dst);
        return ec_py_raise(s);
    }
    return (PyObject *)dst;
}

static PyObject *py_make_views(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"image", "tile_size", "grid", "pad_color", "mean", "std", NULL};
    PyObject *obj;
    ec_view_params p = {.mean = {0.5f, 0.5f, 0.5f}, .std = {0.5f, 0.5f, 0.5f}};
    int pad[3] = {0, 0, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oi(ii)|(iii)(fff)(fff):make_views", kwlist, &obj, &p.tile_size,
                                     &p.rows, &p.cols, &pad[0], &pad[1], &pad[2], &p.mean[0], &p.mean[1], &p.mean[2],
                                     &p.std[0], &p.std[1], &p.std[2]))
        return NULL;
    for (int c = 0; c < 3; c++) {
        if (pad[c] < 0 || pad[c] > 255)
            return PyErr_Format(PyExc_ValueError, "make_views: pad_color values must be 0..255, got %d", pad[c]);
        p.pad_color[c] = (uint8_t)pad[c];
    }
    size_t n;
    ec_status s = ec_image_views_size(&p, &n);
    if (s != EC_OK) return ec_py_raise(s);
    PyArrayObject *src = rgb_array(obj, "make_views");
    if (!src) return NULL;
    npy_intp dims[4] = {1 + p.rows * p.cols, 3, p.tile_size, p.tile_size};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!out) {
        Py_DECREF(src);
        return NULL;
    }
    int w = (int)PyArray_DIM(src, 1), h = (int)PyArray_DIM(src, 0);
    EC_NOGIL(s, ec_image_make_views(PyArray_DATA(src), w, h, &p, PyArray_DATA(out)));
    Py_DECREF(src);
    if (s != EC_OK) {
        Py_DECREF(out);
        return ec_py_raise(s);
    }
    return (PyObject *)out;
}

PyMethodDef ec_py_image_methods[] = {
    {"decode_image", (PyCFunction)(void (*)(void))py_decode_image, METH_VARARGS | METH_KEYWORDS,
     "decode_image(source, max_pixels=64000000) -> uint8 array (height, width, 3)\n\n"
     "Decodes a JPEG, PNG, BMP, GIF (first frame), TGA, PSD or HDR image given as a path (str or os.PathLike) or as\n"
     "bytes. Grayscale becomes RGB and alpha is dropped. Raises FormatError (a ValueError) for corrupt, truncated or\n"
     "unknown data, ValueError when the declared width*height exceeds max_pixels (checked before decoding),\n"
     "OSError when the file cannot be read."},
    {"resize_bicubic", (PyCFunction)(void (*)(void))py_resize_bicubic, METH_VARARGS | METH_KEYWORDS,
     "resize_bicubic(image, width, height) -> uint8 array (height, width, 3)\n\n"
     "Resizes a uint8 RGB image exactly as PIL's Image.resize((width, height), Image.BICUBIC)."},
    {"make_views", (PyCFunction)(void (*)(void))py_make_views, METH_VARARGS | METH_KEYWORDS,
     "make_views(image, tile_size, grid, pad_color=(0, 0, 0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))\n"
     "    -> float32 array (1 + rows*cols, 3, tile_size, tile_size)\n\n"
     "The adaptive-resolution views of a uint8 RGB image: view 0 is the whole image resized (bicubic) to\n"
     "tile_size^2; then the image is resized keeping its aspect ratio to fit the grid (rows, cols) of tiles,\n"
     "centered on pad_color and cut into tiles in raster order. Values are (x/255 - mean) / std."},
    {NULL, NULL, 0, NULL},
};
