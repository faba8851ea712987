/* eyecare._core.Decoder (the Phi-3 / Qwen2 decoder of decoder.c) and eyecare._core.sample (sampler.c).
 * eyecare/language.py builds the config dict and the weights and is the public face of both. */
#include "python/py_common.h"

#include "model/decoder.h"
#include "model/sampler.h"

typedef struct {
    PyObject_HEAD
    ec_decoder *d;
    ec_context *ctx;
    PyObject *weights; /* dict name -> Tensor: the decoder borrows these, so they live as long as it does */
    int64_t vocab, hidden, rot_dim;
} DecoderObject;

static PyTypeObject DecoderType;

/* ------------------------------------------------------------------------------------------------
 * Config dict -> ec_decoder_config */

static int dict_int(PyObject *cfg, const char *key, int64_t *out, int required)
{
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v || v == Py_None) {
        if (required) { PyErr_Format(PyExc_ValueError, "decoder config: '%s' is missing", key); return -1; }
        return 0;
    }
    if (PyBool_Check(v) || !PyLong_Check(v)) { PyErr_Format(PyExc_ValueError, "decoder config: '%s' must be an integer", key); return -1; }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

static int dict_double(PyObject *cfg, const char *key, double *out, int required)
{
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v || v == Py_None) {
        if (required) { PyErr_Format(PyExc_ValueError, "decoder config: '%s' is missing", key); return -1; }
        return 0;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) { PyErr_Format(PyExc_ValueError, "decoder config: '%s' must be a number", key); return -1; }
    *out = x;
    return 0;
}

static int dict_bool(PyObject *cfg, const char *key, int *out)
{
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v || v == Py_None) return 0;
    int x = PyObject_IsTrue(v);
    if (x < 0) return -1;
    *out = x;
    return 0;
}

/* A list of `n` numbers, or None (*out stays NULL). */
static int dict_floats(PyObject *cfg, const char *key, int64_t n, float **out)
{
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v || v == Py_None) return 0;
    PyObject *fast = PySequence_Fast(v, "a list of numbers");
    if (!fast) { PyErr_Format(PyExc_ValueError, "decoder config: '%s' must be a list of numbers", key); return -1; }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len != n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "decoder config: '%s' has %zd values, expected %lld (rotary dimension / 2)", key, len, (long long)n);
        return -1;
    }
    float *f = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *f);
    if (!f) { Py_DECREF(fast); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < len; i++) {
        double x = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (x == -1.0 && PyErr_Occurred()) {
            PyMem_Free(f);
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "decoder config: '%s' must be a list of numbers", key);
            return -1;
        }
        f[i] = (float)x;
    }
    Py_DECREF(fast);
    *out = f;
    return 0;
}

