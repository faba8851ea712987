/* eyecare._core.VisionTower: the tower of vision.c for Python (eyecare/vision.py builds the settings
 * and picks the weight names). The tower borrows the weights' device tensors: it holds their Tensor
 * objects and re-reads them before every pass, so a weight freed meanwhile is an error, not a crash. */
#include "python/py_common.h"

#include <string.h>

#include "vk/tensor.h"
#include "model/vision.h"

typedef struct {
    PyObject_HEAD
    ec_vision *v;
    ec_context *ctx;
    PyObject **weights; /* the Tensor object of each slot, NULL where absent */
    int n_slots;
} VisionObject;

static PyTypeObject VisionType;

/* ------------------------------------------------------------------------------------------------
 * Settings: a flat dict with every field present (eyecare/vision.py fills Hugging Face's defaults). */

static PyObject *setting(PyObject *d, const char *key)
{
    PyObject *item = PyDict_GetItemString(d, key); /* borrowed */
    if (!item) PyErr_Format(PyExc_ValueError, "vision settings: '%s' is missing", key);
    return item;
}

static int int_setting(PyObject *d, const char *key, int *out)
{
    PyObject *item = setting(d, key);
    if (!item) return -1;
    if (!PyLong_Check(item) || PyBool_Check(item)) {
        PyErr_Format(PyExc_ValueError, "vision settings: '%s' must be an integer, not %s", key, Py_TYPE(item)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(item);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); v = INT64_MAX; }
    if (v < -(1 << 30) || v > (1 << 30)) {
        PyErr_Format(PyExc_ValueError, "vision settings: '%s' = %R is out of range", key, item);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_settings(PyObject *d, ec_vision_config *c)
{
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(d)) { PyErr_SetString(PyExc_TypeError, "vision settings must be a dict"); return -1; }
    if (int_setting(d, "hidden_size", &c->hidden) || int_setting(d, "intermediate_size", &c->intermediate) ||
        int_setting(d, "num_hidden_layers", &c->layers) || int_setting(d, "num_attention_heads", &c->heads) ||
        int_setting(d, "num_channels", &c->channels) || int_setting(d, "image_size", &c->image_size) ||
        int_setting(d, "patch_size", &c->patch) || int_setting(d, "feature_layer", &c->feature_layer) ||
        int_setting(d, "tile_pool", &c->tile_pool))
        return -1;

    PyObject *eps = setting(d, "layer_norm_eps");
    if (!eps) return -1;
    double e = PyFloat_AsDouble(eps);
    if (e == -1.0 && PyErr_Occurred()) return -1;
    c->eps = (float)e;

    PyObject *act = setting(d, "hidden_act");
    if (!act) return -1;
    const char *a = PyUnicode_Check(act) ? PyUnicode_AsUTF8(act) : NULL;
    if (!a) { PyErr_Clear(); PyErr_SetString(PyExc_ValueError, "vision settings: 'hidden_act' must be a string"); return -1; }
    /* gelu_new and gelu_fast are the same tanh approximation as SigLIP's gelu_pytorch_tanh. */
    if (!strcmp(a, "gelu_pytorch_tanh") || !strcmp(a, "gelu_new") || !strcmp(a, "gelu_fast")) c->act = EC_GELU_TANH;
    else if (!strcmp(a, "gelu")) c->act = EC_GELU_ERF;
    else {
        PyErr_Format(PyExc_ValueError, "vision_config.hidden_act '%s' is not supported (gelu_pytorch_tanh, gelu_new, "
                     "gelu_fast or gelu)", a);
        return -1;
    }

    PyObject *proj = setting(d, "projector");
    if (!proj) return -1;
    const char *p = PyUnicode_Check(proj) ? PyUnicode_AsUTF8(proj) : NULL;
    int n = 0, used = 0;
    if (!p || sscanf(p, "mlp%dx_gelu%n", &n, &used) != 1 || p[used] != 0 || n < 1 || n > EC_VISION_MAX_PROJECTOR) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "connector.projector %R is not supported: expected 'mlpNx_gelu' (LLaVA's form, "
                     "N = 1 to %d linear layers; EyecareGPT uses 'mlp2x_gelu')", proj, EC_VISION_MAX_PROJECTOR);
        return -1;
    }
    c->projector_linears = n;

    PyObject *d_llm = setting(d, "d_llm");
    if (!d_llm) return -1;
    if (d_llm != Py_None && int_setting(d, "d_llm", &c->d_llm)) return -1;
    if (d_llm != Py_None && c->d_llm <= 0) { PyErr_SetString(PyExc_ValueError, "vision settings: 'd_llm' must be positive"); return -1; }

    PyObject *groups = setting(d, "groups");
    if (!groups) return -1;
    PyObject *fast = PySequence_Fast(groups, "connector.groups must be a list of [start, end] pairs");
    if (!fast) { PyErr_Clear(); PyErr_SetString(PyExc_ValueError, "connector.groups must be a list of [start, end] pairs"); return -1; }
    Py_ssize_t ng = PySequence_Fast_GET_SIZE(fast);
    if (ng > EC_VISION_MAX_GROUPS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "connector.groups: %zd groups, at most %d are supported", ng, EC_VISION_MAX_GROUPS);
        return -1;
    }
    c->n_groups = (int)ng;
    for (Py_ssize_t g = 0; g < ng; g++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(fast, g);
        long lo = 0, hi = 0;
        int ok = PySequence_Check(pair) && !PyUnicode_Check(pair) && PySequence_Size(pair) == 2;
        for (int k = 0; ok && k < 2; k++) {
            PyObject *item = PySequence_GetItem(pair, k);
            ok = item && PyLong_Check(item) && !PyBool_Check(item);
            long val = ok ? PyLong_AsLong(item) : 0;
            Py_XDECREF(item);
            if (ok && val == -1 && PyErr_Occurred()) ok = 0;
            if (ok && (val < -(1 << 30) || val > (1 << 30))) ok = 0;
            if (k) hi = val; else lo = val;
        }
        if (!ok) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "connector.groups[%zd] = %R is not a [start, end] pair of integers", g, pair);
            Py_DECREF(fast);
            return -1;
        }
        c->group_lo[g] = (int)lo;
        c->group_hi[g] = (int)hi;
    }
    Py_DECREF(fast);
    return 0;
}

