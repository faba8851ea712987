/* One Python function per op (eyecare._core.op_*), so each op can be tested on its own against NumPy.
 * Outputs are passed in; an op runs at once unless a batch was opened with begin(). */
#include "python/py_common.h"

#include "ops/ops.h"

#define TENSOR(obj) ((ec_tensor *)ec_py_tensor_get((obj), 0))
#define TENSOR_OR_NONE(obj) ((ec_tensor *)ec_py_tensor_get((obj), 1))

/* Records the op and, unless the caller holds a batch open, submits and waits; GIL released. The
 * operands (the Python objects after `call`) are checked again once the context lock is held: another
 * thread may have freed one since its pointer was taken, and a freed tensor stays freed. */
#define RUN_OP(ctx, call, ...)                                                         \
    do {                                                                               \
        PyObject *objs_[] = {__VA_ARGS__};                                             \
        RUN_OP_CHECKING(ctx, call, objs_, sizeof objs_ / sizeof objs_[0]);             \
    } while (0)

#define RUN_OP_CHECKING(ctx, call, objs_, n_objs_)                                     \
    do {                                                                               \
        ec_py_lock(ctx);                                                               \
        for (size_t i_ = 0; i_ < (size_t)(n_objs_); i_++)                              \
            if (objs_[i_] && !ec_py_tensor_get(objs_[i_], 1) && PyErr_Occurred()) {   \
                pthread_mutex_unlock(&(ctx)->lock);                                    \
                return NULL;                                                           \
            }                                                                          \
        ec_status s_;                                                                  \
        Py_BEGIN_ALLOW_THREADS                                                         \
        int batched_ = (ctx)->recording;                                               \
        s_ = (call);                                                                   \
        if (!s_ && !batched_) s_ = ec_batch_submit(ctx);                               \
        if (s_) ec_batch_abort(ctx);                                                   \
        pthread_mutex_unlock(&(ctx)->lock);                                            \
        Py_END_ALLOW_THREADS                                                           \
        if (s_) return ec_py_raise(s_);                                                \
        Py_RETURN_NONE;                                                                \
    } while (0)

static ec_context *ctx_or_null(void) { return ec_py_context(); }

static PyObject *op_matmul(PyObject *self, PyObject *args)
{
    PyObject *x, *w, *b, *y;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOO|p", &x, &w, &b, &y, &accumulate)) return NULL;
    ec_tensor *tx = TENSOR(x), *tw = tx ? TENSOR(w) : NULL, *ty = tw ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_tensor *tb = TENSOR_OR_NONE(b);
    if (PyErr_Occurred()) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_matmul(ctx, tx, tw, tb, ty, accumulate), x, w, b, y);
}

static PyObject *op_add(PyObject *self, PyObject *args)
{
    PyObject *a, *b, *o;
    float alpha = 1.0f;
    if (!PyArg_ParseTuple(args, "OOO|f", &a, &b, &o, &alpha)) return NULL;
    ec_tensor *ta = TENSOR(a), *tb = ta ? TENSOR(b) : NULL, *to = tb ? TENSOR(o) : NULL;
    if (!to) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_add(ctx, ta, tb, alpha, to), a, b, o);
}

static PyObject *op_layernorm(PyObject *self, PyObject *args)
{
    PyObject *x, *w, *b, *y;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOfO", &x, &w, &b, &eps, &y)) return NULL;
    ec_tensor *tx = TENSOR(x), *tw = tx ? TENSOR(w) : NULL, *ty = tw ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_tensor *tb = TENSOR_OR_NONE(b);
    if (PyErr_Occurred()) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_layernorm(ctx, tx, tw, tb, eps, ty), x, w, b, y);
}

static PyObject *op_rmsnorm(PyObject *self, PyObject *args)
{
    PyObject *x, *w, *y;
    float eps;
    if (!PyArg_ParseTuple(args, "OOfO", &x, &w, &eps, &y)) return NULL;
    ec_tensor *tx = TENSOR(x), *tw = tx ? TENSOR(w) : NULL, *ty = tw ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_rmsnorm(ctx, tx, tw, eps, ty), x, w, y);
}