static int parse_config(PyObject *cfg, ec_decoder_config *c, float **short_factor, float **long_factor)
{
    if (!PyDict_Check(cfg)) { PyErr_SetString(PyExc_TypeError, "the decoder config must be a dict"); return -1; }
    memset(c, 0, sizeof *c);
    PyObject *mt = PyDict_GetItemString(cfg, "model_type");
    const char *type = mt && PyUnicode_Check(mt) ? PyUnicode_AsUTF8(mt) : NULL;
    if (!type) { PyErr_SetString(PyExc_ValueError, "decoder config: 'model_type' must be a string"); return -1; }
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    double eps = 1e-6, theta = 10000.0, attention_factor = 1.0;
    if (dict_int(cfg, "vocab_size", &c->vocab, 1) || dict_int(cfg, "hidden_size", &c->hidden, 1) ||
        dict_int(cfg, "intermediate_size", &c->intermediate, 1) || dict_int(cfg, "num_hidden_layers", &c->layers, 1) ||
        dict_int(cfg, "num_attention_heads", &c->heads, 1) || dict_int(cfg, "num_key_value_heads", &c->kv_heads, 1) ||
        dict_int(cfg, "head_dim", &c->head_dim, 1) || dict_int(cfg, "rotary_dim", &c->rot_dim, 1) ||
        dict_double(cfg, "rms_norm_eps", &eps, 1) || dict_double(cfg, "rope_theta", &theta, 1) ||
        dict_double(cfg, "attention_factor", &attention_factor, 0) ||
        dict_int(cfg, "original_max_position_embeddings", &c->original_max, 0) || dict_int(cfg, "sliding_window", &c->window, 0) ||
        dict_bool(cfg, "qkv_bias", &c->qkv_bias) || dict_bool(cfg, "tie_word_embeddings", &c->tied))
        return -1;
    c->rms_eps = (float)eps;
    c->rope_theta = theta;
    c->attention_factor = (float)attention_factor;
    if (c->rot_dim < 2 || c->rot_dim > 4096) { PyErr_Format(PyExc_ValueError, "decoder config: rotary_dim %lld is out of range", (long long)c->rot_dim); return -1; }
    if (dict_floats(cfg, "short_factor", c->rot_dim / 2, short_factor) || dict_floats(cfg, "long_factor", c->rot_dim / 2, long_factor))
        return -1;
    c->short_factor = *short_factor;
    c->long_factor = *long_factor;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * The Decoder type */

static int decoder_init(DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"config", "weights", "capacity", "max_batch", "chunk", "kv_dtype", NULL};
    PyObject *cfg, *weights;
    long long capacity, chunk = 256;
    int max_batch = 1;
    const char *kv_dtype = "float16";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!L|iLs", kw, &PyDict_Type, &cfg, &PyDict_Type, &weights, &capacity,
                                     &max_batch, &chunk, &kv_dtype))
        return -1;
    ec_dtype kv;
    if (strcmp(kv_dtype, "float16") == 0) kv = EC_F16;
    else if (strcmp(kv_dtype, "float32") == 0) kv = EC_F32;
    else { PyErr_Format(PyExc_ValueError, "kv_cache_dtype must be 'float16' or 'float32', not '%s'", kv_dtype); return -1; }
    if (self->d) { PyErr_SetString(PyExc_RuntimeError, "the decoder is already initialized"); return -1; }
    ec_decoder_config c;
    float *short_factor = NULL, *long_factor = NULL;
    ec_named_tensor *named = NULL;
    PyObject *held = NULL;
    int rc = -1;
    if (parse_config(cfg, &c, &short_factor, &long_factor) < 0) goto done;
    c.kv_dtype = kv;
    ec_context *ctx = ec_py_context();
    if (!ctx) goto done;
    held = PyDict_Copy(weights);
    if (!held) goto done;
    Py_ssize_t n = PyDict_Size(held), pos = 0, i = 0;
    named = PyMem_Calloc((size_t)(n ? n : 1), sizeof *named);
    if (!named) { PyErr_NoMemory(); goto done; }
    PyObject *key, *value;
    while (PyDict_Next(held, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) { PyErr_SetString(PyExc_TypeError, "weight names must be strings"); goto done; }
        named[i].name = PyUnicode_AsUTF8(key);
        named[i].tensor = ec_py_tensor_get(value, 0);
        if (!named[i].name || !named[i].tensor) goto done;
        i++;
    }
    ec_status s;
    ec_decoder *d = NULL;
    EC_DEVICE_CALL(ctx, s, ec_decoder_create(ctx, &c, named, (int)n, capacity, max_batch, chunk, &d));
    if (s) { ec_py_raise(s); goto done; }
    self->d = d;
    self->ctx = ctx;
    self->weights = held;
    held = NULL;
    self->vocab = c.vocab;
    self->hidden = c.hidden;
    self->rot_dim = c.rot_dim;
    rc = 0;
done:
    Py_XDECREF(held);
    PyMem_Free(named);
    PyMem_Free(short_factor);
    PyMem_Free(long_factor);
    return rc;
}

static void decoder_release(DecoderObject *self)
{
    if (self->d) {
        ec_py_lock(self->ctx);
        ec_decoder_destroy(self->d);
        pthread_mutex_unlock(&self->ctx->lock);
        self->d = NULL;
    }
    Py_CLEAR(self->weights);
}

