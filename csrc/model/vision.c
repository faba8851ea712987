/* The SigLIP vision tower, the Layer-wise Dense Connector, the projector and tile compression, as one
 * recorded batch of ops per chunk of views. See vision.h for the life of a tower and docs/architecture.md (1.2-1.3)
 * for what it computes. Read top to bottom: config, weights, scratch, the pass. */
#include "model/vision.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ec_tensor *ln1_w, *ln1_b;
    ec_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    ec_tensor *ln2_w, *ln2_b;
    ec_tensor *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} layer_weights;

struct ec_vision {
    ec_context *ctx;
    ec_vision_config c;

    /* weights, borrowed from the caller */
    ec_tensor *patch_w, *patch_b, *pos;
    layer_weights *layer;                    /* [c.layers] */
    ec_tensor *proj_w[EC_VISION_MAX_PROJECTOR], *proj_b[EC_VISION_MAX_PROJECTOR];
    ec_vision_slot *slots;   /* 3 embedding slots, then 16 per layer, then the projector's */
    int n_slots;
    char layer_prefix[128];  /* "<vision prefix>encoder.layers." */
    int layers_available;
    int d_llm;

    /* owned, derived from the weights */
    ec_tensor *pos32;    /* the position table in f32: ec_op_add takes f32 operands, weights may be 16-bit */
    ec_tensor *lengths;  /* int32 [max_views], all `tokens`: each query sees every key of its own view */

    /* scratch for max_views views; before a pass each tensor's first dimension is set to that pass's
     * rows (views, or views * tokens), so the ops see exactly the pass's shapes */
    int max_views;
    ec_tensor *pixels;                       /* [views, C, S, S] */
    ec_tensor *patches;                      /* [views * T, C * P * P] */
    ec_tensor *h, *xn, *q, *k, *v, *att;     /* [views * T, D] */
    ec_tensor *mlp;                          /* [views * T, F] */
    ec_tensor *feat;                         /* [views * T, D]: h[feature_index] when a later layer runs */
    ec_tensor *mean[EC_VISION_MAX_GROUPS];   /* [views * T, D]: running means of the LDC groups */
    ec_tensor *cat;                          /* [views * T, (1 + groups) * D] */
    ec_tensor *proj[2];                      /* [views * T, d_llm]: the projector's layers, ping-pong */
    ec_tensor *pooled;                       /* [views * Tp, d_llm] */
    ec_tensor *final;                        /* which proj[] holds the last pass's tokens */
    double last_ms;                          /* device time of the last pass's batch */
    uint32_t last_dispatches;                /* dispatches it recorded (each costs ~40 us on lavapipe) */
};

/* ------------------------------------------------------------------------------------------------
 * Config */