static PyObject *op_activation(PyObject *self, PyObject *args)
{
    const char *kind;
    PyObject *x, *y;
    if (!PyArg_ParseTuple(args, "sOO", &kind, &x, &y)) return NULL;
    ec_activation k;
    if (!strcmp(kind, "gelu_tanh")) k = EC_GELU_TANH;
    else if (!strcmp(kind, "gelu")) k = EC_GELU_ERF;
    else if (!strcmp(kind, "silu")) k = EC_SILU;
    else return PyErr_Format(PyExc_ValueError, "unknown activation '%s' (gelu, gelu_tanh, silu)", kind);
    ec_tensor *tx = TENSOR(x), *ty = tx ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_activation(ctx, k, tx, ty), x, y);
}

/* op_silu_mul(gate, up_or_None, y): with up None, gate holds [gate | up] halves (Phi-3's gate_up). */
static PyObject *op_silu_mul(PyObject *self, PyObject *args)
{
    PyObject *g, *u, *y;
    if (!PyArg_ParseTuple(args, "OOO", &g, &u, &y)) return NULL;
    ec_tensor *tg = TENSOR(g), *ty = tg ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_tensor *tu = TENSOR_OR_NONE(u);
    if (PyErr_Occurred()) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    ec_cols gate = ec_whole(tg), up;
    if (tu) up = ec_whole(tu);
    else {
        size_t f = (size_t)ty->shape[ty->ndim - 1];
        up = (ec_cols){tg, f, gate.stride};
    }
    RUN_OP(ctx, ec_op_silu_mul(ctx, gate, up, ty), g, u, y);
}

static PyObject *op_softmax(PyObject *self, PyObject *args)
{
    PyObject *x, *y;
    float scale = 1.0f;
    if (!PyArg_ParseTuple(args, "OO|f", &x, &y, &scale)) return NULL;
    ec_tensor *tx = TENSOR(x), *ty = tx ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_softmax(ctx, tx, scale, ty), x, y);
}

/* op_rope(x, cos_sin, n_heads, head_dim, rot_dim, col_offset=0): x [T, row] in place. */
static PyObject *op_rope(PyObject *self, PyObject *args)
{
    PyObject *x, *cs;
    int heads, dim, rot;
    Py_ssize_t off = 0;
    if (!PyArg_ParseTuple(args, "OOiii|n", &x, &cs, &heads, &dim, &rot, &off)) return NULL;
    ec_tensor *tx = TENSOR(x), *tc = tx ? TENSOR(cs) : NULL;
    if (!tc) return NULL;
    if (off < 0) return PyErr_Format(PyExc_ValueError, "negative column offset");
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    ec_cols c = ec_whole(tx);
    c.off = (size_t)off;
    int64_t tokens = tx->shape[0];
    RUN_OP(ctx, ec_op_rope(ctx, c, tokens, heads, dim, rot, tc), x, cs);
}

/* op_rope_kv(qkv, cos_sin, n_heads, n_kv_heads, head_dim, rot_dim, q_out, kv, kv_row0[, head_major]): qkv
 * [T, (H + 2 Hkv) D]; q_out [T, H D]; kv (f32 or f16) [rows, 2 Hkv D], or with head_major [2 Hkv, rows, D]
 * (the decoder's layout), written from row kv_row0. */
static PyObject *op_rope_kv(PyObject *self, PyObject *args)
{
    PyObject *x, *cs, *q, *kv;
    int heads, kv_heads, dim, rot, head_major = 0;
    Py_ssize_t row0;
    if (!PyArg_ParseTuple(args, "OOiiiiOOn|p", &x, &cs, &heads, &kv_heads, &dim, &rot, &q, &kv, &row0, &head_major)) return NULL;
    ec_tensor *tx = TENSOR(x), *tc = tx ? TENSOR(cs) : NULL, *tq = tc ? TENSOR(q) : NULL, *tk = tq ? TENSOR(kv) : NULL;
    if (!tk) return NULL;
    if (row0 < 0) return PyErr_Format(PyExc_ValueError, "negative cache row");
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    ec_cols src = ec_whole(tx), table = ec_whole(tc), qo = ec_whole(tq), dst = ec_whole(tk);
    int64_t kv_head = 0;  /* token-major */
    if (head_major) {
        if (dim <= 0 || kv_heads <= 0) return PyErr_Format(PyExc_ValueError, "head_dim and n_kv_heads must be positive");
        dst.stride = (size_t)dim;
        kv_head = ec_numel(tk) / (2 * (int64_t)kv_heads);  /* rows * head_dim */
    }
    dst.off = (size_t)row0 * dst.stride;
    int64_t tokens = tx->ndim > 1 ? tx->shape[0] : 1;
    RUN_OP(ctx, ec_op_rope_kv(ctx, src, tokens, heads, kv_heads, dim, rot, table, qo, dst, kv_head), x, cs, q, kv);
}