static void decoder_dealloc(DecoderObject *self)
{
    decoder_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The decoder, if open and none of its weights was freed behind its back. */
static ec_decoder *live(DecoderObject *self)
{
    if (!self->d) { PyErr_SetString(PyExc_ValueError, "the decoder has been closed"); return NULL; }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(self->weights, &pos, &key, &value))
        if (!ec_py_tensor_get(value, 0)) {
            PyErr_Format(PyExc_ValueError, "the decoder's weight %R was freed", key);
            return NULL;
        }
    return self->d;
}

/* forward(ids, embeds, first=0, logits='last', force_long=False): ids int32 [B, T] or embeds float32
 * [B, T, hidden] (the other None); returns float32 logits [B, T, vocab] ('all'), [B, vocab] ('last')
 * or None ('none'). force_long: the long LongRoPE factors whatever the length. */
static PyObject *decoder_forward(DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"ids", "embeds", "first", "logits", "force_long", NULL};
    PyObject *ids_obj, *emb_obj;
    int first = 0, force_long = 0;
    const char *mode_name = "last";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|isp", kw, &ids_obj, &emb_obj, &first, &mode_name, &force_long)) return NULL;
    ec_decoder *d = live(self);
    if (!d) return NULL;
    ec_logits_mode mode;
    if (!strcmp(mode_name, "none")) mode = EC_LOGITS_NONE;
    else if (!strcmp(mode_name, "last")) mode = EC_LOGITS_LAST;
    else if (!strcmp(mode_name, "all")) mode = EC_LOGITS_ALL;
    else return PyErr_Format(PyExc_ValueError, "logits must be 'none', 'last' or 'all', not '%s'", mode_name);
    if ((ids_obj == Py_None) == (emb_obj == Py_None)) return PyErr_Format(PyExc_ValueError, "give either ids or embeds");

    PyArrayObject *in;
    if (ids_obj != Py_None) {
        in = (PyArrayObject *)PyArray_FROMANY(ids_obj, NPY_INT32, 2, 2, NPY_ARRAY_IN_ARRAY);
        if (!in) return NULL;
    } else {
        in = (PyArrayObject *)PyArray_FROMANY(emb_obj, NPY_FLOAT32, 3, 3, NPY_ARRAY_IN_ARRAY);
        if (!in) return NULL;
        if (PyArray_DIM(in, 2) != self->hidden) {
            Py_DECREF(in);
            return PyErr_Format(PyExc_ValueError, "input embeddings have width %zd, the model %lld", (Py_ssize_t)PyArray_DIM(in, 2),
                                (long long)self->hidden);
        }
    }
    npy_intp B = PyArray_DIM(in, 0), T = PyArray_DIM(in, 1);
    if (B < 1 || T < 1 || B > INT32_MAX) { Py_DECREF(in); return PyErr_Format(PyExc_ValueError, "forward needs at least one sequence and one token"); }
    PyArrayObject *out = NULL;
    if (mode != EC_LOGITS_NONE) {
        npy_intp dims[3] = {B, mode == EC_LOGITS_ALL ? T : (npy_intp)self->vocab, (npy_intp)self->vocab};
        out = (PyArrayObject *)PyArray_SimpleNew(mode == EC_LOGITS_ALL ? 3 : 2, dims, NPY_FLOAT32);
        if (!out) { Py_DECREF(in); return NULL; }
    }
    ec_decoder_step step = {.first = first, .batch = (int)B, .tokens = T, .logits = mode,
                            .logits_out = out ? PyArray_DATA(out) : NULL, .force_long = force_long};
    if (ids_obj != Py_None) step.ids = PyArray_DATA(in);
    else step.embeds = PyArray_DATA(in);
    ec_status s;
    EC_DEVICE_CALL(self->ctx, s, ec_decoder_forward(d, &step));
    Py_DECREF(in);
    if (s) { Py_XDECREF(out); return ec_py_raise(s); }
    if (!out) Py_RETURN_NONE;
    return (PyObject *)out;
}