ec_status ec_vision_config_check(ec_vision_config *c)
{
    if (c->hidden <= 0 || c->intermediate <= 0 || c->layers <= 0 || c->heads <= 0 || c->channels <= 0)
        return ec_fail(EC_ERR_ARG, "vision_config: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads "
                       "and num_channels must be positive (got %d, %d, %d, %d, %d)",
                       c->hidden, c->intermediate, c->layers, c->heads, c->channels);
    if (c->hidden % c->heads)
        return ec_fail(EC_ERR_ARG, "vision_config: hidden_size %d is not a multiple of num_attention_heads %d", c->hidden, c->heads);
    c->head_dim = c->hidden / c->heads;
    if (c->head_dim > 256) return ec_fail(EC_ERR_ARG, "vision_config: head dimension %d is over 256", c->head_dim);
    if (c->patch <= 0 || c->image_size < c->patch)
        return ec_fail(EC_ERR_ARG, "vision_config: image_size %d is smaller than patch_size %d", c->image_size, c->patch);
    if (!(c->eps > 0.0f) || !isfinite(c->eps)) return ec_fail(EC_ERR_ARG, "vision_config: layer_norm_eps must be positive");
    if (c->act != EC_GELU_TANH && c->act != EC_GELU_ERF) return ec_fail(EC_ERR_ARG, "vision_config: hidden_act must be a GELU");
    /* The patch embedding is a stride-P convolution: floor(S / P) patches a side (384 / 14 = 27). A
     * config.json is untrusted: bound the sides before multiplying, so no product can wrap. */
    if (c->image_size > (1 << 16) || c->patch > (1 << 10))
        return ec_fail(EC_ERR_LIMIT, "vision_config: image_size %d or patch_size %d is too large", c->image_size, c->patch);
    c->grid = c->image_size / c->patch;
    int64_t tokens = (int64_t)c->grid * c->grid;
    /* Every op indexes with 32-bit integers: keep one view's widest activation far below 2^32. */
    int64_t concat = (int64_t)c->hidden * (1 + EC_VISION_MAX_GROUPS);
    int64_t widest = c->intermediate > concat ? c->intermediate : concat;
    if (tokens * widest > (1 << 28) || (int64_t)c->channels * c->patch * c->patch > (1 << 20))
        return ec_fail(EC_ERR_LIMIT, "vision_config: %lld tokens of width up to %lld per view are too large", (long long)tokens,
                       (long long)widest);
    c->tokens = (int)tokens;

    int L = c->layers;
    if (c->feature_layer < -(L + 1) || c->feature_layer > L)
        return ec_fail(EC_ERR_ARG, "connector.feature_layer %d is outside the %d hidden states h[0..%d] (negative values count "
                       "from the end, -1 = h[%d])", c->feature_layer, L + 1, L, L);
    c->feature_index = c->feature_layer < 0 ? L + 1 + c->feature_layer : c->feature_layer;
    if (c->n_groups < 0 || c->n_groups > EC_VISION_MAX_GROUPS)
        return ec_fail(EC_ERR_ARG, "connector.groups: %d groups (at most %d)", c->n_groups, EC_VISION_MAX_GROUPS);
    int highest = c->feature_index;
    for (int g = 0; g < c->n_groups; g++) {
        if (c->group_lo[g] < 0 || c->group_lo[g] >= c->group_hi[g] || c->group_hi[g] > L + 1)
            return ec_fail(EC_ERR_ARG, "connector.groups[%d] = [%d, %d] must be a half-open range [start, end) of hidden-state "
                           "indices with 0 <= start < end <= %d (the tower has %d layers: h[0..%d])", g, c->group_lo[g],
                           c->group_hi[g], L + 1, L, L);
        if (c->group_hi[g] - 1 > highest) highest = c->group_hi[g] - 1;
    }
    /* Layers past the highest hidden state the connector reads are never computed. */
    c->layers_run = highest;
    if (c->projector_linears < 1 || c->projector_linears > EC_VISION_MAX_PROJECTOR)
        return ec_fail(EC_ERR_ARG, "connector.projector: mlp%dx_gelu has to have 1 to %d linear layers", c->projector_linears,
                       EC_VISION_MAX_PROJECTOR);
    if (c->d_llm < 0 || c->d_llm > (1 << 20)) return ec_fail(EC_ERR_ARG, "the projector's output width %d is invalid", c->d_llm);
    if (c->tile_pool < 1) return ec_fail(EC_ERR_ARG, "adaptive_resolution.tile_pool must be at least 1, not %d", c->tile_pool);
    c->pooled_side = (c->grid + c->tile_pool - 1) / c->tile_pool;
    c->pooled_tokens = c->pooled_side * c->pooled_side;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * The table of weights */

/* The per-layer tensors, in Hugging Face's names below "encoder.layers.N.". */
static const char *const layer_names[16] = {
    "layer_norm1.weight", "layer_norm1.bias",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
    "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "layer_norm2.weight", "layer_norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
};

static ec_tensor **layer_field(layer_weights *w, int i)
{
    ec_tensor **f[16] = {&w->ln1_w, &w->ln1_b, &w->q_w, &w->q_b, &w->k_w, &w->k_b, &w->v_w, &w->v_b,
                         &w->o_w, &w->o_b, &w->ln2_w, &w->ln2_b, &w->fc1_w, &w->fc1_b, &w->fc2_w, &w->fc2_b};
    return f[i];
}

static void layer_shape(const ec_vision_config *c, int i, int *ndim, int64_t *shape)
{
    int64_t D = c->hidden, F = c->intermediate;
    switch (i) {
    case 12: *ndim = 2; shape[0] = F; shape[1] = D; break;  /* fc1.weight */
    case 13: *ndim = 1; shape[0] = F; break;                /* fc1.bias */
    case 14: *ndim = 2; shape[0] = D; shape[1] = F; break;  /* fc2.weight */
    default:
        if (i >= 2 && i <= 9 && i % 2 == 0) { *ndim = 2; shape[0] = D; shape[1] = D; }
        else { *ndim = 1; shape[0] = D; }
    }
}

static void add_slot(ec_vision *v, const char *prefix, const char *name, int layer, int required, ec_tensor **dst,
                     int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    ec_vision_slot *s = &v->slots[v->n_slots++];
    if (layer >= 0) snprintf(s->name, sizeof s->name, "%sencoder.layers.%d.%s", prefix, layer, name);
    else snprintf(s->name, sizeof s->name, "%s%s", prefix, name);
    s->ndim = ndim;
    s->shape[0] = d0; s->shape[1] = d1; s->shape[2] = d2; s->shape[3] = d3;
    s->layer = layer;
    s->required = required;
    s->dst = dst;
}

ec_status ec_vision_create(ec_context *ctx, const ec_vision_config *config, const char *vision_prefix,
                           const char *connector_prefix, ec_vision **out)
{
    *out = NULL;
    if (strlen(vision_prefix) > 100 || strlen(connector_prefix) > 100) return ec_fail(EC_ERR_ARG, "weight name prefixes are limited to 100 characters");
    ec_vision_config c = *config;
    EC_TRY(ec_vision_config_check(&c));
    ec_vision *v = calloc(1, sizeof *v);
    if (!v) return ec_fail(EC_ERR_OOM, "out of host memory");
    v->ctx = ctx;
    v->c = c;
    snprintf(v->layer_prefix, sizeof v->layer_prefix, "%sencoder.layers.", vision_prefix);
    v->layer = calloc((size_t)c.layers, sizeof *v->layer);
    v->slots = calloc(3 + (size_t)c.layers * 16 + 2 * (size_t)c.projector_linears, sizeof *v->slots);
    if (!v->layer || !v->slots) { ec_vision_destroy(v); return ec_fail(EC_ERR_OOM, "out of host memory"); }

    int64_t D = c.hidden;
    const char *vp = vision_prefix;
    add_slot(v, vp, "embeddings.patch_embedding.weight", -1, 1, &v->patch_w, 4, D, c.channels, c.patch, c.patch);
    add_slot(v, vp, "embeddings.patch_embedding.bias", -1, 1, &v->patch_b, 1, D, 0, 0, 0);
    add_slot(v, vp, "embeddings.position_embedding.weight", -1, 1, &v->pos, 2, c.tokens, D, 0, 0);
    for (int l = 0; l < c.layers; l++)
        for (int i = 0; i < 16; i++) {
            int64_t shape[2];
            int ndim;
            layer_shape(&c, i, &ndim, shape);
            add_slot(v, vp, layer_names[i], l, l < c.layers_run, layer_field(&v->layer[l], i), ndim, shape[0], ndim > 1 ? shape[1] : 0, 0, 0);
        }
    /* The projector: Linear, GELU, Linear, ... as torch.nn.Sequential numbers them (0, 2, 4, ...).
     * -1 stands for d_llm while it is unknown (read from the first weight when the config omits it). */
    int64_t width_in = (1 + c.n_groups) * D, d = c.d_llm ? c.d_llm : -1;
    for (int j = 0; j < c.projector_linears; j++) {
        char name[64];
        snprintf(name, sizeof name, "projector.%d.weight", 2 * j);
        add_slot(v, connector_prefix, name, -1, 1, &v->proj_w[j], 2, d, j ? d : width_in, 0, 0);
        snprintf(name, sizeof name, "projector.%d.bias", 2 * j);
        add_slot(v, connector_prefix, name, -1, 1, &v->proj_b[j], 1, d, 0, 0, 0);
    }
    *out = v;
    return EC_OK;
}

const ec_vision_config *ec_vision_get_config(const ec_vision *v) { return &v->c; }
int ec_vision_slots(ec_vision *v, ec_vision_slot **slots) { *slots = v->slots; return v->n_slots; }
int ec_vision_layers_available(const ec_vision *v) { return v->layers_available; }
int ec_vision_d_llm(const ec_vision *v) { return v->d_llm; }
int ec_vision_max_views(const ec_vision *v) { return v->max_views; }
double ec_vision_last_ms(const ec_vision *v) { return v->last_ms; }
uint32_t ec_vision_last_dispatches(const ec_vision *v) { return v->last_dispatches; }

/* A growing text for the report of bad weights. */
typedef struct { char *s; size_t len, cap; int oom; } text;

static void say(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(text *t, const char *fmt, ...)
{
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { t->oom = 1; return; }
        if (t->s && t->len + (size_t)n < t->cap) { t->len += (size_t)n; return; }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *s = realloc(t->s, cap);
        if (!s) { t->oom = 1; return; }
        t->s = s;
        t->cap = cap;
    }
}

static void say_shape(text *t, int ndim, const int64_t *shape)
{
    say(t, "[");
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) say(t, i ? ", ?" : "?");
        else say(t, i ? ", %lld" : "%lld", (long long)shape[i]);
    }
    say(t, "]");
}

