/* The Phi-3 / Qwen2 decoder on the device. record_chunk() is the whole model: follow a token from its
 * embedding, through every layer, to the logits there. The rest is bookkeeping: weight checks, the
 * KV cache, the RoPE table and chunking long prompts. */
#include "model/decoder.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ec_tensor *input_norm, *qkv, *qkv_bias, *o, *post_norm, *gate_up, *down; /* borrowed */
    /* The KV cache: [max_batch, 2 * kv_heads, capacity, head_dim] in cfg.kv_dtype (f16 by default: a
     * decode step after a long prompt reads it all, so half the bytes is half that time). Head-major:
     * per sequence the k heads, then the v heads, each holding its positions one after another, so
     * decode attention walks each head's keys as one contiguous stream (a CPU's prefetcher follows it;
     * with positions as rows of all heads, each key was a jump of 2 * kv_dim values, and decode
     * attention read the cache at under half the rate). rope_kv writes each new position into every head. */
    ec_tensor *kv;
} ec_layer;

struct ec_decoder {
    ec_context *ctx;
    ec_decoder_config cfg;
    int64_t q_dim, kv_dim, qkv_dim;
    float *short_factor, *long_factor;  /* owned copies (LongRoPE) */
    float *inv_freq_short, *inv_freq_long; /* [rot_dim / 2] f32, as transformers computes them */

    ec_tensor *embed, *norm, *lm_head;   /* borrowed; lm_head == embed when tied */
    ec_layer *layers;

    int64_t capacity, chunk;             /* chunk: rows (batch x tokens) of one step's activations */
    int max_batch;
    int64_t *lengths;                    /* tokens cached per sequence */

    /* One chunk's activations, [chunk, width] f32 each (owned). */
    ec_tensor *x;        /* the residual stream */
    ec_tensor *h;        /* x normalized: the input of a projection */
    ec_tensor *qkv;      /* q | k | v per token */
    ec_tensor *qr;       /* q after RoPE */
    ec_tensor *attn;     /* attention output, heads concatenated */
    ec_tensor *gate_up;  /* gate | up per token */
    ec_tensor *act;      /* silu(gate) * up */
    ec_tensor *last;     /* [max_batch, hidden]: each sequence's last token, when only its logits are wanted */
    ec_tensor *logits;   /* [logits_rows, vocab] */
    int64_t logits_rows;
    /* Per-step inputs uploaded from the host. */
    ec_tensor *ids;      /* int32 [chunk] */
    ec_tensor *rope;     /* [chunk, rot_dim]: cos | sin for each row's position */
    ec_tensor *lens;     /* int32 [max_batch]: keys per sequence after this chunk */
    ec_tensor *partials; /* split-K decode attention's partial results (ec_attention_args.partials) */
    int32_t *ids_host, *lens_host;
    float *rope_host;

    uint32_t last_dispatches;
    uint64_t weight_bytes;
};

/* ------------------------------------------------------------------------------------------------
 * Helpers */

/* The first `rows` rows of a scratch tensor, as a tensor of its own: ops take their row count from
 * the tensor's shape, and a step uses fewer rows than the scratch holds. It shares the memory and the
 * texel views (owned by the scratch), so it is never destroyed. */
static ec_tensor rows_view(const ec_tensor *t, int64_t rows)
{
    ec_tensor v = *t;
    int64_t width = t->ndim == 1 ? 1 : t->shape[t->ndim - 1];
    if (t->ndim == 1) { v.shape[0] = rows; }
    else { v.ndim = 2; v.shape[0] = rows; v.shape[1] = width; }
    v.nbytes = (size_t)(rows * width) * ec_dtype_size(t->dtype);
    return v;
}

static ec_status scratch(ec_context *ctx, ec_dtype dtype, int64_t rows, int64_t cols, ec_tensor **out)
{
    int64_t shape[2] = {rows, cols};
    EC_TRY(ec_tensor_create(ctx, dtype, cols ? 2 : 1, shape, out));
    /* Texel views made through a rows_view copy go to the list this tensor owns (tensor.h). */
    return EC_OK;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The most key ranges a decode step's attention splits each KV head into (ops.c picks how many). */
#define DECODE_SPLITS 64
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ------------------------------------------------------------------------------------------------
 * RoPE: the table of cos and sin is computed here, in f32 exactly as transformers computes it
 * (inv_freq = 1 / (factor * base ** (arange(0, dim, 2) / dim)), angle = position * inv_freq, then
 * cos and sin times the attention factor), and uploaded per step: it is small, and the device then
 * needs no transcendental of a large argument. */

static void compute_inv_freq(const ec_decoder_config *c, const float *factor, float *out)
{
    int64_t half = c->rot_dim / 2;
    float base = (float)c->rope_theta;
    for (int64_t i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)c->rot_dim;
        float p = powf(base, exponent);
        out[i] = factor ? 1.0f / (factor[i] * p) : 1.0f / p;
    }
}