static PyObject *decoder_embed(DecoderObject *self, PyObject *ids_obj)
{
    ec_decoder *d = live(self);
    if (!d) return NULL;
    PyArrayObject *ids = (PyArrayObject *)PyArray_FROMANY(ids_obj, NPY_INT32, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!ids) return NULL;
    npy_intp dims[2] = {PyArray_DIM(ids, 0), (npy_intp)self->hidden};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) { Py_DECREF(ids); return NULL; }
    ec_status s;
    EC_DEVICE_CALL(self->ctx, s, ec_decoder_embed(d, PyArray_DATA(ids), dims[0], PyArray_DATA(out)));
    Py_DECREF(ids);
    if (s) { Py_DECREF(out); return ec_py_raise(s); }
    return (PyObject *)out;
}

static PyObject *decoder_length(DecoderObject *self, PyObject *args)
{
    int seq;
    if (!PyArg_ParseTuple(args, "i", &seq)) return NULL;
    ec_decoder *d = live(self);
    if (!d) return NULL;
    if (seq < 0 || seq >= ec_decoder_max_batch(d))
        return PyErr_Format(PyExc_ValueError, "sequence %d does not exist: the decoder holds %d", seq, ec_decoder_max_batch(d));
    return PyLong_FromLongLong(ec_decoder_length(d, seq));
}

static PyObject *decoder_set_length(DecoderObject *self, PyObject *args)
{
    int seq;
    long long length;
    if (!PyArg_ParseTuple(args, "iL", &seq, &length)) return NULL;
    ec_decoder *d = live(self);
    if (!d) return NULL;
    ec_status s = ec_decoder_set_length(d, seq, length);
    if (s) return ec_py_raise(s);
    Py_RETURN_NONE;
}

static PyObject *decoder_rope_table(DecoderObject *self, PyObject *args)
{
    PyObject *pos_obj;
    int use_long = 0;
    if (!PyArg_ParseTuple(args, "O|p", &pos_obj, &use_long)) return NULL;
    ec_decoder *d = live(self);
    if (!d) return NULL;
    PyArrayObject *pos = (PyArrayObject *)PyArray_FROMANY(pos_obj, NPY_INT64, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!pos) return NULL;
    npy_intp dims[2] = {PyArray_DIM(pos, 0), (npy_intp)self->rot_dim};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) { Py_DECREF(pos); return NULL; }
    ec_status s = ec_decoder_rope_table(d, PyArray_DATA(pos), dims[0], use_long, PyArray_DATA(out));
    Py_DECREF(pos);
    if (s) { Py_DECREF(out); return ec_py_raise(s); }
    return (PyObject *)out;
}

static PyObject *decoder_close(DecoderObject *self, PyObject *unused)
{
    decoder_release(self);
    Py_RETURN_NONE;
}

static PyObject *decoder_capacity(DecoderObject *self, void *unused)
{
    return self->d ? PyLong_FromLongLong(ec_decoder_capacity(self->d)) : (PyErr_SetString(PyExc_ValueError, "the decoder has been closed"), NULL);
}

static PyObject *decoder_max_batch(DecoderObject *self, void *unused)
{
    return self->d ? PyLong_FromLong(ec_decoder_max_batch(self->d)) : (PyErr_SetString(PyExc_ValueError, "the decoder has been closed"), NULL);
}

static PyObject *decoder_dispatches(DecoderObject *self, void *unused)
{
    return PyLong_FromUnsignedLong(self->d ? ec_decoder_last_dispatches(self->d) : 0);
}

static PyObject *decoder_weight_bytes(DecoderObject *self, void *unused)
{
    return PyLong_FromUnsignedLongLong(self->d ? ec_decoder_weight_bytes(self->d) : 0);
}

static PyObject *decoder_closed(DecoderObject *self, void *unused) { return PyBool_FromLong(self->d == NULL); }