/* "0-12, 14, 16-25" for the layers whose flag is set. */
static void say_layers(text *t, const unsigned char *flag, int n)
{
    int first = 1;
    for (int a = 0; a < n; a++) {
        if (!flag[a]) continue;
        int b = a;
        while (b + 1 < n && flag[b + 1]) b++;
        if (b > a) say(t, "%s%d-%d", first ? "" : ", ", a, b);
        else say(t, "%s%d", first ? "" : ", ", a);
        first = 0;
        a = b;
    }
}

static int shape_matches(const ec_tensor *t, const ec_vision_slot *s)
{
    if (t->ndim != s->ndim) return 0;
    for (int i = 0; i < s->ndim; i++)
        if (s->shape[i] >= 0 && t->shape[i] != s->shape[i]) return 0;
    return 1;
}

ec_status ec_vision_check_weights(ec_vision *v, char **report)
{
    *report = NULL;
    const ec_vision_config *c = &v->c;
    int L = c->layers;

    /* The projector's width: from the config, else from its first weight. */
    v->d_llm = c->d_llm;
    if (!v->d_llm && v->proj_w[0] && v->proj_w[0]->ndim == 2 && v->proj_w[0]->shape[0] > 0) v->d_llm = (int)v->proj_w[0]->shape[0];
    for (int i = 0; i < v->n_slots; i++) {
        ec_vision_slot *s = &v->slots[i];
        if (s->layer < 0 && v->d_llm > 0)
            for (int k = 0; k < s->ndim; k++)
                if (s->shape[k] < 0) s->shape[k] = v->d_llm;
    }

    /* Optional layers (past layers_run) are used only when complete: count what each has. */
    int *present = calloc((size_t)L, sizeof *present);
    unsigned char *missing = calloc((size_t)L * 16, 1);
    if (!present || !missing) { free(present); free(missing); return ec_fail(EC_ERR_OOM, "out of host memory"); }
    for (int i = 0; i < v->n_slots; i++)
        if (v->slots[i].layer >= 0 && *v->slots[i].dst) present[v->slots[i].layer]++;

    text t = {0};
    int problems = 0, missing_layered = 0;
    for (int i = 0; i < v->n_slots; i++) {
        ec_vision_slot *s = &v->slots[i];
        ec_tensor *w = *s->dst;
        int partial = s->layer >= 0 && present[s->layer] > 0;
        if (!w) {
            if (!s->required && !partial) continue;
            problems++;
            if (s->layer >= 0) { missing[(i - 3) % 16 * L + s->layer] = 1; missing_layered = 1; } /* see n_slots */
            else { say(&t, "\n  missing: %s ", s->name); say_shape(&t, s->ndim, s->shape); }
            continue;
        }
        if (w->ctx != v->ctx) { problems++; say(&t, "\n  %s: belongs to another device context", s->name); continue; }
        if (w->dtype == EC_I32) { problems++; say(&t, "\n  %s: dtype int32, expected float32, float16 or bfloat16", s->name); continue; }
        if (!shape_matches(w, s)) {
            problems++;
            say(&t, "\n  %s: shape ", s->name);
            say_shape(&t, w->ndim, w->shape);
            say(&t, ", expected ");
            say_shape(&t, s->ndim, s->shape);
        }
    }
    /* Missing per-layer tensors, one line per name with the layers that lack it. */
    if (missing_layered) {
        for (int k = 0; k < 16; k++) {
            int any = 0;
            for (int l = 0; l < L; l++) any |= missing[k * L + l];
            if (!any) continue;
            say(&t, "\n  missing: %s{", v->layer_prefix);
            say_layers(&t, &missing[k * L], L);
            say(&t, "}.%s ", layer_names[k]);
            int ndim;
            int64_t shape[2];
            layer_shape(c, k, &ndim, shape);
            say_shape(&t, ndim, shape);
        }
    }
    /* LayerNorm reads weight and bias with one dtype. */
    for (int l = 0; l < L; l++) {
        layer_weights *w = &v->layer[l];
        if ((w->ln1_w && w->ln1_b && w->ln1_w->dtype != w->ln1_b->dtype) || (w->ln2_w && w->ln2_b && w->ln2_w->dtype != w->ln2_b->dtype)) {
            problems++;
            say(&t, "\n  layer %d: a layer norm's weight and bias have different dtypes", l);
        }
    }
    if (!problems && v->d_llm <= 0) { problems++; say(&t, "\n  the projector's output width is unknown"); }

    v->layers_available = c->layers_run;
    while (v->layers_available < L && present[v->layers_available] == 16) v->layers_available++;
    free(present);
    free(missing);
    if (!problems) { free(t.s); return EC_OK; }
    if (t.oom) { free(t.s); return ec_fail(EC_ERR_OOM, "out of host memory describing %d bad weights", problems); }
    char head[256];
    int n = snprintf(head, sizeof head, "the vision tower's weights do not match its config (%d problem%s; names are "
                     "the checkpoint's, shapes [out, in]):", problems, problems == 1 ? "" : "s");
    char *r = malloc((size_t)n + t.len + 1);
    if (!r) { free(t.s); return ec_fail(EC_ERR_OOM, "out of host memory"); }
    memcpy(r, head, (size_t)n);
    memcpy(r + n, t.s, t.len);
    r[n + t.len] = 0;
    free(t.s);
    *report = r;
    return ec_fail(EC_ERR_FORMAT, "%.1000s", r);
}