/* _core.vision_check_config(settings) -> dict of the derived sizes; ValueError when invalid. */
static PyObject *vision_check_config(PyObject *self, PyObject *settings)
{
    ec_vision_config c;
    if (parse_settings(settings, &c)) return NULL;
    ec_status s = ec_vision_config_check(&c);
    if (s) return ec_py_raise(s);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "head_dim", c.head_dim, "grid", c.grid, "tokens", c.tokens,
                         "pooled_side", c.pooled_side, "pooled_tokens", c.pooled_tokens, "feature_index", c.feature_index,
                         "layers_run", c.layers_run);
}

/* ------------------------------------------------------------------------------------------------
 * The VisionTower type */

static void tower_release(VisionObject *self)
{
    if (self->v) {
        ec_py_lock(self->ctx);
        ec_vision_destroy(self->v);
        pthread_mutex_unlock(&self->ctx->lock);
        self->v = NULL;
    }
    for (int i = 0; self->weights && i < self->n_slots; i++) Py_CLEAR(self->weights[i]);
    PyMem_Free(self->weights);
    self->weights = NULL;
}

static void tower_dealloc(VisionObject *self)
{
    tower_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Points every slot at its tensor (at creation; a Tensor keeps its device tensor until freed). */
static int bind_weights(VisionObject *self)
{
    ec_vision_slot *slots;
    int n = ec_vision_slots(self->v, &slots);
    for (int i = 0; i < n; i++) {
        *slots[i].dst = self->weights[i] ? ec_py_tensor_get(self->weights[i], 0) : NULL;
        if (self->weights[i] && !*slots[i].dst) return -1;
    }
    return 0;
}

/* Before a pass, with the context locked: has any weight been freed since? */
static int weights_alive(VisionObject *self)
{
    ec_vision_slot *slots;
    int n = ec_vision_slots(self->v, &slots);
    for (int i = 0; i < n; i++)
        if (self->weights[i] && !ec_py_tensor_get(self->weights[i], 0)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "the vision tower's weight '%s' has been freed", slots[i].name);
            return 0;
        }
    return 1;
}

/* The default views per pass: what fits in a quarter of the device memory left after the weights,
 * capped at 16 (past a few views a pass gains nothing but latency). */
static int default_max_views(ec_context *ctx, ec_vision *v)
{
    uint64_t cap = ctx->info.memory_bytes;
    if (ctx->budget && ctx->budget < cap) cap = ctx->budget;
    uint64_t left = cap > ctx->in_use ? cap - ctx->in_use : 0;
    uint64_t n = left / 4 / ec_vision_bytes_per_view(v);
    return n < 1 ? 1 : n > 16 ? 16 : (int)n;
}