static PyMethodDef decoder_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))decoder_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids, embeds, first=0, logits='last', force_long=False): run ids int32 [B, T] or embeds float32 [B, T, hidden] for sequences "
     "first..first+B-1, after what each has cached; returns logits [B, T, vocab] ('all'), [B, vocab] ('last') or None ('none')."},
    {"embed", (PyCFunction)decoder_embed, METH_O, "embed(ids) -> float32 [n, hidden] token embeddings."},
    {"length", (PyCFunction)decoder_length, METH_VARARGS, "length(seq) -> tokens cached for sequence seq."},
    {"set_length", (PyCFunction)decoder_set_length, METH_VARARGS, "set_length(seq, n): keep only the first n cached tokens."},
    {"rope_table", (PyCFunction)decoder_rope_table, METH_VARARGS, "rope_table(positions, use_long=False) -> [n, rotary_dim] cos | sin."},
    {"close", (PyCFunction)decoder_close, METH_NOARGS, "Release the cache and activations now (the weights stay with their owner)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef decoder_getset[] = {
    {"capacity", (getter)decoder_capacity, NULL, "tokens the cache holds per sequence", NULL},
    {"max_batch", (getter)decoder_max_batch, NULL, "sequences the cache holds", NULL},
    {"dispatches", (getter)decoder_dispatches, NULL, "dispatches recorded in the last step's (last chunk's) batch", NULL},
    {"weight_bytes", (getter)decoder_weight_bytes, NULL, "bytes of weights a decode step reads", NULL},
    {"closed", (getter)decoder_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "eyecare._core.Decoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_dealloc = (destructor)decoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Decoder(config, weights, capacity, max_batch=1, chunk=256): a Phi-3 / Qwen2 decoder with its KV cache on the "
              "device. config: the dict eyecare.config.DecoderConfig.to_core() makes; weights: name -> Tensor (kept alive).",
    .tp_methods = decoder_methods,
    .tp_getset = decoder_getset,
    .tp_init = (initproc)decoder_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------------------------------------
 * Module functions */

static PyObject *py_decoder_type(PyObject *module, PyObject *unused)
{
    if (!(DecoderType.tp_flags & Py_TPFLAGS_READY) && PyType_Ready(&DecoderType) < 0) return NULL;
    Py_INCREF(&DecoderType);
    return (PyObject *)&DecoderType;
}

/* sample(logits, history, do_sample, temperature, top_k, top_p, repetition_penalty, u) -> token id.
 * logits: a writable float32 row, changed in place; history: int32 ids for the repetition penalty. */
static PyObject *py_sample(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"logits", "history", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "u", NULL};
    PyObject *logits_obj, *hist_obj;
    ec_sampling p = {0, 1.0f, 0, 1.0f, 1.0f};
    long long top_k = 0;
    double u = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|pfLffd", kw, &logits_obj, &hist_obj, &p.do_sample, &p.temperature, &top_k,
                                     &p.top_p, &p.repetition_penalty, &u))
        return NULL;
    p.top_k = top_k;
    if (!PyArray_Check(logits_obj) || PyArray_TYPE((PyArrayObject *)logits_obj) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)logits_obj) != 1 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)logits_obj) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)logits_obj))
        return PyErr_Format(PyExc_ValueError, "sample: logits must be a writable, contiguous 1-D float32 array");
    PyArrayObject *logits = (PyArrayObject *)logits_obj;
    PyArrayObject *hist = (PyArrayObject *)PyArray_FROMANY(hist_obj, NPY_INT32, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!hist) return NULL;
    int32_t token = 0;
    ec_status s;
    EC_NOGIL(s, ec_sample(PyArray_DATA(logits), PyArray_DIM(logits, 0), &p, PyArray_DATA(hist), PyArray_DIM(hist, 0), u, &token));
    Py_DECREF(hist);
    if (s) return ec_py_raise(s);
    return PyLong_FromLong(token);
}

PyMethodDef ec_py_decoder_methods[] = {
    {"decoder_type", py_decoder_type, METH_NOARGS, "decoder_type() -> the eyecare._core.Decoder type."},
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(logits, history, do_sample=False, temperature=1, top_k=0, top_p=1, repetition_penalty=1, u=0) -> token id"},
    {NULL, NULL, 0, NULL},
};