/* op_rmsnorm_matmul(x, g, eps, h, w, bias, y, accumulate=False) */
static PyObject *op_rmsnorm_matmul(PyObject *self, PyObject *args)
{
    PyObject *x, *g, *h, *w, *b, *y;
    float eps;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOfOOOO|p", &x, &g, &eps, &h, &w, &b, &y, &accumulate)) return NULL;
    ec_tensor *tx = TENSOR(x), *tg = tx ? TENSOR(g) : NULL, *th = tg ? TENSOR(h) : NULL, *tw = th ? TENSOR(w) : NULL;
    ec_tensor *ty = tw ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_tensor *tb = TENSOR_OR_NONE(b);
    if (PyErr_Occurred()) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_rmsnorm_matmul(ctx, tx, tg, eps, th, tw, tb, ty, accumulate), x, g, h, w, b, y);
}

/* op_silu_mul_matmul(gate_up, act, w, y, accumulate=False) */
static PyObject *op_silu_mul_matmul(PyObject *self, PyObject *args)
{
    PyObject *gu, *act, *w, *y;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOO|p", &gu, &act, &w, &y, &accumulate)) return NULL;
    ec_tensor *tgu = TENSOR(gu), *ta = tgu ? TENSOR(act) : NULL, *tw = ta ? TENSOR(w) : NULL, *ty = tw ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_silu_mul_matmul(ctx, tgu, ta, tw, ty, accumulate), gu, act, w, y);
}

/* op_attention(q, k, v, out, lengths, batch, tokens, kv_rows, n_heads, n_kv_heads, head_dim, causal, scale
 *              [, partials, splits, max_len, head_major])
 * with q/out [B*T, H*D], k/v [B*kv_rows, Hkv*D], or with head_major k/v [B, Hkv, kv_rows, D] (the
 * decoder's cache layout); partials, splits and max_len only matter for decode (T = 1). */
static PyObject *op_attention(PyObject *self, PyObject *args)
{
    PyObject *q, *k, *v, *o, *l, *part = Py_None;
    ec_attention_args a = {0};
    long long B, T, S, max_len = 0;
    int causal, splits = 0, head_major = 0;
    if (!PyArg_ParseTuple(args, "OOOOOLLLiiipf|OiLp", &q, &k, &v, &o, &l, &B, &T, &S, &a.n_heads, &a.n_kv_heads,
                          &a.head_dim, &causal, &a.scale, &part, &splits, &max_len, &head_major))
        return NULL;
    ec_tensor *tq = TENSOR(q), *tk = tq ? TENSOR(k) : NULL, *tv = tk ? TENSOR(v) : NULL;
    ec_tensor *to = tv ? TENSOR(o) : NULL, *tl = to ? TENSOR(l) : NULL;
    if (!tl) return NULL;
    ec_tensor *tp = TENSOR_OR_NONE(part);
    if (PyErr_Occurred()) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    a.q = ec_whole(tq); a.k = ec_whole(tk); a.v = ec_whole(tv); a.out = ec_whole(to);
    if (head_major) {
        if (a.head_dim <= 0 || a.n_kv_heads <= 0 || S <= 0) return PyErr_Format(PyExc_ValueError, "head_dim, n_kv_heads and kv_rows must be positive");
        a.k.stride = a.v.stride = (size_t)a.head_dim;
        a.kv_head = S * a.head_dim;
        a.kv_seq = a.n_kv_heads * a.kv_head;
    }
    a.batch = B; a.tokens = T; a.kv_rows = S; a.causal = causal; a.lengths = tl;
    a.partials = tp; a.splits = splits; a.max_len = max_len;
    RUN_OP(ctx, ec_op_attention(ctx, &a), q, k, v, o, l, part == Py_None ? NULL : part);
}