static PyObject *tower_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"settings", "weights", "vision_prefix", "connector_prefix", "max_views", NULL};
    PyObject *settings, *weights;
    const char *vprefix, *cprefix;
    int max_views = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOss|i:VisionTower", kwlist, &settings, &weights, &vprefix, &cprefix, &max_views))
        return NULL;
    if (!PyMapping_Check(weights)) return PyErr_Format(PyExc_TypeError, "weights must be a mapping of names to Tensors");
    if (max_views < 0) return PyErr_Format(PyExc_ValueError, "max_views must be positive (or 0 for the default)");
    ec_vision_config c;
    if (parse_settings(settings, &c)) return NULL;
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;

    VisionObject *self = (VisionObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->ctx = ctx;
    ec_status s = ec_vision_create(ctx, &c, vprefix, cprefix, &self->v);
    if (s) { Py_DECREF(self); return ec_py_raise(s); }

    ec_vision_slot *slots;
    self->n_slots = ec_vision_slots(self->v, &slots);
    self->weights = PyMem_Calloc((size_t)self->n_slots, sizeof *self->weights);
    if (!self->weights) { Py_DECREF(self); return PyErr_NoMemory(); }
    for (int i = 0; i < self->n_slots; i++) {
        PyObject *item = PyMapping_GetItemString(weights, slots[i].name);
        if (!item) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) { Py_DECREF(self); return NULL; }
            PyErr_Clear();
            continue;
        }
        if (!ec_py_tensor_get(item, 0)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "weights['%s'] must be a live eyecare Tensor, not %R", slots[i].name, item);
            Py_DECREF(item);
            Py_DECREF(self);
            return NULL;
        }
        self->weights[i] = item; /* the reference GetItem returned */
    }
    if (bind_weights(self)) { Py_DECREF(self); return NULL; }

    char *report = NULL;
    s = ec_vision_check_weights(self->v, &report);
    if (s) {
        if (report) PyErr_SetString(ec_py_FormatError, report);
        else ec_py_raise(s);
        free(report);
        Py_DECREF(self);
        return NULL;
    }
    if (!max_views) max_views = default_max_views(ctx, self->v);
    EC_DEVICE_CALL(ctx, s, ec_vision_init(self->v, max_views));
    if (s) { Py_DECREF(self); return ec_py_raise(s); }
    return (PyObject *)self;
}

static int64_t count_tokens(const ec_vision_config *c, int n, const uint8_t *is_tile)
{
    int64_t count = 0;
    for (int i = 0; i < n; i++) count += is_tile[i] ? c->pooled_tokens : c->tokens;
    return count;
}

static ec_vision *live(VisionObject *self)
{
    if (!self->v) PyErr_SetString(PyExc_ValueError, "the vision tower has been closed");
    return self->v;
}

/* run(pixels, is_tile, hidden=False) -> tokens, or (tokens, hidden_states) */
static PyObject *tower_run(VisionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"pixels", "is_tile", "hidden", NULL};
    PyObject *pix_obj;
    Py_buffer tiles;
    int want_hidden = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oy*|p:run", kwlist, &pix_obj, &tiles, &want_hidden)) return NULL;
    PyObject *result = NULL, *tokens = NULL, *hidden = NULL;
    PyArrayObject *pixels = NULL;
    ec_vision *v = live(self);
    if (!v) goto done;
    /* A copy: another thread may close the tower between two passes. */
    ec_vision_config cfg = *ec_vision_get_config(v);
    const ec_vision_config *c = &cfg;

    if (!PyArray_Check(pix_obj) || PyArray_TYPE((PyArrayObject *)pix_obj) != NPY_FLOAT32) {
        PyErr_SetString(PyExc_TypeError, "pixels must be a float32 NumPy array");
        goto done;
    }
    pixels = (PyArrayObject *)PyArray_FROMANY(pix_obj, NPY_FLOAT32, 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!pixels) goto done;
    npy_intp *dims = PyArray_DIMS(pixels);
    if (PyArray_NDIM(pixels) != 4 || dims[1] != c->channels || dims[2] != c->image_size || dims[3] != c->image_size) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)pixels, "shape");
        if (shape)
            PyErr_Format(PyExc_ValueError, "pixels must be [views, %d, %d, %d] float32 (the tower's image_size), got shape %R",
                         c->channels, c->image_size, c->image_size, shape);
        Py_XDECREF(shape);
        goto done;
    }
    npy_intp n = dims[0];
    if (tiles.len != n) {
        PyErr_Format(PyExc_ValueError, "is_tile has %zd flags for %zd views", tiles.len, (Py_ssize_t)n);
        goto done;
    }
    if (n > INT32_MAX) { PyErr_SetString(PyExc_ValueError, "too many views"); goto done; }
    const uint8_t *is_tile = tiles.buf;
    int64_t count = count_tokens(c, (int)n, is_tile);
    int d_llm = ec_vision_d_llm(v), depth = ec_vision_layers_available(v);
    npy_intp tdims[2] = {(npy_intp)count, d_llm};
    tokens = PyArray_SimpleNew(2, tdims, NPY_FLOAT32);
    if (!tokens) goto done;
    if (want_hidden) {
        npy_intp hdims[4] = {depth + 1, n, c->tokens, c->hidden};
        hidden = PyArray_SimpleNew(4, hdims, NPY_FLOAT32);
        if (!hidden) goto done;
    }

    /* One pass per chunk of views; Ctrl-C is honoured between passes. */
    int chunk = ec_vision_max_views(v);
    float *out = PyArray_DATA((PyArrayObject *)tokens);
    const float *px = PyArray_DATA(pixels);
    size_t px_per_view = (size_t)c->channels * c->image_size * c->image_size;
    size_t h_per_view = (size_t)c->tokens * c->hidden, h_stride = (size_t)n * h_per_view;
    for (npy_intp v0 = 0; v0 < n; v0 += chunk) {
        int m = (int)(n - v0 < chunk ? n - v0 : chunk);
        float *h = hidden ? (float *)PyArray_DATA((PyArrayObject *)hidden) + (size_t)v0 * h_per_view : NULL;
        ec_context *ctx = self->ctx;
        ec_py_lock(ctx);
        if (!self->v || !weights_alive(self)) {
            pthread_mutex_unlock(&ctx->lock);
            if (!self->v) live(self);
            goto done;
        }
        ec_status s;
        Py_BEGIN_ALLOW_THREADS
        s = ec_vision_run(v, px + (size_t)v0 * px_per_view, m, is_tile + v0, out, h, h_stride);
        if (s) ec_batch_abort(ctx);
        pthread_mutex_unlock(&ctx->lock);
        Py_END_ALLOW_THREADS
        if (s) { ec_py_raise(s); goto done; }
        out += (size_t)count_tokens(c, m, is_tile + v0) * (size_t)d_llm;
        if (PyErr_CheckSignals()) goto done;
    }
    if (hidden) result = PyTuple_Pack(2, tokens, hidden);
    else { result = tokens; Py_INCREF(result); }