/* ------------------------------------------------------------------------------------------------
 * Scratch and derived tensors */

uint64_t ec_vision_bytes_per_view(const ec_vision *v)
{
    const ec_vision_config *c = &v->c;
    uint64_t T = (uint64_t)c->tokens, D = (uint64_t)c->hidden, d = v->d_llm > 0 ? (uint64_t)v->d_llm : D;
    uint64_t floats = (uint64_t)c->channels * c->image_size * c->image_size   /* pixels */
                      + T * c->channels * c->patch * c->patch                 /* patches */
                      + T * D * (6 + 1 + c->n_groups)                         /* h xn q k v att, feat, means */
                      + T * c->intermediate                                   /* mlp */
                      + T * D * (1 + c->n_groups)                             /* cat */
                      + 2 * T * d + (uint64_t)c->pooled_tokens * d;           /* proj, pooled */
    return floats * 4;
}

static ec_status scratch(ec_vision *v, int64_t rows, int64_t cols, ec_tensor **out)
{
    int64_t shape[2] = {rows, cols};
    return ec_tensor_create(v->ctx, EC_F32, 2, shape, out);
}

ec_status ec_vision_init(ec_vision *v, int max_views)
{
    const ec_vision_config *c = &v->c;
    ec_context *ctx = v->ctx;
    if (max_views < 1) return ec_fail(EC_ERR_ARG, "max_views must be at least 1, not %d", max_views);
    if (v->max_views) return ec_fail(EC_ERR_ARG, "the vision tower is already initialised");
    if ((uint64_t)max_views * ec_vision_bytes_per_view(v) / 4 > UINT32_MAX)
        return ec_fail(EC_ERR_LIMIT, "%d views per pass exceed the 2^32 elements an op indexes; use fewer", max_views);
    int64_t T = c->tokens, D = c->hidden, rows = (int64_t)max_views * T;

    /* The position table in f32, gathered by the embedding op (which reads any weight dtype). */
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    if (!ids) return ec_fail(EC_ERR_OOM, "out of host memory");
    for (int64_t i = 0; i < T; i++) ids[i] = (int32_t)i;
    ec_tensor *id_t = NULL;
    ec_status s = ec_tensor_create(ctx, EC_I32, 1, &T, &id_t);
    if (!s) s = ec_tensor_upload(id_t, ids, (size_t)T * sizeof *ids);
    free(ids);
    int64_t pos_shape[2] = {T, D};
    if (!s) s = ec_tensor_create(ctx, EC_F32, 2, pos_shape, &v->pos32);
    if (!s) s = ec_op_embedding(ctx, id_t, v->pos, v->pos32);
    if (!s) s = ec_batch_submit(ctx);
    ec_tensor_destroy(id_t);
    EC_TRY(s);

    int64_t nv = max_views;
    int32_t *lens = malloc((size_t)max_views * sizeof *lens);
    if (!lens) return ec_fail(EC_ERR_OOM, "out of host memory");
    for (int i = 0; i < max_views; i++) lens[i] = (int32_t)T;
    s = ec_tensor_create(ctx, EC_I32, 1, &nv, &v->lengths);
    if (!s) s = ec_tensor_upload(v->lengths, lens, (size_t)max_views * sizeof *lens);
    free(lens);
    EC_TRY(s);

    int64_t px[4] = {nv, c->channels, c->image_size, c->image_size};
    EC_TRY(ec_tensor_create(ctx, EC_F32, 4, px, &v->pixels));
    EC_TRY(scratch(v, rows, (int64_t)c->channels * c->patch * c->patch, &v->patches));
    EC_TRY(scratch(v, rows, D, &v->h));
    EC_TRY(scratch(v, rows, D, &v->xn));
    EC_TRY(scratch(v, rows, D, &v->q));
    EC_TRY(scratch(v, rows, D, &v->k));
    EC_TRY(scratch(v, rows, D, &v->v));
    EC_TRY(scratch(v, rows, D, &v->att));
    EC_TRY(scratch(v, rows, c->intermediate, &v->mlp));
    /* h[feature_index] needs a copy of its own only when a later layer runs (in hidden-state runs). */
    if (c->feature_index < v->layers_available) EC_TRY(scratch(v, rows, D, &v->feat));
    for (int g = 0; g < c->n_groups; g++) EC_TRY(scratch(v, rows, D, &v->mean[g]));
    EC_TRY(scratch(v, rows, (1 + c->n_groups) * D, &v->cat));
    EC_TRY(scratch(v, rows, v->d_llm, &v->proj[0]));
    if (c->projector_linears > 1) EC_TRY(scratch(v, rows, v->d_llm, &v->proj[1]));
    if (c->pooled_side < c->grid) EC_TRY(scratch(v, (int64_t)max_views * c->pooled_tokens, v->d_llm, &v->pooled));
    v->max_views = max_views;
    return EC_OK;
}