static PyObject *op_embedding(PyObject *self, PyObject *args)
{
    PyObject *ids, *table, *o;
    if (!PyArg_ParseTuple(args, "OOO", &ids, &table, &o)) return NULL;
    ec_tensor *ti = TENSOR(ids), *tt = ti ? TENSOR(table) : NULL, *to = tt ? TENSOR(o) : NULL;
    if (!to) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_embedding(ctx, ti, tt, to), ids, table, o);
}

/* op_copy(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols), and op_copy_to_f16 with the same
 * arguments (f32 src into an f16 dst) */
static PyObject *copy_block(PyObject *args, int to_f16)
{
    PyObject *s, *d;
    Py_ssize_t so, ss, dof, ds, rows, cols;
    if (!PyArg_ParseTuple(args, "OnnOnnnn", &s, &so, &ss, &d, &dof, &ds, &rows, &cols)) return NULL;
    ec_tensor *ts = TENSOR(s), *td = ts ? TENSOR(d) : NULL;
    if (!td) return NULL;
    if (so < 0 || ss < 0 || dof < 0 || ds < 0 || rows < 0 || cols < 0) return PyErr_Format(PyExc_ValueError, "negative offset, stride or size");
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    ec_cols src = {ts, (size_t)so, (size_t)ss}, dst = {td, (size_t)dof, (size_t)ds};
    RUN_OP(ctx, to_f16 ? ec_op_copy_to_f16(ctx, src, dst, rows, cols) : ec_op_copy(ctx, src, dst, rows, cols), s, d);
}

static PyObject *op_copy(PyObject *self, PyObject *args) { return copy_block(args, 0); }
static PyObject *op_copy_to_f16(PyObject *self, PyObject *args) { return copy_block(args, 1); }

static PyObject *concat_locked(ec_context *ctx, ec_tensor **parts, int n, ec_tensor *to, PyObject **objs)
{
    RUN_OP_CHECKING(ctx, ec_op_concat(ctx, parts, n, to), objs, n + 1);
}

static PyObject *op_concat(PyObject *self, PyObject *args)
{
    PyObject *seq, *o;
    if (!PyArg_ParseTuple(args, "OO", &seq, &o)) return NULL;
    PyObject *fast = PySequence_Fast(seq, "concat takes a sequence of tensors");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > 64) { Py_DECREF(fast); return PyErr_Format(PyExc_ValueError, "concat takes 1 to 64 tensors"); }
    ec_tensor *parts[64];
    PyObject *objs[65];
    for (Py_ssize_t i = 0; i < n; i++) {
        objs[i] = PySequence_Fast_GET_ITEM(fast, i);
        if (!(parts[i] = TENSOR(objs[i]))) { Py_DECREF(fast); return NULL; }
    }
    objs[n] = o;
    ec_tensor *to = TENSOR(o);
    ec_context *ctx = to ? ctx_or_null() : NULL;
    if (!ctx) { Py_DECREF(fast); return NULL; }
    PyObject *result = concat_locked(ctx, parts, (int)n, to, objs);
    Py_DECREF(fast); /* kept until the op ran: it holds the part objects */
    return result;
}

static PyObject *op_pool2d(PyObject *self, PyObject *args)
{
    PyObject *x, *y;
    long long b;
    int h, w, oh, ow;
    if (!PyArg_ParseTuple(args, "OLiiiiO", &x, &b, &h, &w, &oh, &ow, &y)) return NULL;
    ec_tensor *tx = TENSOR(x), *ty = tx ? TENSOR(y) : NULL;
    if (!ty) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_pool2d(ctx, tx, b, h, w, oh, ow, ty), x, y);
}

static PyObject *op_argmax(PyObject *self, PyObject *args)
{
    PyObject *x, *o;
    if (!PyArg_ParseTuple(args, "OO", &x, &o)) return NULL;
    ec_tensor *tx = TENSOR(x), *to = tx ? TENSOR(o) : NULL;
    if (!to) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_argmax(ctx, tx, to), x, o);
}