static void rope_rows(const ec_decoder *d, const float *inv_freq, int64_t first_position, int64_t n, float *out)
{
    int64_t rot = d->cfg.rot_dim, half = rot / 2;
    float scale = d->cfg.attention_factor;
    for (int64_t r = 0; r < n; r++) {
        float position = (float)(first_position + r);
        for (int64_t i = 0; i < half; i++) {
            float angle = position * inv_freq[i];
            out[r * rot + i] = (float)cos((double)angle) * scale;
            out[r * rot + half + i] = (float)sin((double)angle) * scale;
        }
    }
}

ec_status ec_decoder_rope_table(const ec_decoder *d, const int64_t *positions, int64_t n, int use_long, float *out)
{
    if (use_long && !d->inv_freq_long) return ec_fail(EC_ERR_ARG, "this model has no long RoPE factors");
    for (int64_t i = 0; i < n; i++) {
        if (positions[i] < 0) return ec_fail(EC_ERR_ARG, "negative position %lld", (long long)positions[i]);
        rope_rows(d, use_long ? d->inv_freq_long : d->inv_freq_short, positions[i], 1, out + i * d->cfg.rot_dim);
    }
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Creation: check the config and every weight, then allocate the cache and the activations. */

typedef struct {
    char *buf;
    size_t len, cap;
    int count;
} problems;

static void note(problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(problems *p, const char *fmt, ...)
{
    p->count++;
    if (p->len + 1 >= p->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->len, p->cap - p->len, fmt, ap);
    va_end(ap);
    if (n > 0) p->len = p->len + (size_t)n < p->cap ? p->len + (size_t)n : p->cap - 1;
}

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    ec_tensor **slot;
} expected_weight;

static void expect(expected_weight *e, int *n, ec_tensor **slot, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void expect(expected_weight *e, int *n, ec_tensor **slot, int64_t d0, int64_t d1, const char *fmt, ...)
{
    expected_weight *w = &e[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    va_end(ap);
    w->ndim = d1 ? 2 : 1;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->slot = slot;
}

static void shape_str(int ndim, const int64_t *shape, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < ndim && len + 1 < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%lld", i ? ", " : "[", (long long)shape[i]);
    if (len + 1 < cap) snprintf(out + len, cap - len, "]");
}

static ec_status bind_weights(ec_decoder *d, const ec_named_tensor *weights, int n_weights)
{
    const ec_decoder_config *c = &d->cfg;
    int per_layer = 8, n = 0;
    expected_weight *e = calloc((size_t)(3 + c->layers * per_layer), sizeof *e);
    char *seen = calloc((size_t)(3 + c->layers * per_layer), 1);
    char *msg = malloc(900);
    if (!e || !seen || !msg) { free(e); free(seen); free(msg); return ec_fail(EC_ERR_OOM, "out of host memory"); }
    int64_t D = c->hidden, F = c->intermediate;
    expect(e, &n, &d->embed, c->vocab, D, "model.embed_tokens.weight");
    expect(e, &n, &d->norm, D, 0, "model.norm.weight");
    if (!c->tied) expect(e, &n, &d->lm_head, c->vocab, D, "lm_head.weight");
    for (int64_t l = 0; l < c->layers; l++) {
        ec_layer *L = &d->layers[l];
        const char *p = "model.layers";
        expect(e, &n, &L->input_norm, D, 0, "%s.%lld.input_layernorm.weight", p, (long long)l);
        expect(e, &n, &L->qkv, d->qkv_dim, D, "%s.%lld.self_attn.qkv_proj.weight", p, (long long)l);
        if (c->qkv_bias) expect(e, &n, &L->qkv_bias, d->qkv_dim, 0, "%s.%lld.self_attn.qkv_proj.bias", p, (long long)l);
        expect(e, &n, &L->o, D, d->q_dim, "%s.%lld.self_attn.o_proj.weight", p, (long long)l);
        expect(e, &n, &L->post_norm, D, 0, "%s.%lld.post_attention_layernorm.weight", p, (long long)l);
        expect(e, &n, &L->gate_up, 2 * F, D, "%s.%lld.mlp.gate_up_proj.weight", p, (long long)l);
        expect(e, &n, &L->down, D, F, "%s.%lld.mlp.down_proj.weight", p, (long long)l);
    }

    problems pr = {msg, 0, 900, 0};
    char got[64], want[64];
    for (int i = 0; i < n_weights; i++) {
        const ec_named_tensor *w = &weights[i];
        int j = 0;
        while (j < n && strcmp(e[j].name, w->name) != 0) j++;
        if (j == n) { note(&pr, "; unexpected %s", w->name); continue; }
        if (seen[j]) { note(&pr, "; %s given twice", w->name); continue; }
        seen[j] = 1;
        if (!w->tensor) { note(&pr, "; %s is not a tensor", w->name); continue; }
        if (w->tensor->ctx != d->ctx) { note(&pr, "; %s is on another device", w->name); continue; }
        if (w->tensor->dtype == EC_I32) { note(&pr, "; %s is int32, not a float type", w->name); continue; }
        int same = w->tensor->ndim == e[j].ndim;
        for (int k = 0; same && k < e[j].ndim; k++) same = w->tensor->shape[k] == e[j].shape[k];
        if (!same) {
            shape_str(w->tensor->ndim, w->tensor->shape, got, sizeof got);
            shape_str(e[j].ndim, e[j].shape, want, sizeof want);
            note(&pr, "; %s is %s, expected %s", w->name, got, want);
            continue;
        }
        *e[j].slot = w->tensor;
    }
    for (int j = 0; j < n; j++)
        if (!seen[j]) note(&pr, "; missing %s", e[j].name);
    free(e);
    free(seen);
    if (pr.count) {
        ec_status s = ec_fail(EC_ERR_FORMAT, "%s decoder weights: %d problem%s%s%s", c->model_type, pr.count,
                              pr.count > 1 ? "s" : "", msg, pr.len + 1 >= pr.cap ? " ..." : "");
        free(msg);
        return s;
    }
    free(msg);
    if (c->tied) d->lm_head = d->embed;
    return EC_OK;
}

static ec_status check_config(const ec_decoder_config *c)
{
    if (c->vocab < 1 || c->hidden < 1 || c->intermediate < 1 || c->layers < 1 || c->heads < 1 || c->kv_heads < 1 || c->head_dim < 1)
        return ec_fail(EC_ERR_ARG, "%s config: sizes must be positive (vocab %lld, hidden %lld, intermediate %lld, layers %lld, "
                       "heads %lld, kv heads %lld, head dim %lld)", c->model_type, (long long)c->vocab, (long long)c->hidden,
                       (long long)c->intermediate, (long long)c->layers, (long long)c->heads, (long long)c->kv_heads,
                       (long long)c->head_dim);
    if (c->heads % c->kv_heads)
        return ec_fail(EC_ERR_ARG, "%s config: %lld attention heads cannot share %lld key/value heads", c->model_type,
                       (long long)c->heads, (long long)c->kv_heads);
    if (c->head_dim > 256) return ec_fail(EC_ERR_ARG, "%s config: head dimension %lld is over the attention kernel's 256", c->model_type, (long long)c->head_dim);
    if (c->rot_dim < 2 || c->rot_dim % 2 || c->rot_dim > c->head_dim)
        return ec_fail(EC_ERR_ARG, "%s config: rotary dimension %lld must be even and within the head dimension %lld", c->model_type,
                       (long long)c->rot_dim, (long long)c->head_dim);
    if (!(c->rope_theta > 0)) return ec_fail(EC_ERR_ARG, "%s config: rope_theta must be positive", c->model_type);
    if (!(c->rms_eps >= 0)) return ec_fail(EC_ERR_ARG, "%s config: rms_norm_eps must be non-negative", c->model_type);
    if ((c->short_factor == NULL) != (c->long_factor == NULL))
        return ec_fail(EC_ERR_ARG, "%s config: LongRoPE needs both short and long factors", c->model_type);
    if (c->short_factor && c->original_max < 1)
        return ec_fail(EC_ERR_ARG, "%s config: LongRoPE needs original_max_position_embeddings", c->model_type);
    if (c->window < 0) return ec_fail(EC_ERR_ARG, "%s config: negative sliding window", c->model_type);
    if (c->head_dim % 2) return ec_fail(EC_ERR_ARG, "%s config: head_dim %lld is odd (RoPE rotates pairs)", c->model_type, (long long)c->head_dim);
    if (c->kv_dtype != EC_F32 && c->kv_dtype != EC_F16)
        return ec_fail(EC_ERR_ARG, "the KV cache must be float16 or float32, not %s", ec_dtype_name(c->kv_dtype));
    return EC_OK;
}

ec_status ec_decoder_create(ec_context *ctx, const ec_decoder_config *cfg, const ec_named_tensor *weights, int n_weights,
                            int64_t capacity, int max_batch, int64_t chunk, ec_decoder **out)
{
    *out = NULL;
    EC_TRY(check_config(cfg));
    if (capacity < 1) return ec_fail(EC_ERR_ARG, "the cache capacity (max_context) must be at least 1 token, not %lld", (long long)capacity);
    if (max_batch < 1) return ec_fail(EC_ERR_ARG, "max_batch must be at least 1, not %d", max_batch);
    if (chunk < 1) return ec_fail(EC_ERR_ARG, "the prefill chunk must be at least 1 token, not %lld", (long long)chunk);
    ec_decoder *d = calloc(1, sizeof *d);
    if (!d) return ec_fail(EC_ERR_OOM, "out of host memory");
    d->ctx = ctx;
    d->cfg = *cfg;
    d->capacity = capacity;
    d->max_batch = max_batch;
    d->chunk = max64(chunk, max_batch); /* a decode step of every sequence is one chunk */
    d->q_dim = cfg->heads * cfg->head_dim;
    d->kv_dim = cfg->kv_heads * cfg->head_dim;
    d->qkv_dim = d->q_dim + 2 * d->kv_dim;
    int64_t half = cfg->rot_dim / 2;
    ec_status s = EC_OK;
    d->layers = calloc((size_t)cfg->layers, sizeof *d->layers);
    d->lengths = calloc((size_t)max_batch, sizeof *d->lengths);
    d->inv_freq_short = malloc((size_t)half * sizeof(float));
    d->ids_host = malloc((size_t)d->chunk * sizeof(int32_t));
    d->lens_host = malloc((size_t)max_batch * sizeof(int32_t));
    d->rope_host = malloc((size_t)(d->chunk * cfg->rot_dim) * sizeof(float));
    if (!d->layers || !d->lengths || !d->inv_freq_short || !d->ids_host || !d->lens_host || !d->rope_host) { s = ec_fail(EC_ERR_OOM, "out of host memory"); goto fail; }
    if (cfg->short_factor) {
        d->short_factor = malloc((size_t)half * sizeof(float));
        d->long_factor = malloc((size_t)half * sizeof(float));
        d->inv_freq_long = malloc((size_t)half * sizeof(float));
        if (!d->short_factor || !d->long_factor || !d->inv_freq_long) { s = ec_fail(EC_ERR_OOM, "out of host memory"); goto fail; }
        memcpy(d->short_factor, cfg->short_factor, (size_t)half * sizeof(float));
        memcpy(d->long_factor, cfg->long_factor, (size_t)half * sizeof(float));
        d->cfg.short_factor = d->short_factor;
        d->cfg.long_factor = d->long_factor;
        compute_inv_freq(cfg, d->short_factor, d->inv_freq_short);
        compute_inv_freq(cfg, d->long_factor, d->inv_freq_long);
    } else {
        compute_inv_freq(cfg, NULL, d->inv_freq_short);
    }
    if ((s = bind_weights(d, weights, n_weights))) goto fail;

    /* The cache of one layer is read through texel views; attention splits it between views by sequence, so
     * the reach limits one sequence's cache. */
    uint64_t kv_values = (uint64_t)max_batch * (uint64_t)capacity * (uint64_t)(2 * d->kv_dim);
    uint64_t seq_bytes = (uint64_t)capacity * (uint64_t)(2 * d->kv_dim) * ec_dtype_size(cfg->kv_dtype);
    uint64_t reach = ec_texel_reach(ctx) - 512;
    if (seq_bytes > reach || kv_values > UINT32_MAX) {
        s = ec_fail(EC_ERR_LIMIT, "the KV cache of one layer would take %.0f MiB for each of %d sequence(s) of %lld tokens, over "
                    "the device's %.0f MiB reach; lower max_context or max_batch", seq_bytes / 1048576.0, max_batch,
                    (long long)capacity, reach / 1048576.0);
        goto fail;
    }
    for (int64_t l = 0; l < cfg->layers; l++) {
        int64_t shape[4] = {max_batch, 2 * cfg->kv_heads, capacity, cfg->head_dim};
        if ((s = ec_tensor_create(ctx, cfg->kv_dtype, 4, shape, &d->layers[l].kv))) goto fail;
    }
    int64_t R = d->chunk, D = cfg->hidden;
    if ((s = scratch(ctx, EC_F32, R, D, &d->x)) || (s = scratch(ctx, EC_F32, R, D, &d->h)) ||
        (s = scratch(ctx, EC_F32, R, d->qkv_dim, &d->qkv)) || (s = scratch(ctx, EC_F32, R, d->q_dim, &d->attn)) ||
        (s = scratch(ctx, EC_F32, R, d->q_dim, &d->qr)) ||
        (s = scratch(ctx, EC_F32, R, 2 * cfg->intermediate, &d->gate_up)) ||
        (s = scratch(ctx, EC_F32, R, cfg->intermediate, &d->act)) || (s = scratch(ctx, EC_F32, max_batch, D, &d->last)) ||
        (s = scratch(ctx, EC_F32, max_batch, cfg->vocab, &d->logits)) || (s = scratch(ctx, EC_I32, R, 0, &d->ids)) ||
        (s = scratch(ctx, EC_F32, R, cfg->rot_dim, &d->rope)) || (s = scratch(ctx, EC_I32, max_batch, 0, &d->lens)) ||
        (s = scratch(ctx, EC_F32, (int64_t)max_batch * cfg->heads * DECODE_SPLITS, cfg->head_dim + 2, &d->partials)))
        goto fail;
    d->logits_rows = max_batch;

    for (int64_t l = 0; l < cfg->layers; l++) {
        ec_layer *L = &d->layers[l];
        d->weight_bytes += L->input_norm->nbytes + L->qkv->nbytes + (L->qkv_bias ? L->qkv_bias->nbytes : 0) + L->o->nbytes +
                           L->post_norm->nbytes + L->gate_up->nbytes + L->down->nbytes;
    }
    d->weight_bytes += d->norm->nbytes + d->lm_head->nbytes;
    *out = d;
    return EC_OK;
fail:
    ec_decoder_destroy(d);
    return s;
}

void ec_decoder_destroy(ec_decoder *d)
{
    if (!d) return;
    if (d->layers)
        for (int64_t l = 0; l < d->cfg.layers; l++) ec_tensor_destroy(d->layers[l].kv);
    ec_tensor *owned[] = {d->x, d->h, d->qkv, d->qr, d->attn, d->gate_up, d->act, d->last, d->logits, d->ids, d->rope, d->lens,
                          d->partials};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) ec_tensor_destroy(owned[i]);
    free(d->layers);
    free(d->lengths);
    free(d->short_factor);
    free(d->long_factor);
    free(d->inv_freq_short);
    free(d->inv_freq_long);
    free(d->ids_host);
    free(d->lens_host);
    free(d->rope_host);
    free(d);
}

/* ------------------------------------------------------------------------------------------------
 * The forward pass */

/* RoPE on this chunk's q and k, q into qr and k, v into each sequence's cache rows after what it holds. */
static ec_status rope_and_append(ec_decoder *d, ec_tensor *kv, ec_tensor *qkv, ec_tensor *qr, int first, int batch,
                                 int64_t tokens, int64_t t0)
{
    const ec_decoder_config *c = &d->cfg;
    size_t row = (size_t)(2 * d->kv_dim), cap = (size_t)d->capacity;
    for (int b = 0; b < batch; b++) {
        size_t r0 = (size_t)(b * tokens);
        ec_cols src = {qkv, r0 * (size_t)d->qkv_dim, (size_t)d->qkv_dim};
        ec_cols table = {d->rope, r0 * (size_t)c->rot_dim, (size_t)c->rot_dim};
        ec_cols q = {qr, r0 * (size_t)d->q_dim, (size_t)d->q_dim};
        ec_cols dst = {kv, (size_t)(first + b) * cap * row + (size_t)(d->lengths[first + b] + t0) * (size_t)c->head_dim,
                       (size_t)c->head_dim};
        EC_TRY(ec_op_rope_kv(d->ctx, src, tokens, (int)c->heads, (int)c->kv_heads, (int)c->head_dim, (int)c->rot_dim, table, q, dst,
                             (int64_t)(cap * (size_t)c->head_dim)));
    }
    return EC_OK;
}

/* Records one chunk: `tokens` tokens of each of `batch` sequences, rows b * tokens + t, whose inputs
 * (ids or embeddings in x, the RoPE table, the lengths) are already on the device. */
static ec_status record_chunk(ec_decoder *d, int first, int batch, int64_t tokens, int64_t t0, int from_ids, ec_logits_mode logits)
{
    ec_context *ctx = d->ctx;
    const ec_decoder_config *c = &d->cfg;
    int64_t R = batch * tokens;
    ec_tensor x = rows_view(d->x, R), h = rows_view(d->h, R), qkv = rows_view(d->qkv, R), attn = rows_view(d->attn, R);
    ec_tensor gate_up = rows_view(d->gate_up, R), act = rows_view(d->act, R), qr = rows_view(d->qr, R);

    int64_t max_len = 0; /* keys of the longest sequence once this chunk is in */
    for (int b = 0; b < batch; b++) max_len = max64(max_len, d->lengths[first + b] + t0 + tokens);

    if (from_ids) {
        ec_tensor ids = rows_view(d->ids, R);
        EC_TRY(ec_op_embedding(ctx, &ids, d->embed, &x));
    }
    for (int64_t l = 0; l < c->layers; l++) {
        ec_layer *L = &d->layers[l];
        /* Attention: q, k, v = norm(x) Wqkv (+ b) (the norm inside the mat-vec when decoding); rotate q into
         * qr and k into the cache, append v; attend; x += o_proj(attention). */
        EC_TRY(ec_op_rmsnorm_matmul(ctx, &x, L->input_norm, c->rms_eps, &h, L->qkv, L->qkv_bias, &qkv, 0));
        EC_TRY(rope_and_append(d, L->kv, &qkv, &qr, first, batch, tokens, t0));
        size_t seq_off = (size_t)first * (size_t)d->capacity * (size_t)(2 * d->kv_dim), head = (size_t)(d->capacity * c->head_dim);
        ec_attention_args a = {
            .q = ec_whole(&qr),
            .k = {L->kv, seq_off, (size_t)c->head_dim},
            .v = {L->kv, seq_off + (size_t)c->kv_heads * head, (size_t)c->head_dim},
            .out = ec_whole(&attn),
            .batch = batch, .tokens = tokens, .kv_rows = d->capacity,
            .kv_seq = d->capacity * 2 * d->kv_dim, .kv_head = (int64_t)head,
            .n_heads = (int)c->heads, .n_kv_heads = (int)c->kv_heads, .head_dim = (int)c->head_dim,
            .causal = 1, .scale = (float)(1.0 / sqrt((double)c->head_dim)), .lengths = d->lens,
            .partials = d->partials, .max_len = max_len,
        };
        EC_TRY(ec_op_attention(ctx, &a));
        EC_TRY(ec_op_matmul(ctx, &attn, L->o, NULL, &x, 1));

        /* MLP: gate | up = norm(x) Wgate_up; x += down(silu(gate) * up) (both fused into the mat-vecs when decoding). */
        EC_TRY(ec_op_rmsnorm_matmul(ctx, &x, L->post_norm, c->rms_eps, &h, L->gate_up, NULL, &gate_up, 0));
        EC_TRY(ec_op_silu_mul_matmul(ctx, &gate_up, &act, L->down, &x, 1));
    }

    /* Final norm and lm_head, only for the rows whose logits are wanted. */
    if (logits == EC_LOGITS_ALL) {
        ec_tensor out = rows_view(d->logits, R);
        EC_TRY(ec_op_rmsnorm_matmul(ctx, &x, d->norm, c->rms_eps, &h, d->lm_head, NULL, &out, 0));
    } else if (logits == EC_LOGITS_LAST) {
        ec_tensor out = rows_view(d->logits, batch), hb = rows_view(d->h, batch), last = rows_view(d->last, batch);
        ec_tensor *src = &x;
        if (tokens > 1) {
            ec_cols rows = {&x, (size_t)((tokens - 1) * c->hidden), (size_t)(tokens * c->hidden)};
            EC_TRY(ec_op_copy(ctx, rows, ec_whole(&last), batch, c->hidden));
            src = &last;
        }
        EC_TRY(ec_op_rmsnorm_matmul(ctx, src, d->norm, c->rms_eps, &hb, d->lm_head, NULL, &out, 0));
    }
    return EC_OK;
}

/* Uploads a chunk's inputs. Runs before the chunk is recorded: a write to device memory submits any
 * open batch first. */
static ec_status upload_chunk(ec_decoder *d, const ec_decoder_step *s, int64_t t0, int64_t tokens, const int *use_long)
{
    int B = s->batch;
    int64_t T = s->tokens, D = d->cfg.hidden, rot = d->cfg.rot_dim;
    for (int b = 0; b < B; b++) {
        int64_t cached = d->lengths[s->first + b];
        const float *inv = use_long[b] ? d->inv_freq_long : d->inv_freq_short;
        rope_rows(d, inv, cached + t0, tokens, d->rope_host + (size_t)(b * tokens * rot));
        d->lens_host[b] = (int32_t)(cached + t0 + tokens);
        if (s->ids)
            memcpy(d->ids_host + b * tokens, s->ids + b * T + t0, (size_t)tokens * sizeof(int32_t));
        else
            EC_TRY(ec_write(d->ctx, &d->x->mem, (VkDeviceSize)(b * tokens * D) * 4, s->embeds + (size_t)((b * T + t0) * D),
                            (size_t)(tokens * D) * 4));
    }
    if (s->ids) EC_TRY(ec_write(d->ctx, &d->ids->mem, 0, d->ids_host, (size_t)(B * tokens) * sizeof(int32_t)));
    EC_TRY(ec_write(d->ctx, &d->rope->mem, 0, d->rope_host, (size_t)(B * tokens * rot) * sizeof(float)));
    return ec_write(d->ctx, &d->lens->mem, 0, d->lens_host, (size_t)B * sizeof(int32_t));
}

/* Grows the logits buffer for all-position logits: up to one chunk of rows, but no more than 64 MiB
 * (a large vocabulary would make [chunk, vocab] the biggest activation by far). */
static ec_status logits_for_all(ec_decoder *d, int batch, int64_t *tokens_per_chunk)
{
    int64_t budget = max64(1, (64ll << 20) / (d->cfg.vocab * 4));
    int64_t want = max64(d->max_batch, min64(d->chunk, budget));
    if (d->logits_rows < want) {
        ec_tensor *t;
        EC_TRY(scratch(d->ctx, EC_F32, want, d->cfg.vocab, &t));
        ec_tensor_destroy(d->logits);
        d->logits = t;
        d->logits_rows = want;
    }
    *tokens_per_chunk = min64(*tokens_per_chunk, max64(1, d->logits_rows / batch));
    return EC_OK;
}

ec_status ec_decoder_forward(ec_decoder *d, const ec_decoder_step *s)
{
    const ec_decoder_config *c = &d->cfg;
    int B = s->batch;
    int64_t T = s->tokens;
    if (B < 1 || s->first < 0 || s->first + B > d->max_batch)
        return ec_fail(EC_ERR_ARG, "sequences %d to %d do not exist: the decoder holds %d (max_batch)", s->first, s->first + B - 1, d->max_batch);
    if (T < 1) return ec_fail(EC_ERR_ARG, "a forward step needs at least one token");
    if (!s->ids == !s->embeds) return ec_fail(EC_ERR_ARG, "give either token ids or input embeddings");
    if (s->logits != EC_LOGITS_NONE && !s->logits_out) return ec_fail(EC_ERR_ARG, "no buffer for the logits");
    if (s->ids)
        for (int64_t i = 0; i < B * T; i++)
            if (s->ids[i] < 0 || s->ids[i] >= c->vocab)
                return ec_fail(EC_ERR_ARG, "token id %d is outside the vocabulary of %lld tokens", s->ids[i], (long long)c->vocab);
    int use_long[B];
    for (int b = 0; b < B; b++) {
        int64_t cached = d->lengths[s->first + b], total = cached + T;
        if (total > d->capacity)
            return ec_fail(EC_ERR_LIMIT, "sequence %d would hold %lld tokens (%lld cached + %lld new), more than the cache's "
                           "capacity of %lld (max_context)", s->first + b, (long long)total, (long long)cached, (long long)T,
                           (long long)d->capacity);
        if (c->window && total > c->window)
            return ec_fail(EC_ERR_LIMIT, "sequence %d would hold %lld tokens, past the model's sliding attention window of %lld "
                           "tokens (eyecare attends over the whole sequence, which is exact only within the window)",
                           s->first + b, (long long)total, (long long)c->window);
        /* LongRoPE picks its factors once per forward call from the sequence's length at its end, as
         * transformers does (max(position_ids) + 1 > original_max_position_embeddings): every chunk of a
         * long prompt uses the long factors, and decoding switches when the sequence crosses over. */
        use_long[b] = d->inv_freq_long && (s->force_long || total > c->original_max);
    }

    int64_t per_chunk = max64(1, d->chunk / B);
    if (s->logits == EC_LOGITS_ALL) EC_TRY(logits_for_all(d, B, &per_chunk));
    int64_t V = c->vocab;
    for (int64_t t0 = 0; t0 < T;) {
        int64_t tokens = min64(per_chunk, T - t0);
        int final = t0 + tokens == T;
        ec_logits_mode mode = s->logits == EC_LOGITS_ALL ? EC_LOGITS_ALL : final ? s->logits : EC_LOGITS_NONE;
        EC_TRY(upload_chunk(d, s, t0, tokens, use_long));
        EC_TRY(ec_batch_begin(d->ctx));
        EC_TRY(record_chunk(d, s->first, B, tokens, t0, s->ids != NULL, mode));
        d->last_dispatches = d->ctx->dispatches;
        EC_TRY(ec_batch_submit(d->ctx));
        if (mode == EC_LOGITS_ALL)
            for (int b = 0; b < B; b++)
                EC_TRY(ec_read(d->ctx, &d->logits->mem, (VkDeviceSize)(b * tokens * V) * 4, s->logits_out + (size_t)((b * T + t0) * V),
                               (size_t)(tokens * V) * 4));
        else if (mode == EC_LOGITS_LAST)
            EC_TRY(ec_read(d->ctx, &d->logits->mem, 0, s->logits_out, (size_t)(B * V) * 4));
        t0 += tokens;
    }
    for (int b = 0; b < B; b++) d->lengths[s->first + b] += T;
    return EC_OK;
}

ec_status ec_decoder_embed(ec_decoder *d, const int32_t *ids, int64_t n, float *out)
{
    int64_t D = d->cfg.hidden;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= d->cfg.vocab)
            return ec_fail(EC_ERR_ARG, "token id %d is outside the vocabulary of %lld tokens", ids[i], (long long)d->cfg.vocab);
    for (int64_t i0 = 0; i0 < n; i0 += d->chunk) {
        int64_t rows = min64(d->chunk, n - i0);
        ec_tensor id_view = rows_view(d->ids, rows), x = rows_view(d->x, rows);
        EC_TRY(ec_write(d->ctx, &d->ids->mem, 0, ids + i0, (size_t)rows * sizeof(int32_t)));
        EC_TRY(ec_op_embedding(d->ctx, &id_view, d->embed, &x));
        EC_TRY(ec_batch_submit(d->ctx));
        EC_TRY(ec_read(d->ctx, &d->x->mem, 0, out + i0 * D, (size_t)(rows * D) * 4));
    }
    return EC_OK;
}

int64_t ec_decoder_length(const ec_decoder *d, int seq)
{
    return seq >= 0 && seq < d->max_batch ? d->lengths[seq] : -1;
}

ec_status ec_decoder_set_length(ec_decoder *d, int seq, int64_t length)
{
    if (seq < 0 || seq >= d->max_batch) return ec_fail(EC_ERR_ARG, "sequence %d does not exist: the decoder holds %d", seq, d->max_batch);
    if (length < 0 || length > d->lengths[seq])
        return ec_fail(EC_ERR_ARG, "sequence %d holds %lld tokens: it can be cut to 0..%lld, not %lld", seq,
                       (long long)d->lengths[seq], (long long)d->lengths[seq], (long long)length);
    d->lengths[seq] = length;
    return EC_OK;
}

int64_t ec_decoder_capacity(const ec_decoder *d) { return d->capacity; }
int ec_decoder_max_batch(const ec_decoder *d) { return d->max_batch; }
uint32_t ec_decoder_last_dispatches(const ec_decoder *d) { return d->last_dispatches; }
uint64_t ec_decoder_weight_bytes(const ec_decoder *d) { return d->weight_bytes; }