void ec_vision_destroy(ec_vision *v)
{
    if (!v) return;
    ec_tensor *owned[] = {v->pos32, v->lengths, v->pixels, v->patches, v->h, v->xn, v->q, v->k, v->v, v->att, v->mlp,
                          v->feat, v->cat, v->proj[0], v->proj[1], v->pooled};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) ec_tensor_destroy(owned[i]);
    for (int g = 0; g < EC_VISION_MAX_GROUPS; g++) ec_tensor_destroy(v->mean[g]);
    free(v->layer);
    free(v->slots);
    free(v);
}

int64_t ec_vision_count_tokens(const ec_vision *v, int n, const uint8_t *is_tile)
{
    int64_t count = 0;
    for (int i = 0; i < n; i++) count += is_tile[i] ? v->c.pooled_tokens : v->c.tokens;
    return count;
}

/* ------------------------------------------------------------------------------------------------
 * The pass */

/* Sets a scratch tensor's first dimension to this pass's size (its memory was sized for max_views). */
static void use_rows(ec_tensor *t, int64_t rows)
{
    if (t) t->shape[0] = rows;
}

/* After h[i] is computed: keep it for the caller (hidden-state runs), keep it as the LDC's F_last
 * when later layers will overwrite h, and add it into the running mean of each group that holds i. */