static PyObject *op_patchify(PyObject *self, PyObject *args)
{
    PyObject *x, *o;
    int patch;
    if (!PyArg_ParseTuple(args, "OiO", &x, &patch, &o)) return NULL;
    ec_tensor *tx = TENSOR(x), *to = tx ? TENSOR(o) : NULL;
    if (!to) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_patchify(ctx, tx, patch, to), x, o);
}

static PyObject *op_zero(PyObject *self, PyObject *args)
{
    PyObject *x;
    if (!PyArg_ParseTuple(args, "O", &x)) return NULL;
    ec_tensor *tx = TENSOR(x);
    if (!tx) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_zero(ctx, tx), x);
}

static PyObject *op_peak_fma(PyObject *self, PyObject *args)
{
    PyObject *x;
    unsigned int iterations;
    if (!PyArg_ParseTuple(args, "OI", &x, &iterations)) return NULL;
    ec_tensor *tx = TENSOR(x);
    if (!tx) return NULL;
    ec_context *ctx = ctx_or_null();
    if (!ctx) return NULL;
    RUN_OP(ctx, ec_op_peak_fma(ctx, tx, iterations), x);
}

PyMethodDef ec_py_ops_methods[] = {
    {"op_matmul", op_matmul, METH_VARARGS, "op_matmul(x, w, bias_or_None, y, accumulate=False): y (+)= x w^T + bias"},
    {"op_add", op_add, METH_VARARGS, "op_add(a, b, out, alpha=1): out = a + alpha*b (b repeated)"},
    {"op_layernorm", op_layernorm, METH_VARARGS, "op_layernorm(x, w, b_or_None, eps, y)"},
    {"op_rmsnorm", op_rmsnorm, METH_VARARGS, "op_rmsnorm(x, w, eps, y)"},
    {"op_activation", op_activation, METH_VARARGS, "op_activation(kind, x, y): kind gelu | gelu_tanh | silu"},
    {"op_silu_mul", op_silu_mul, METH_VARARGS, "op_silu_mul(gate, up_or_None, y): y = silu(gate) * up"},
    {"op_softmax", op_softmax, METH_VARARGS, "op_softmax(x, y, scale=1)"},
    {"op_rope", op_rope, METH_VARARGS, "op_rope(x, cos_sin, n_heads, head_dim, rot_dim, col_offset=0), in place"},
    {"op_attention", op_attention, METH_VARARGS, "op_attention(q, k, v, out, lengths, B, T, kv_rows, H, Hkv, D, causal, scale[, partials, splits, max_len, head_major])"},
    {"op_embedding", op_embedding, METH_VARARGS, "op_embedding(ids, table, out)"},
    {"op_copy", op_copy, METH_VARARGS, "op_copy(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols)"},
    {"op_rope_kv", op_rope_kv, METH_VARARGS, "op_rope_kv(qkv, cos_sin, H, Hkv, D, rot_dim, q_out, kv, kv_row0, head_major=False)"},
    {"op_rmsnorm_matmul", op_rmsnorm_matmul, METH_VARARGS, "op_rmsnorm_matmul(x, g, eps, h, w, bias, y, accumulate=False)"},
    {"op_silu_mul_matmul", op_silu_mul_matmul, METH_VARARGS, "op_silu_mul_matmul(gate_up, act, w, y, accumulate=False)"},
    {"op_copy_to_f16", op_copy_to_f16, METH_VARARGS, "op_copy_to_f16(src, src_off, src_stride, dst, dst_off, dst_stride, rows, cols)"},
    {"op_concat", op_concat, METH_VARARGS, "op_concat([a, b, ...], out): along the last axis"},
    {"op_pool2d", op_pool2d, METH_VARARGS, "op_pool2d(x, batch, h, w, oh, ow, y): adaptive average pooling"},
    {"op_argmax", op_argmax, METH_VARARGS, "op_argmax(x, out_int32)"},
    {"op_patchify", op_patchify, METH_VARARGS, "op_patchify(pixels, patch, out)"},
    {"op_peak_fma", op_peak_fma, METH_VARARGS, "op_peak_fma(out, iterations): FMA-throughput probe (benchmarks)"},
    {"op_zero", op_zero, METH_VARARGS, "op_zero(t): fill with zeros"},
    {NULL, NULL, 0, NULL},
};