done:
    PyBuffer_Release(&tiles);
    Py_XDECREF(pixels);
    Py_XDECREF(tokens);
    Py_XDECREF(hidden);
    return result;
}

static PyObject *tower_close(VisionObject *self, PyObject *unused)
{
    tower_release(self);
    Py_RETURN_NONE;
}

static PyObject *tower_info(VisionObject *self, void *closure)
{
    ec_vision *v = live(self);
    if (!v) return NULL;
    const ec_vision_config *c = ec_vision_get_config(v);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:d,s:I}",
                         "hidden_size", c->hidden, "intermediate_size", c->intermediate, "num_hidden_layers", c->layers,
                         "num_attention_heads", c->heads, "head_dim", c->head_dim, "image_size", c->image_size,
                         "patch_size", c->patch, "grid", c->grid, "tokens", c->tokens, "pooled_tokens", c->pooled_tokens,
                         "feature_index", c->feature_index, "layers_run", c->layers_run,
                         "layers_available", ec_vision_layers_available(v), "d_llm", ec_vision_d_llm(v),
                         "max_views", ec_vision_max_views(v), "num_channels", c->channels,
                         "last_device_ms", ec_vision_last_ms(v), "last_dispatches", ec_vision_last_dispatches(v));
}

static PyObject *tower_closed(VisionObject *self, void *closure) { return PyBool_FromLong(self->v == NULL); }

static PyMethodDef tower_methods[] = {
    {"run", (PyCFunction)(void (*)(void))tower_run, METH_VARARGS | METH_KEYWORDS,
     "run(pixels, is_tile, hidden=False) -> tokens [n_tokens, d_llm], or (tokens, hidden_states [depth + 1, views, T, D]).\n"
     "pixels: float32 [views, C, S, S]; is_tile: bytes, one flag per view (tiles are pooled)."},
    {"close", (PyCFunction)tower_close, METH_NOARGS, "Release the device memory now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tower_getset[] = {
    {"info", (getter)tower_info, NULL, "sizes of the tower (dict)", NULL},
    {"closed", (getter)tower_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VisionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "eyecare._core.VisionTower",
    .tp_basicsize = sizeof(VisionObject),
    .tp_dealloc = (destructor)tower_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "VisionTower(settings, weights, vision_prefix, connector_prefix, max_views=0): SigLIP + LDC + projector "
              "on the device. Use eyecare.vision.VisionTower.",
    .tp_methods = tower_methods,
    .tp_getset = tower_getset,
    .tp_new = tower_new,
};

/* The type is made ready on first use, since py_module.c only adds method tables. */
static PyObject *vision_tower_type(PyObject *self, PyObject *unused)
{
    if (!(VisionType.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&VisionType) < 0) return NULL;
    Py_INCREF(&VisionType);
    return (PyObject *)&VisionType;
}

PyMethodDef ec_py_vision_methods[] = {
    {"vision_tower_type", vision_tower_type, METH_NOARGS, "vision_tower_type() -> the VisionTower type"},
    {"vision_check_config", vision_check_config, METH_O, "vision_check_config(settings) -> derived sizes (dict)"},
    {NULL, NULL, 0, NULL},
};