static ec_status collect(ec_vision *v, int i, int depth, ec_tensor *hs)
{
    const ec_vision_config *c = &v->c;
    ec_context *ctx = v->ctx;
    int64_t rows = v->h->shape[0], D = c->hidden;
    if (hs) {
        ec_cols dst = {hs, (size_t)i * (size_t)rows * (size_t)D, (size_t)D};
        EC_TRY(ec_op_copy(ctx, ec_whole(v->h), dst, rows, D));
    }
    if (i == c->feature_index && i < depth) EC_TRY(ec_op_copy(ctx, ec_whole(v->h), ec_whole(v->feat), rows, D));
    for (int g = 0; g < c->n_groups; g++)
        if (c->group_lo[g] <= i && i < c->group_hi[g])
            EC_TRY(ec_op_add(ctx, v->mean[g], v->h, 1.0f / (float)(c->group_hi[g] - c->group_lo[g]), v->mean[g]));
    return EC_OK;
}

/* Records the whole pass over the n views in v->pixels: embeddings, `depth` encoder layers, LDC,
 * projector and pooling. */
static ec_status record_pass(ec_vision *v, int n, const uint8_t *is_tile, int depth, ec_tensor *hs)
{
    const ec_vision_config *c = &v->c;
    ec_context *ctx = v->ctx;
    EC_TRY(ec_batch_begin(ctx));

    /* Patch embedding: the P x P, stride-P convolution is im2col plus one matmul with the conv weight
     * seen as [D, C * P * P] (a view sharing the weight's memory and texel view). Then h[0] = that +
     * the position embedding, repeated over the views. */
    ec_binding unused;
    EC_TRY(ec_bind_texel(v->patch_w, &unused));
    ec_tensor patch_w = *v->patch_w;
    patch_w.ndim = 2;
    patch_w.shape[1] = (int64_t)c->channels * c->patch * c->patch;
    EC_TRY(ec_op_patchify(ctx, v->pixels, c->patch, v->patches));
    EC_TRY(ec_op_matmul(ctx, v->patches, &patch_w, v->patch_b, v->h, 0));
    EC_TRY(ec_op_add(ctx, v->h, v->pos32, 1.0f, v->h));
    for (int g = 0; g < c->n_groups; g++) EC_TRY(ec_op_zero(ctx, v->mean[g]));
    EC_TRY(collect(v, 0, depth, hs));

    /* Encoder layers (pre-LayerNorm): h += attn(ln1(h)); h += fc2(act(fc1(ln2(h)))). The residual
     * adds are the matmuls' accumulate epilogue. */
    ec_attention_args a = {.q = ec_whole(v->q), .k = ec_whole(v->k), .v = ec_whole(v->v), .out = ec_whole(v->att),
                           .batch = n, .tokens = c->tokens, .kv_rows = c->tokens, .n_heads = c->heads,
                           .n_kv_heads = c->heads, .head_dim = c->head_dim, .causal = 0,
                           .scale = 1.0f / sqrtf((float)c->head_dim), .lengths = v->lengths};
    for (int l = 0; l < depth; l++) {
        layer_weights *w = &v->layer[l];
        EC_TRY(ec_op_layernorm(ctx, v->h, w->ln1_w, w->ln1_b, c->eps, v->xn));
        EC_TRY(ec_op_matmul(ctx, v->xn, w->q_w, w->q_b, v->q, 0));
        EC_TRY(ec_op_matmul(ctx, v->xn, w->k_w, w->k_b, v->k, 0));
        EC_TRY(ec_op_matmul(ctx, v->xn, w->v_w, w->v_b, v->v, 0));
        EC_TRY(ec_op_attention(ctx, &a));
        EC_TRY(ec_op_matmul(ctx, v->att, w->o_w, w->o_b, v->h, 1));

        EC_TRY(ec_op_layernorm(ctx, v->h, w->ln2_w, w->ln2_b, c->eps, v->xn));
        EC_TRY(ec_op_matmul(ctx, v->xn, w->fc1_w, w->fc1_b, v->mlp, 0));
        EC_TRY(ec_op_activation(ctx, c->act, v->mlp, v->mlp));
        EC_TRY(ec_op_matmul(ctx, v->mlp, w->fc2_w, w->fc2_b, v->h, 1));
        EC_TRY(collect(v, l + 1, depth, hs));
    }

    /* LDC: F = [F_last, mean(group 0), mean(group 1), ...] along the channels. */
    ec_tensor *parts[1 + EC_VISION_MAX_GROUPS];
    parts[0] = c->feature_index == depth ? v->h : v->feat;
    for (int g = 0; g < c->n_groups; g++) parts[1 + g] = v->mean[g];
    EC_TRY(ec_op_concat(ctx, parts, 1 + c->n_groups, v->cat));

    /* Projector: Linear, then (exact GELU, Linear) for each further layer. */
    ec_tensor *x = v->cat;
    for (int j = 0; j < c->projector_linears; j++) {
        ec_tensor *y = v->proj[j % 2];
        if (j) EC_TRY(ec_op_activation(ctx, EC_GELU_ERF, x, x));
        EC_TRY(ec_op_matmul(ctx, x, v->proj_w[j], v->proj_b[j], y, 0));
        x = y;
    }
    v->final = x;

    /* Compression: each tile's G x G grid of tokens is average-pooled (global views pass whole; pooling
     * them too is cheaper than splitting the pass, and their pooled rows are simply not read). */
    int tiles = 0;
    for (int i = 0; i < n; i++) tiles |= is_tile[i];
    if (tiles && v->pooled)
        EC_TRY(ec_op_pool2d(ctx, x, n, c->grid, c->grid, c->pooled_side, c->pooled_side, v->pooled));
    return EC_OK;
}

/* Reads the tokens of views [i, j) (all global or all tiles) to dst. */
static ec_status read_tokens(ec_vision *v, int i, int j, int tile, float *dst)
{
    int pooled = tile && v->pooled;
    ec_tensor *src = pooled ? v->pooled : v->final;
    uint64_t per_view = (uint64_t)(pooled ? v->c.pooled_tokens : v->c.tokens) * (uint64_t)v->d_llm * 4;
    return ec_read(v->ctx, &src->mem, (uint64_t)i * per_view, dst, (size_t)((uint64_t)(j - i) * per_view));
}

ec_status ec_vision_run(ec_vision *v, const float *pixels, int n, const uint8_t *is_tile, float *tokens,
                        float *hidden, size_t hidden_layer_stride)
{
    const ec_vision_config *c = &v->c;
    ec_context *ctx = v->ctx;
    if (!v->max_views) return ec_fail(EC_ERR_ARG, "the vision tower is not initialised");
    if (n < 1 || n > v->max_views) return ec_fail(EC_ERR_ARG, "a pass takes 1 to %d views, not %d", v->max_views, n);
    int64_t rows = (int64_t)n * c->tokens;
    int depth = hidden ? v->layers_available : c->layers_run;

    use_rows(v->pixels, n);
    ec_tensor *per_token[] = {v->patches, v->h, v->xn, v->q, v->k, v->v, v->att, v->mlp, v->feat, v->cat, v->proj[0], v->proj[1]};
    for (size_t i = 0; i < sizeof per_token / sizeof per_token[0]; i++) use_rows(per_token[i], rows);
    for (int g = 0; g < c->n_groups; g++) use_rows(v->mean[g], rows);
    use_rows(v->pooled, (int64_t)n * c->pooled_tokens);

    /* Upload first: writing a tensor submits any open batch. */
    size_t px = (size_t)n * c->channels * c->image_size * c->image_size * sizeof(float);
    EC_TRY(ec_write(ctx, &v->pixels->mem, 0, pixels, px));

    ec_tensor *hs = NULL;
    if (hidden) {
        int64_t shape[2] = {(int64_t)(depth + 1) * rows, c->hidden};
        EC_TRY(ec_tensor_create(ctx, EC_F32, 2, shape, &hs));
    }
    ec_status s = record_pass(v, n, is_tile, depth, hs);
    uint32_t dispatches = ctx->dispatches;
    if (!s) s = ec_batch_submit(ctx);
    else ec_batch_abort(ctx);
    if (!s) { v->last_ms = ctx->last_batch_ms; v->last_dispatches = dispatches; }

    /* Tokens, view after view, in runs of views of one kind. */
    float *dst = tokens;
    for (int i = 0; !s && i < n;) {
        int j = i + 1;
        while (j < n && !is_tile[j] == !is_tile[i]) j++;
        s = read_tokens(v, i, j, is_tile[i], dst);
        dst += (size_t)ec_vision_count_tokens(v, j - i, is_tile + i) * (size_t)v->d_llm;
        i = j;
    }
    for (int l = 0; !s && hs && l <= depth; l++) {
        size_t bytes = (size_t)rows * (size_t)c->hidden * sizeof(float);
        s = ec_read(ctx, &hs->mem, (uint64_t)l * bytes, hidden + (size_t)l * hidden_layer_stride, bytes);
    }
    ec_tensor_destroy(hs);
    return s;
}
