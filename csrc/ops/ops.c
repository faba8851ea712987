#include "ops/ops.h"

#include <math.h>
#include <string.h>

#include "vk/kernels.h"
#include "kernel_params.h"
#include "shaders_spv.h"

/* ------------------------------------------------------------------------------------------------
 * The kernel table: shader, bindings ('S' storage buffer, 'T' texel view) and its push-constant struct
 * (shaders/kernel_params.h, which the shader includes too). */

#define KERNEL(name, bindings, push) {#name, ec_spv_##name, sizeof ec_spv_##name, bindings, sizeof(struct ec_##push##_push)}
enum { K_matmul, K_matvec, K_matmul_q, K_matvec_q, K_add, K_norm, K_activation, K_softmax, K_rope, K_attention,
       K_embedding, K_copy2d, K_pool2d, K_argmax, K_patchify, K_peak_fma, K_attention_decode, K_attention_combine,
       K_copy2d_f16, K_rope_kv, K_attention_tiled };
const ec_kernel_def ec_kernels[] = {
    KERNEL(matmul, "TTTS", matmul),   KERNEL(matvec, "TTTST", matvec),       KERNEL(matmul_q, "TTTTS", matmul_q),
    KERNEL(matvec_q, "TTTTS", matmul_q), KERNEL(add, "SSS", add),
    KERNEL(norm, "STTS", norm),       KERNEL(activation, "SSS", activation), KERNEL(softmax, "SS", softmax),
    KERNEL(rope, "SS", rope),         KERNEL(attention, "STTSS", attention), KERNEL(embedding, "STS", embedding),
    KERNEL(copy2d, "SS", copy2d),     KERNEL(pool2d, "SS", pool2d),         KERNEL(argmax, "SS", argmax),
    KERNEL(patchify, "SS", patchify), KERNEL(peak_fma, "S", peak_fma),
    KERNEL(attention_decode, "STTSS", attention_decode), KERNEL(attention_combine, "SS", attention_combine),
    KERNEL(copy2d_f16, "SS", copy2d), KERNEL(rope_kv, "SSSS", rope_kv),
    KERNEL(attention_tiled, "STTSS", attention),
};
const int ec_kernel_count = sizeof ec_kernels / sizeof ec_kernels[0];

/* PIPELINE(kernel, &p, .width = ..., .FIELD = ...): the pipeline of a kernel, specialized by the fields
 * of its struct ec_<kernel>_spec (a name the shader does not declare does not compile). */
static ec_status pipeline_get(ec_context *ctx, int kernel, ec_spec_words spec, ec_pipeline **out)
{
    return ec_pipeline_get(ctx, kernel, spec.w, out);
}
#define PIPELINE(k, out, ...) \
    pipeline_get(ctx, K_##k, ec_##k##_spec_words((struct ec_##k##_spec){__VA_ARGS__}), out)

/* dispatch_<kernel>(ctx, p, bindings, &push, groups x, y, z): the push constants are typed (passing
 * another kernel's struct is an incompatible-pointer error, -Werror in setup.py), and p must be
 * a pipeline of that kernel. */
#define DISPATCHER(k, push)                                                                                 \
    static ec_status dispatch_##k(ec_context *ctx, ec_pipeline *p, const ec_binding *bind,                      \
                                  const struct ec_##push##_push *pc, uint32_t gx, uint32_t gy, uint32_t gz)     \
    {                                                                                                          \
        if (p->kernel != K_##k)                                                                                \
            return ec_fail(EC_ERR_ARG, "internal: a %s pipeline dispatched as %s", ec_kernels[p->kernel].name, #k); \
        return ec_dispatch(ctx, p, bind, pc, gx, gy, gz);                                                      \
    }
DISPATCHER(matmul, matmul) DISPATCHER(matvec, matvec) DISPATCHER(matmul_q, matmul_q) DISPATCHER(matvec_q, matmul_q)
DISPATCHER(add, add) DISPATCHER(norm, norm)
DISPATCHER(activation, activation) DISPATCHER(softmax, softmax) DISPATCHER(rope, rope)
DISPATCHER(attention, attention) DISPATCHER(embedding, embedding) DISPATCHER(copy2d, copy2d)
DISPATCHER(pool2d, pool2d) DISPATCHER(argmax, argmax) DISPATCHER(patchify, patchify) DISPATCHER(peak_fma, peak_fma)
DISPATCHER(attention_decode, attention_decode) DISPATCHER(attention_combine, attention_combine)
DISPATCHER(copy2d_f16, copy2d) DISPATCHER(rope_kv, rope_kv) DISPATCHER(attention_tiled, attention)

/* ------------------------------------------------------------------------------------------------
 * Device-dependent shapes of the work: lavapipe runs each workgroup as a loop on a CPU core, so it
 * wants few, narrow (one 8-lane subgroup) workgroups; GPUs want many. */

static int is_cpu(ec_context *ctx) { return ec_cpu_shapes(ctx); }
static uint32_t reduce_width(ec_context *ctx) { return ec_reduce_width(ctx); }
static uint32_t pointwise_width(ec_context *ctx) { return ec_pointwise_width(ctx); }
static uint32_t grid_limit(ec_context *ctx) { return ec_grid_limit(ctx); }

static uint32_t groups_for(ec_context *ctx, uint64_t items, uint32_t per_group)
{
    uint64_t g = (items + per_group - 1) / per_group;
    if (g > grid_limit(ctx)) g = grid_limit(ctx);
    return g ? (uint32_t)g : 1;
}

static uint32_t wtype(const ec_tensor *t)
{
    switch (t->dtype) {
    case EC_F16: return EC_W_F16;
    case EC_BF16: return EC_W_BF16;
    case EC_Q8: return EC_W_Q8;
    case EC_Q4: return EC_W_Q4;
    default: return EC_W_F32;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Operand checks and bindings */

static int64_t last_dim(const ec_tensor *t) { return t->shape[t->ndim - 1]; }
static int64_t rows_of(const ec_tensor *t) { int64_t d = last_dim(t); return d ? ec_numel(t) / d : 0; }

static ec_status need_f32(const ec_tensor *t, const char *what)
{
    if (!t) return ec_fail(EC_ERR_ARG, "%s is missing", what);
    if (t->dtype != EC_F32) return ec_fail(EC_ERR_ARG, "%s must be float32, not %s", what, ec_dtype_name(t->dtype));
    return EC_OK;
}

static ec_status need_weight(const ec_tensor *t, const char *what)
{
    if (!t) return ec_fail(EC_ERR_ARG, "%s is missing", what);
    if (t->dtype == EC_I32 || ec_dtype_quantized(t->dtype))
        return ec_fail(EC_ERR_ARG, "%s must be float32, float16 or bfloat16, not %s", what, ec_dtype_name(t->dtype));
    return EC_OK;
}

/* A matmul's W may also be block-quantized (int8, int4). */
static ec_status need_matmul_weight(const ec_tensor *t)
{
    if (t && ec_dtype_quantized(t->dtype)) return EC_OK;
    return need_weight(t, "matmul weight");
}

static ec_status need_same_context(ec_context *ctx, const ec_tensor *t)
{
    if (t && t->ctx != ctx) return ec_fail(EC_ERR_ARG, "a tensor belongs to another device context");
    return EC_OK;
}

/* Binds elements [first, first + count) of t (4-byte elements) as a storage buffer: the binding
 * starts at the aligned offset at or below `first`, and *off says where `first` lies inside it. */
static ec_status bind_span(ec_tensor *t, uint64_t first, uint64_t count, ec_binding *b, uint32_t *off)
{
    uint64_t align = t->ctx->limits.minStorageBufferOffsetAlignment;
    uint64_t start = first * 4 / align * align, end = (first + count) * 4;
    if (end > t->nbytes) return ec_fail(EC_ERR_ARG, "an op would read or write past the end of a %zu-byte tensor", t->nbytes);
    if (off) *off = (uint32_t)((first * 4 - start) / 4);
    else if (start != first * 4) return ec_fail(EC_ERR_ARG, "unaligned tensor slice");
    return ec_bind_storage_range(t, start, end - start, b);
}

/* How many rows of `row_elems` floats fit in one storage binding (with room for the alignment slack). */
static uint64_t rows_per_binding(ec_context *ctx, uint64_t row_elems)
{
    uint64_t usable = ctx->limits.maxStorageBufferRange - ctx->limits.minStorageBufferOffsetAlignment;
    uint64_t rows = row_elems ? usable / (row_elems * 4) : UINT32_MAX;
    return rows ? rows : 0;
}

ec_cols ec_whole(ec_tensor *t)
{
    ec_cols c = {t, 0, t ? (size_t)last_dim(t) : 0};
    return c;
}

/* ------------------------------------------------------------------------------------------------
 * matmul: the GEMM for many rows, the mat-vec for a few (decode) */

#define MATVEC_MAX_ROWS 8
#define MATVEC_ROWS_PER_GROUP 16

/* The GEMMs' rows of x and y per dispatch: rows beyond one storage binding (y) or one texel view (x, read
 * through a texel buffer) go in chunks (e.g. the logits of a long prompt), a whole number of TM-row tiles each. */
static ec_status gemm_rows_per_dispatch(ec_context *ctx, int64_t K, int64_t N, uint32_t TM, uint64_t *chunk)
{
    uint64_t align = ctx->limits.minTexelBufferOffsetAlignment > 16 ? ctx->limits.minTexelBufferOffsetAlignment : 16;
    uint64_t x_rows = (ec_texel_reach(ctx) - align) / ((uint64_t)K * 4);
    *chunk = rows_per_binding(ctx, (uint64_t)(K > N ? K : N));
    if (x_rows < *chunk) *chunk = x_rows;
    if (*chunk == 0) return ec_fail(EC_ERR_ARG, "matmul: one row is larger than a storage binding or texel view");
    *chunk = *chunk / TM * TM;
    if (*chunk == 0) *chunk = 1;
    return EC_OK;
}

/* The same product with W block-quantized (int8/int4): matvec_q for a few rows of x, matmul_q for many.
 * Both read W's packed integers and scales where they lie and dequantize in registers. A weight past the
 * device's texel reach is read in pieces of whole rows (ec_bind_quantized), each writing its columns of y. */
static ec_status matmul_quantized(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate,
                                  int64_t M, int64_t N, int64_t K)
{
    ec_binding bind[5];
    if (bias) EC_TRY(ec_bind_texel(bias, &bind[3])); /* without a bias, binding 3 gets W's view (unread) */
    struct ec_matmul_q_push pc = {.K = (uint32_t)K, .y_stride = (uint32_t)N, .has_bias = bias != NULL,
                                  .accumulate = accumulate != 0, .aligned = K % EC_QBLOCK == 0};
    uint32_t btype = bias ? wtype(bias) : 0;
    uint64_t piece = ec_quantized_rows_per_view(w);
    if (piece == 0) return ec_fail(EC_ERR_ARG, "matmul: one row of a quantized weight exceeds the device's texel-buffer reach");
    if (piece > (uint64_t)N) piece = (uint64_t)N;
    ec_pipeline *p;

    if (M <= MATVEC_MAX_ROWS && rows_per_binding(ctx, N) >= (uint64_t)M) {
        EC_TRY(PIPELINE(matvec_q, &p, .width = ctx->info.subgroup_size, .wtype = wtype(w), .BTYPE = btype,
                        .ROWS = MATVEC_ROWS_PER_GROUP, .NM = (uint32_t)M));
        uint64_t x_skip;
        EC_TRY(ec_bind_texel_range(x, 0, (uint64_t)M * K * 4, &bind[0], &x_skip));
        pc.x_off = (uint32_t)(x_skip / 4);
        EC_TRY(bind_span(y, 0, (uint64_t)M * N, &bind[4], &pc.y_off));
        pc.M = (uint32_t)M;
        for (uint64_t n0 = 0; n0 < (uint64_t)N; n0 += piece) {
            uint64_t rows = (uint64_t)N - n0 < piece ? (uint64_t)N - n0 : piece;
            EC_TRY(ec_bind_quantized(w, (int64_t)n0, (int64_t)rows, &bind[1], &bind[2], &pc.w_off, &pc.s_off));
            if (!bias) bind[3] = bind[1];
            pc.N = (uint32_t)rows;
            pc.n_first = (uint32_t)n0;
            EC_TRY(dispatch_matvec_q(ctx, p, bind, &pc, (uint32_t)((rows + MATVEC_ROWS_PER_GROUP - 1) / MATVEC_ROWS_PER_GROUP), 1, 1));
        }
        return EC_OK;
    }

    const uint32_t TM = 8, TN = 8;
    uint32_t width = is_cpu(ctx) ? ctx->info.subgroup_size : 64;
    EC_TRY(PIPELINE(matmul_q, &p, .width = width, .wtype = wtype(w), .BTYPE = btype, .TM = TM, .TN = TN));
    uint64_t chunk;
    EC_TRY(gemm_rows_per_dispatch(ctx, K, N, TM, &chunk));
    for (int64_t r0 = 0; r0 < M; r0 += chunk) {
        int64_t rows = M - r0 < (int64_t)chunk ? M - r0 : (int64_t)chunk;
        uint64_t x_skip;
        EC_TRY(ec_bind_texel_range(x, (uint64_t)r0 * K * 4, (uint64_t)rows * K * 4, &bind[0], &x_skip));
        pc.x_off = (uint32_t)(x_skip / 4);
        EC_TRY(bind_span(y, (uint64_t)r0 * N, (uint64_t)rows * N, &bind[4], &pc.y_off));
        pc.M = (uint32_t)rows;
        for (uint64_t n0 = 0; n0 < (uint64_t)N; n0 += piece) {
            uint64_t cols = (uint64_t)N - n0 < piece ? (uint64_t)N - n0 : piece;
            EC_TRY(ec_bind_quantized(w, (int64_t)n0, (int64_t)cols, &bind[1], &bind[2], &pc.w_off, &pc.s_off));
            if (!bias) bind[3] = bind[1];
            pc.N = (uint32_t)cols;
            pc.n_first = (uint32_t)n0;
            uint32_t gx = (uint32_t)((cols + width * TN - 1) / (width * TN)), gy = (uint32_t)((rows + TM - 1) / TM);
            EC_TRY(dispatch_matmul_q(ctx, p, bind, &pc, gx, gy, 1));
        }
    }
    return EC_OK;
}

/* The shapes of y[M,N] = x[M,K] w[N,K]^T + bias: x is M rows of K values (its tensor's own shape, or for a
 * transformed input the caller's M and K). */
static ec_status check_matmul(ec_context *ctx, ec_tensor *x, int64_t M, int64_t K, ec_tensor *w, ec_tensor *bias, ec_tensor *y)
{
    EC_TRY(need_f32(x, "matmul input x")); EC_TRY(need_matmul_weight(w)); EC_TRY(need_f32(y, "matmul output y"));
    EC_TRY(need_same_context(ctx, x)); EC_TRY(need_same_context(ctx, w)); EC_TRY(need_same_context(ctx, y));
    if (w->ndim != 2) return ec_fail(EC_ERR_ARG, "matmul weight must be 2-D [N, K], not %d-D", w->ndim);
    int64_t N = w->shape[0];
    if (w->shape[1] != K)
        return ec_fail(EC_ERR_ARG, "matmul: x has %lld columns but the weight is [%lld, %lld]", (long long)K,
                       (long long)w->shape[0], (long long)w->shape[1]);
    if (last_dim(y) != N || rows_of(y) != M)
        return ec_fail(EC_ERR_ARG, "matmul: output must be [%lld, %lld]", (long long)M, (long long)N);
    if (bias) {
        EC_TRY(need_weight(bias, "matmul bias")); EC_TRY(need_same_context(ctx, bias));
        if (ec_numel(bias) != N) return ec_fail(EC_ERR_ARG, "matmul: bias has %lld values, the output %lld columns",
                                                (long long)ec_numel(bias), (long long)N);
    }
    if ((uint64_t)M * K > UINT32_MAX || (uint64_t)N * K > UINT32_MAX || (uint64_t)M * N > UINT32_MAX)
        return ec_fail(EC_ERR_ARG, "matmul: operands of more than 2^32 elements");
    return EC_OK;
}

/* Whether M rows take the mat-vec (decode) rather than the GEMM. */
static int use_matvec(ec_context *ctx, int64_t M, int64_t N)
{
    return M <= MATVEC_MAX_ROWS && rows_per_binding(ctx, (uint64_t)N) >= (uint64_t)M;
}

/* A weight past the device's texel reach (maxTexelBufferElements) is read in pieces of whole rows, each
 * through its own view; each piece writes its columns of y. *rows: rows of W per piece. */
static ec_status weight_pieces(ec_context *ctx, ec_tensor *w, uint64_t *rows)
{
    *rows = (uint64_t)w->shape[0];
    if (ec_texel_fits(w)) return EC_OK;
    size_t row_bytes = (size_t)w->shape[1] * ec_dtype_size(w->dtype);
    uint64_t align = ctx->limits.minTexelBufferOffsetAlignment > 16 ? ctx->limits.minTexelBufferOffsetAlignment : 16;
    *rows = row_bytes ? (ec_texel_reach(ctx) - align) / row_bytes : *rows;
    if (*rows == 0)
        return ec_fail(EC_ERR_ARG, "matmul: one weight row of %zu bytes exceeds the device's texel-buffer reach of %llu bytes",
                       row_bytes, (unsigned long long)ec_texel_reach(ctx));
    return EC_OK;
}

/* The mat-vec: x rows of x_stride values through x's texel view (rows start on a texel whenever the
 * stride is a whole number of texels), made into the input by PRE (shaders/matvec.comp). */
static ec_status matvec(ec_context *ctx, ec_tensor *x, int64_t M, int64_t K, uint32_t x_stride, uint32_t up_off, uint32_t pre,
                        ec_tensor *g, float eps, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate)
{
    int64_t N = w->shape[0];
    if (M == 0 || N == 0) return EC_OK;
    const uint32_t rows_per_group = 16;
    uint32_t per_texel = w->dtype == EC_F32 ? 4 : 8;
    uint64_t pieces_rows, x_skip;
    size_t row_bytes = (size_t)K * ec_dtype_size(w->dtype);
    EC_TRY(weight_pieces(ctx, w, &pieces_rows));
    ec_binding bind[5];
    EC_TRY(ec_bind_texel_range(x, 0, ((uint64_t)(M - 1) * x_stride + (uint64_t)up_off + (uint64_t)K) * 4, &bind[0], &x_skip));
    if (bias) EC_TRY(ec_bind_texel(bias, &bind[2])); /* without a bias or a norm weight, W's view (unread) */
    if (g) EC_TRY(ec_bind_texel(g, &bind[4]));
    struct ec_matvec_push pc = {.M = (uint32_t)M, .K = (uint32_t)K, .has_bias = bias != NULL, .accumulate = accumulate != 0,
                                .x_off = (uint32_t)(x_skip / 4), .x_stride = x_stride, .up_off = up_off, .eps = eps,
                                .y_stride = (uint32_t)N};
    pc.aligned = K % per_texel == 0 && x_stride % 4 == 0 && up_off % 4 == 0 && pc.x_off % 4 == 0;
    EC_TRY(bind_span(y, 0, (uint64_t)M * N, &bind[3], &pc.y_off));
    ec_pipeline *p;
    EC_TRY(PIPELINE(matvec, &p, .width = ctx->info.subgroup_size, .wtype = wtype(w), .BTYPE = bias ? wtype(bias) : 0,
                    .ROWS = rows_per_group, .NM = (uint32_t)M, .PRE = pre, .GTYPE = g ? wtype(g) : 0));
    for (uint64_t n0 = 0; n0 < (uint64_t)N; n0 += pieces_rows) {
        uint64_t rows = (uint64_t)N - n0 < pieces_rows ? (uint64_t)N - n0 : pieces_rows, skip;
        EC_TRY(ec_bind_texel_range(w, n0 * row_bytes, rows * row_bytes, &bind[1], &skip));
        pc.N = (uint32_t)rows;
        pc.n0 = (uint32_t)n0;
        pc.w_off = (uint32_t)(skip / ec_dtype_size(w->dtype));
        if (!bias) bind[2] = bind[1];
        if (!g) bind[4] = bind[1];
        EC_TRY(dispatch_matvec(ctx, p, bind, &pc, (uint32_t)((rows + rows_per_group - 1) / rows_per_group), 1, 1));
    }
    return EC_OK;
}

static ec_status gemm(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate);

ec_status ec_op_matmul(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate)
{
    EC_TRY(need_f32(x, "matmul input x"));
    int64_t M = rows_of(x), K = last_dim(x);
    EC_TRY(check_matmul(ctx, x, M, K, w, bias, y));
    if (M == 0 || w->shape[0] == 0) return EC_OK;
    if (ec_dtype_quantized(w->dtype)) return matmul_quantized(ctx, x, w, bias, y, accumulate, M, w->shape[0], K);
    if (use_matvec(ctx, M, w->shape[0])) return matvec(ctx, x, M, K, (uint32_t)K, 0, 0, NULL, 0.0f, w, bias, y, accumulate);
    return gemm(ctx, x, w, bias, y, accumulate);
}

ec_status ec_op_rmsnorm_matmul(ec_context *ctx, ec_tensor *x, ec_tensor *g, float eps, ec_tensor *h, ec_tensor *w,
                               ec_tensor *bias, ec_tensor *y, int accumulate)
{
    EC_TRY(need_f32(x, "rmsnorm_matmul input x"));
    int64_t M = rows_of(x), K = last_dim(x);
    EC_TRY(check_matmul(ctx, x, M, K, w, bias, y));
    EC_TRY(need_weight(g, "rmsnorm weight")); EC_TRY(need_same_context(ctx, g));
    if (ec_numel(g) != K) return ec_fail(EC_ERR_ARG, "rmsnorm: weight has %lld values for rows of %lld", (long long)ec_numel(g), (long long)K);
    if (M == 0 || w->shape[0] == 0) return EC_OK;
    /* the fused mat-vec reads f32/f16/bf16 weights; a quantized weight takes the norm, then its own kernels */
    if (!ec_dtype_quantized(w->dtype) && use_matvec(ctx, M, w->shape[0]))
        return matvec(ctx, x, M, K, (uint32_t)K, 0, 1, g, eps, w, bias, y, accumulate);
    EC_TRY(ec_op_rmsnorm(ctx, x, g, eps, h));
    return ec_op_matmul(ctx, h, w, bias, y, accumulate);
}

ec_status ec_op_silu_mul_matmul(ec_context *ctx, ec_tensor *gate_up, ec_tensor *act, ec_tensor *w, ec_tensor *y, int accumulate)
{
    EC_TRY(need_f32(gate_up, "silu_mul_matmul input"));
    int64_t M = rows_of(gate_up), F = last_dim(gate_up) / 2;
    if (last_dim(gate_up) % 2) return ec_fail(EC_ERR_ARG, "silu_mul_matmul: gate | up has an odd number of columns");
    EC_TRY(check_matmul(ctx, gate_up, M, F, w, NULL, y));
    if (M == 0 || w->shape[0] == 0) return EC_OK;
    if (!ec_dtype_quantized(w->dtype) && use_matvec(ctx, M, w->shape[0]))
        return matvec(ctx, gate_up, M, F, (uint32_t)(2 * F), (uint32_t)F, 2, NULL, 0.0f, w, NULL, y, accumulate);
    ec_cols gate = {gate_up, 0, (size_t)(2 * F)}, up = {gate_up, (size_t)F, (size_t)(2 * F)};
    EC_TRY(ec_op_silu_mul(ctx, gate, up, act));
    return ec_op_matmul(ctx, act, w, NULL, y, accumulate);
}

static ec_status gemm(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate)
{
    int64_t M = rows_of(x), K = last_dim(x), N = w->shape[0];
    ec_binding bind[4];
    if (bias) EC_TRY(ec_bind_texel(bias, &bind[2])); /* without a bias, binding 2 gets W's view (unread) */
    uint32_t per_texel = w->dtype == EC_F32 ? 4 : 8;
    struct ec_matmul_push pc = {.K = (uint32_t)K, .has_bias = bias != NULL, .accumulate = accumulate != 0,
                                .aligned = K % per_texel == 0, .y_stride = (uint32_t)N};
    uint64_t pieces_rows;
    size_t row_bytes = (size_t)K * ec_dtype_size(w->dtype);
    EC_TRY(weight_pieces(ctx, w, &pieces_rows));
    ec_pipeline *p;

    const uint32_t TM = 8, TN = 8;
    uint32_t width = is_cpu(ctx) ? ctx->info.subgroup_size : 64;
    EC_TRY(PIPELINE(matmul, &p, .width = width, .wtype = wtype(w), .BTYPE = bias ? wtype(bias) : 0, .TM = TM, .TN = TN));
    uint64_t chunk;
    EC_TRY(gemm_rows_per_dispatch(ctx, K, N, TM, &chunk));
    for (int64_t r0 = 0; r0 < M; r0 += chunk) {
        int64_t rows = M - r0 < (int64_t)chunk ? M - r0 : (int64_t)chunk;
        uint64_t x_skip;
        EC_TRY(ec_bind_texel_range(x, (uint64_t)r0 * K * 4, (uint64_t)rows * K * 4, &bind[0], &x_skip));
        pc.x_off = (uint32_t)(x_skip / 4);
        EC_TRY(bind_span(y, (uint64_t)r0 * N, (uint64_t)rows * N, &bind[3], &pc.y_off));
        pc.M = (uint32_t)rows;
        for (uint64_t n0 = 0; n0 < (uint64_t)N; n0 += pieces_rows) {
            uint64_t cols = (uint64_t)N - n0 < pieces_rows ? (uint64_t)N - n0 : pieces_rows, skip;
            EC_TRY(ec_bind_texel_range(w, n0 * row_bytes, cols * row_bytes, &bind[1], &skip));
            pc.N = (uint32_t)cols;
            pc.n0 = (uint32_t)n0;
            pc.w_off = (uint32_t)(skip / ec_dtype_size(w->dtype));
            if (!bias) bind[2] = bind[1];
            uint32_t gx = (uint32_t)((cols + width * TN - 1) / (width * TN)), gy = (uint32_t)((rows + TM - 1) / TM);
            EC_TRY(dispatch_matmul(ctx, p, bind, &pc, gx, gy, 1));
        }
    }
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Pointwise and row-wise ops */

ec_status ec_op_add(ec_context *ctx, ec_tensor *a, ec_tensor *b, float alpha, ec_tensor *out)
{
    EC_TRY(need_f32(a, "add input a")); EC_TRY(need_f32(b, "add input b")); EC_TRY(need_f32(out, "add output"));
    uint64_t n = (uint64_t)ec_numel(a), nb = (uint64_t)ec_numel(b);
    if ((uint64_t)ec_numel(out) != n) return ec_fail(EC_ERR_ARG, "add: output has %lld elements, input %llu", (long long)ec_numel(out), (unsigned long long)n);
    if (n == 0) return EC_OK;
    if (nb == 0 || n % nb) return ec_fail(EC_ERR_ARG, "add: b has %llu elements, which does not divide a's %llu", (unsigned long long)nb, (unsigned long long)n);
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(add, &p, .width = width));
    uint64_t chunk = rows_per_binding(ctx, 1);
    for (uint64_t i0 = 0; i0 < n; i0 += chunk) {
        uint64_t cnt = n - i0 < chunk ? n - i0 : chunk;
        ec_binding bind[3];
        struct ec_add_push pc = {.n = (uint32_t)cnt, .alpha = alpha};
        EC_TRY(bind_span(a, i0, cnt, &bind[0], &pc.a_off));
        EC_TRY(bind_span(out, i0, cnt, &bind[2], &pc.o_off));
        if (nb == n) { EC_TRY(bind_span(b, i0, cnt, &bind[1], &pc.b_off)); pc.nb = (uint32_t)cnt; pc.b_start = 0; }
        else { EC_TRY(bind_span(b, 0, nb, &bind[1], &pc.b_off)); pc.nb = (uint32_t)nb; pc.b_start = (uint32_t)(i0 % nb); }
        EC_TRY(dispatch_add(ctx, p, bind, &pc, groups_for(ctx, cnt, width), 1, 1));
    }
    return EC_OK;
}

static ec_status norm(ec_context *ctx, uint32_t mode, ec_tensor *x, ec_tensor *w, ec_tensor *bias, float eps, ec_tensor *y)
{
    const char *name = mode ? "rmsnorm" : "layernorm";
    EC_TRY(need_f32(x, "norm input")); EC_TRY(need_f32(y, "norm output")); EC_TRY(need_weight(w, "norm weight"));
    int64_t cols = last_dim(x), rows = rows_of(x);
    if (ec_numel(y) != ec_numel(x) || last_dim(y) != cols) return ec_fail(EC_ERR_ARG, "%s: output shape differs from the input's", name);
    if (ec_numel(w) != cols) return ec_fail(EC_ERR_ARG, "%s: weight has %lld values for rows of %lld", name, (long long)ec_numel(w), (long long)cols);
    if (bias && (need_weight(bias, "norm bias") || ec_numel(bias) != cols)) return ec_fail(EC_ERR_ARG, "%s: bias must have %lld values", name, (long long)cols);
    if (rows == 0) return EC_OK;
    if (w->dtype != (bias ? bias : w)->dtype) return ec_fail(EC_ERR_ARG, "%s: weight and bias dtypes differ", name);
    ec_pipeline *p;
    uint32_t width = reduce_width(ctx);
    EC_TRY(PIPELINE(norm, &p, .width = width, .wtype = wtype(w), .MODE = mode));
    ec_binding bind[4];
    EC_TRY(ec_bind_texel(w, &bind[1]));
    EC_TRY(ec_bind_texel(bias ? bias : w, &bind[2]));
    uint64_t chunk = rows_per_binding(ctx, cols);
    if (!chunk) return ec_fail(EC_ERR_ARG, "%s: one row is larger than a storage binding", name);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        struct ec_norm_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols, .eps = eps, .has_bias = bias != NULL};
        EC_TRY(bind_span(x, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[0], &pc.x_off));
        EC_TRY(bind_span(y, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[3], &pc.y_off));
        EC_TRY(dispatch_norm(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n, 1), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_layernorm(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, float eps, ec_tensor *y)
{
    return norm(ctx, 0, x, w, bias, eps, y);
}

ec_status ec_op_rmsnorm(ec_context *ctx, ec_tensor *x, ec_tensor *w, float eps, ec_tensor *y)
{
    return norm(ctx, 1, x, w, NULL, eps, y);
}

/* Shared by the activations: in0 (and in1 for the gated form) are column ranges, out is dense. */
static ec_status pointwise_rows(ec_context *ctx, uint32_t mode, ec_cols in0, ec_cols in1, ec_tensor *out, int64_t rows, int64_t cols)
{
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(activation, &p, .width = width, .MODE = mode));
    uint64_t widest = in0.stride > in1.stride ? in0.stride : in1.stride;
    uint64_t chunk = rows_per_binding(ctx, widest > (uint64_t)cols ? widest : (uint64_t)cols);
    if (!chunk) return ec_fail(EC_ERR_ARG, "activation: one row is larger than a storage binding");
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        ec_binding bind[3];
        struct ec_activation_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols, .in0_stride = (uint32_t)in0.stride,
                                        .in1_stride = (uint32_t)in1.stride};
        EC_TRY(bind_span(in0.t, in0.off + (uint64_t)r0 * in0.stride, (uint64_t)(n - 1) * in0.stride + cols, &bind[0], &pc.in0_off));
        EC_TRY(bind_span(in1.t, in1.off + (uint64_t)r0 * in1.stride, (uint64_t)(n - 1) * in1.stride + cols, &bind[1], &pc.in1_off));
        EC_TRY(bind_span(out, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[2], &pc.o_off));
        EC_TRY(dispatch_activation(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n * cols, width), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_activation(ec_context *ctx, ec_activation kind, ec_tensor *x, ec_tensor *y)
{
    EC_TRY(need_f32(x, "activation input")); EC_TRY(need_f32(y, "activation output"));
    if ((unsigned)kind > EC_SILU) return ec_fail(EC_ERR_ARG, "unknown activation %d", (int)kind);
    if (ec_numel(x) != ec_numel(y)) return ec_fail(EC_ERR_ARG, "activation: output size differs from the input's");
    int64_t cols = last_dim(x), rows = rows_of(x);
    if (rows == 0 || cols == 0) return EC_OK;
    return pointwise_rows(ctx, (uint32_t)kind, ec_whole(x), ec_whole(x), y, rows, cols);
}

static ec_status check_cols(ec_cols c, int64_t rows, int64_t cols, const char *what)
{
    EC_TRY(need_f32(c.t, what));
    if (rows == 0) return EC_OK;
    if (c.off + (uint64_t)(rows - 1) * c.stride + (uint64_t)cols > (uint64_t)ec_numel(c.t) || (int64_t)c.stride < cols)
        return ec_fail(EC_ERR_ARG, "%s: a %lld x %lld block at offset %zu with row stride %zu does not fit its tensor",
                       what, (long long)rows, (long long)cols, c.off, c.stride);
    return EC_OK;
}

ec_status ec_op_silu_mul(ec_context *ctx, ec_cols gate, ec_cols up, ec_tensor *y)
{
    EC_TRY(need_f32(y, "silu_mul output"));
    int64_t cols = last_dim(y), rows = rows_of(y);
    EC_TRY(check_cols(gate, rows, cols, "silu_mul gate"));
    EC_TRY(check_cols(up, rows, cols, "silu_mul up"));
    if (rows == 0 || cols == 0) return EC_OK;
    return pointwise_rows(ctx, 3, gate, up, y, rows, cols);
}

ec_status ec_op_softmax(ec_context *ctx, ec_tensor *x, float scale, ec_tensor *y)
{
    EC_TRY(need_f32(x, "softmax input")); EC_TRY(need_f32(y, "softmax output"));
    int64_t cols = last_dim(x), rows = rows_of(x);
    if (ec_numel(x) != ec_numel(y)) return ec_fail(EC_ERR_ARG, "softmax: output size differs from the input's");
    if (rows == 0 || cols == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = reduce_width(ctx);
    EC_TRY(PIPELINE(softmax, &p, .width = width));
    uint64_t chunk = rows_per_binding(ctx, cols);
    if (!chunk) return ec_fail(EC_ERR_ARG, "softmax: one row is larger than a storage binding");
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        ec_binding bind[2];
        struct ec_softmax_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols, .scale = scale};
        EC_TRY(bind_span(x, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[0], &pc.x_off));
        EC_TRY(bind_span(y, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[1], &pc.y_off));
        EC_TRY(dispatch_softmax(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n, 1), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_rope(ec_context *ctx, ec_cols x, int64_t tokens, int n_heads, int head_dim, int rot_dim, ec_tensor *cos_sin)
{
    EC_TRY(need_f32(cos_sin, "rope cos/sin table"));
    if (rot_dim <= 0 || rot_dim > head_dim || rot_dim % 2)
        return ec_fail(EC_ERR_ARG, "rope: rotary dimension %d must be even and at most the head dimension %d", rot_dim, head_dim);
    if (n_heads <= 0) return ec_fail(EC_ERR_ARG, "rope: %d heads", n_heads);
    EC_TRY(check_cols(x, tokens, (int64_t)n_heads * head_dim, "rope input"));
    if (ec_numel(cos_sin) < tokens * rot_dim) return ec_fail(EC_ERR_ARG, "rope: the cos/sin table must be [%lld, %d]", (long long)tokens, rot_dim);
    if (tokens == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(rope, &p, .width = width));
    ec_binding bind[2];
    struct ec_rope_push pc = {.tokens = (uint32_t)tokens, .n_heads = (uint32_t)n_heads, .head_dim = (uint32_t)head_dim,
                              .rot_dim = (uint32_t)rot_dim, .row_stride = (uint32_t)x.stride};
    EC_TRY(bind_span(x.t, x.off, (uint64_t)(tokens - 1) * x.stride + (uint64_t)n_heads * head_dim, &bind[0], &pc.x_off));
    EC_TRY(bind_span(cos_sin, 0, (uint64_t)tokens * rot_dim, &bind[1], NULL));
    return dispatch_rope(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)tokens * n_heads * (rot_dim / 2), width), 1, 1);
}

static ec_status check_kv_heads(ec_cols c, int64_t seqs, uint64_t seq, int64_t rows, int64_t heads, uint64_t head, int64_t dim,
                                const char *what);

ec_status ec_op_rope_kv(ec_context *ctx, ec_cols qkv, int64_t tokens, int n_heads, int n_kv_heads, int head_dim, int rot_dim,
                        ec_cols cos_sin, ec_cols q_out, ec_cols kv, int64_t kv_head)
{
    if (n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || head_dim % 2)
        return ec_fail(EC_ERR_ARG, "rope_kv: %d query and %d key/value heads of %d values (an even number)", n_heads, n_kv_heads, head_dim);
    if (rot_dim <= 0 || rot_dim > head_dim || rot_dim % 2)
        return ec_fail(EC_ERR_ARG, "rope_kv: rotary dimension %d must be even and at most the head dimension %d", rot_dim, head_dim);
    int64_t q_dim = (int64_t)n_heads * head_dim, kv_dim = (int64_t)n_kv_heads * head_dim;
    EC_TRY(check_cols(qkv, tokens, q_dim + 2 * kv_dim, "rope_kv qkv"));
    EC_TRY(check_cols(cos_sin, tokens, rot_dim, "rope_kv cos/sin table"));
    EC_TRY(check_cols(q_out, tokens, q_dim, "rope_kv q output"));
    if (kv_head <= 0) kv_head = head_dim;
    EC_TRY(check_kv_heads(kv, 1, 0, tokens, 2 * n_kv_heads, (uint64_t)kv_head, head_dim, "rope_kv cache"));
    if (kv.t->dtype == EC_F16 && (kv.off % 2 || kv.stride % 2 || kv_head % 2))
        return ec_fail(EC_ERR_ARG, "rope_kv: an f16 cache's offset, row stride and head stride must be even");
    if (tokens == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(rope_kv, &p, .width = width, .wtype = wtype(kv.t)));
    ec_binding bind[4];
    struct ec_rope_kv_push pc = {.T = (uint32_t)tokens, .Hq = (uint32_t)n_heads, .Hkv = (uint32_t)n_kv_heads,
                                 .head_dim = (uint32_t)head_dim, .rot_dim = (uint32_t)rot_dim, .src_row = (uint32_t)qkv.stride,
                                 .q_row = (uint32_t)q_out.stride, .kv_row = (uint32_t)kv.stride, .kv_head = (uint32_t)kv_head};
    uint64_t n = (uint64_t)(tokens - 1), kv_span = n * kv.stride + (uint64_t)(2 * n_kv_heads - 1) * kv_head + head_dim;
    EC_TRY(bind_span(qkv.t, qkv.off, n * qkv.stride + (uint64_t)(q_dim + 2 * kv_dim), &bind[0], &pc.src_off));
    EC_TRY(bind_span(cos_sin.t, cos_sin.off, n * cos_sin.stride + (uint64_t)rot_dim, &bind[1], &pc.cs_off));
    EC_TRY(bind_span(q_out.t, q_out.off, n * q_out.stride + (uint64_t)q_dim, &bind[2], &pc.q_off));
    if (kv.t->dtype == EC_F16) {
        /* The cache in 32-bit words (two f16 values each); kv_off counts f16 values from the binding. */
        uint32_t word;
        EC_TRY(bind_span(kv.t, kv.off / 2, kv_span / 2, &bind[3], &word));
        pc.kv_off = 2 * word;
    } else {
        EC_TRY(bind_span(kv.t, kv.off, kv_span, &bind[3], &pc.kv_off));
    }
    uint64_t items = (uint64_t)tokens * (uint64_t)(n_heads + 2 * n_kv_heads) * (uint64_t)(head_dim / 2);
    return dispatch_rope_kv(ctx, p, bind, &pc, groups_for(ctx, items, width), 1, 1);
}

/* K or V laid out as (sequence, row, head, value) -> c.off + b*seq + r*c.stride + h*head + e, f32 or f16:
 * the last value of the last head of the last row of the last sequence lies inside the tensor. */
static ec_status check_kv_heads(ec_cols c, int64_t seqs, uint64_t seq, int64_t rows, int64_t heads, uint64_t head, int64_t dim,
                                const char *what)
{
    if (!c.t) return ec_fail(EC_ERR_ARG, "%s is missing", what);
    if (c.t->dtype != EC_F32 && c.t->dtype != EC_F16)
        return ec_fail(EC_ERR_ARG, "%s must be float32 or float16, not %s", what, ec_dtype_name(c.t->dtype));
    if (seqs == 0 || rows == 0) return EC_OK;
    uint64_t last = c.off + (uint64_t)(seqs - 1) * seq + (uint64_t)(rows - 1) * c.stride + (uint64_t)(heads - 1) * head + (uint64_t)dim;
    if (last > (uint64_t)ec_numel(c.t) || c.stride < (size_t)dim || head < (uint64_t)dim)
        return ec_fail(EC_ERR_ARG, "%s: %lld sequence(s) of %lld rows of %lld heads of %lld values at offset %zu (strides: sequence "
                       "%llu, row %zu, head %llu) do not fit its tensor of %lld values", what, (long long)seqs, (long long)rows,
                       (long long)heads, (long long)dim, c.off, (unsigned long long)seq, c.stride, (unsigned long long)head,
                       (long long)ec_numel(c.t));
    return EC_OK;
}

/* Where attention's K and V values lie (ec_attention_args: 0 strides mean token-major rows), and how many
 * values one sequence's keys span from its first. */
typedef struct { uint64_t seq, head, span; } kv_layout;
static kv_layout kv_layout_of(const ec_attention_args *a)
{
    kv_layout l = {a->kv_seq > 0 ? (uint64_t)a->kv_seq : (uint64_t)a->kv_rows * a->k.stride,
                   a->kv_head > 0 ? (uint64_t)a->kv_head : (uint64_t)a->head_dim, 0};
    l.span = (uint64_t)(a->kv_rows - 1) * a->k.stride + (uint64_t)(a->n_kv_heads - 1) * l.head + (uint64_t)a->head_dim;
    return l;
}

/* K and V past the texel reach: groups of whole sequences, each group's K/V through views that start at
 * its first sequence (a sequence's keys are never split between views). *group: sequences per group. */
static ec_status kv_groups(ec_context *ctx, const ec_attention_args *a, uint64_t *group)
{
    kv_layout kl = kv_layout_of(a);
    uint64_t es = ec_dtype_size(a->k.t->dtype), seq_elems = kl.seq, span = kl.span; /* one sequence's K */
    *group = (uint64_t)a->batch;
    if (ec_texel_fits(a->k.t) && ec_texel_fits(a->v.t)) return EC_OK;
    uint64_t align = ctx->limits.minTexelBufferOffsetAlignment > 16 ? ctx->limits.minTexelBufferOffsetAlignment : 16;
    uint64_t usable = (ec_texel_reach(ctx) - align - 16) / es;
    if (span > usable)
        return ec_fail(EC_ERR_ARG, "attention: the keys of one sequence (%llu bytes) exceed the device's texel-buffer reach "
                       "of %llu bytes", (unsigned long long)(span * es), (unsigned long long)ec_texel_reach(ctx));
    *group = seq_elems ? 1 + (usable - span) / seq_elems : (uint64_t)a->batch;
    return EC_OK;
}

/* Binds K and V of sequences [b0, b0 + n) (bindings 1 and 2); *k_off, *v_off: where sequence b0's rows
 * start in the views, in values of the cache's dtype. */
static ec_status bind_kv_group(const ec_attention_args *a, uint64_t b0, uint64_t n, ec_binding *bind, uint32_t *k_off, uint32_t *v_off)
{
    kv_layout kl = kv_layout_of(a);
    uint64_t es = ec_dtype_size(a->k.t->dtype), seq_elems = kl.seq, len = (n - 1) * seq_elems + kl.span;
    uint64_t k_skip, v_skip;
    EC_TRY(ec_bind_texel_range(a->k.t, (a->k.off + b0 * seq_elems) * es, len * es, &bind[1], &k_skip));
    EC_TRY(ec_bind_texel_range(a->v.t, (a->v.off + b0 * seq_elems) * es, len * es, &bind[2], &v_skip));
    *k_off = (uint32_t)(k_skip / es);
    *v_off = (uint32_t)(v_skip / es);
    return EC_OK;
}

/* Decode: one query token per sequence, split-K over the keys (shaders/attention_decode.comp). */
static ec_status attention_decode(ec_context *ctx, const ec_attention_args *a, ec_binding *bind, uint64_t group)
{
    kv_layout kl = kv_layout_of(a);
    int64_t B = a->batch, S = a->kv_rows;
    int H = a->n_heads, Hkv = a->n_kv_heads, D = a->head_dim, G = H / Hkv;
    int64_t max_len = a->max_len > 0 && a->max_len < S ? a->max_len : S;
    if (max_len < 1) max_len = 1;
    /* Key ranges per KV head: enough workgroups to occupy the device (lavapipe: a few per core; GPUs:
     * hundreds), each range at least 32 keys, and no more than the partials hold. */
    uint64_t part_cap = a->partials ? (uint64_t)ec_numel(a->partials) / ((uint64_t)B * H * (D + 2)) : 1;
    int64_t want = a->splits > 0 ? a->splits : ((is_cpu(ctx) ? 16 : 512) + B * Hkv - 1) / (B * Hkv);
    int64_t most = (max_len + 31) / 32;
    if (a->splits <= 0 && want > most) want = most;
    if (want > (int64_t)part_cap) want = (int64_t)part_cap;
    if (want > max_len) want = max_len;
    if (want < 1) want = 1;
    /* llvmpipe ends every loop of a shader invocation, silently, once the invocation has run 65535 loop
     * iterations in all (Mesa's LP_MAX_TGSI_LOOP_ITERATIONS), so on a CPU device a workgroup walks at most
     * `most_keys` keys: the keys-across-lanes layout counts a few iterations per block of lanes; the other
     * (emulated GPU shapes) about 8 + 8 per query head and head-dim chunk per key, as measured (Qwen2's
     * 7 query heads of 128 values went wrong past ~1000 keys, 1 head of 64 past ~7000). */
    /* keys across lanes holds q of the whole query group in registers, fully unrolled: kept to small groups
     * (Mesa 25's llvmpipe took minutes and gigabytes compiling it for Qwen2's 7 heads x 128 values) */
    int lane_keys = is_cpu(ctx) && (int64_t)G * ((D + 7) / 8) <= 32;
    uint32_t width = ctx->info.subgroup_size;
    if (strcmp(ctx->info.type, "cpu") == 0) {
        int64_t chunks = ((D + 7) / 8 + width - 1) / width;
        int64_t most_keys = lane_keys ? 65536 : 65535 / (8 + 8 * G * chunks + (D % 8 ? 16 * chunks : 0));
        if ((max_len + want - 1) / want > most_keys) want = (max_len + most_keys - 1) / most_keys;
        if (want > (int64_t)part_cap)
            return ec_fail(EC_ERR_ARG, "attention: decoding over %lld keys takes %lld key ranges on this device, and the "
                           "partial results hold %llu", (long long)max_len, (long long)want, (unsigned long long)part_cap);
    }
    uint32_t split_len = (uint32_t)((max_len + want - 1) / want);
    uint32_t splits = (uint32_t)((max_len + split_len - 1) / split_len);

    ec_pipeline *p;
    EC_TRY(PIPELINE(attention_decode, &p, .width = width, .wtype = wtype(a->k.t), .D = (uint32_t)D, .G = (uint32_t)G,
                    .LANE_KEYS = (uint32_t)lane_keys));
    struct ec_attention_decode_push pc = {
        .Hq = (uint32_t)H, .Hkv = (uint32_t)Hkv, .q_seq = (uint32_t)a->q.stride, .kv_row = (uint32_t)a->k.stride,
        .kv_seq = (uint32_t)kl.seq, .kv_head = (uint32_t)kl.head, .splits = splits,
        .split_len = split_len, .scale = a->scale};
    EC_TRY(bind_span(a->q.t, a->q.off, (uint64_t)(B - 1) * a->q.stride + (uint64_t)H * D, &bind[0], &pc.q_off));
    uint64_t part_n = (uint64_t)B * H * splits * (D + 2);
    if (splits == 1) {
        pc.o_seq = (uint32_t)a->out.stride;
        EC_TRY(bind_span(a->out.t, a->out.off, (uint64_t)(B - 1) * a->out.stride + (uint64_t)H * D, &bind[4], &pc.o_off));
    } else {
        EC_TRY(need_f32(a->partials, "attention partials"));
        EC_TRY(need_same_context(ctx, a->partials));
        EC_TRY(bind_span(a->partials, 0, part_n, &bind[4], &pc.o_off));
    }
    for (uint64_t b0 = 0; b0 < (uint64_t)B; b0 += group) {
        uint64_t n = (uint64_t)B - b0 < group ? (uint64_t)B - b0 : group;
        EC_TRY(bind_kv_group(a, b0, n, bind, &pc.k_off, &pc.v_off));
        pc.b0 = (uint32_t)b0;
        EC_TRY(dispatch_attention_decode(ctx, p, bind, &pc, splits, (uint32_t)Hkv, (uint32_t)n));
    }
    if (splits == 1) return EC_OK;

    ec_pipeline *pc2;
    EC_TRY(PIPELINE(attention_combine, &pc2, .width = width, .D = (uint32_t)D));
    ec_binding cb[2];
    struct ec_attention_combine_push cp = {.Hq = (uint32_t)H, .splits = splits, .o_seq = (uint32_t)a->out.stride};
    EC_TRY(bind_span(a->partials, 0, part_n, &cb[0], &cp.part_off));
    EC_TRY(bind_span(a->out.t, a->out.off, (uint64_t)(B - 1) * a->out.stride + (uint64_t)H * D, &cb[1], &cp.o_off));
    return dispatch_attention_combine(ctx, pc2, cb, &cp, (uint32_t)H, (uint32_t)B, 1);
}

ec_status ec_op_attention(ec_context *ctx, const ec_attention_args *a)
{
    int64_t B = a->batch, T = a->tokens, S = a->kv_rows;
    int H = a->n_heads, Hkv = a->n_kv_heads, D = a->head_dim;
    if (H <= 0 || Hkv <= 0 || H % Hkv) return ec_fail(EC_ERR_ARG, "attention: %d query heads cannot share %d key/value heads", H, Hkv);
    if (D <= 0 || D > 256) return ec_fail(EC_ERR_ARG, "attention: head dimension %d is outside 1..256", D);
    if (B <= 0 || T <= 0) return EC_OK;
    if (S <= 0) return ec_fail(EC_ERR_ARG, "attention: no key/value rows");
    EC_TRY(check_cols(a->q, B * T, (int64_t)H * D, "attention q"));
    EC_TRY(check_cols(a->out, B * T, (int64_t)H * D, "attention output"));
    kv_layout kl = kv_layout_of(a);
    EC_TRY(check_kv_heads(a->k, B, kl.seq, S, Hkv, kl.head, D, "attention k"));
    EC_TRY(check_kv_heads(a->v, B, kl.seq, S, Hkv, kl.head, D, "attention v"));
    if (a->k.t->dtype != a->v.t->dtype) return ec_fail(EC_ERR_ARG, "attention: k and v must have the same dtype");
    if (!a->lengths || a->lengths->dtype != EC_I32 || ec_numel(a->lengths) < B)
        return ec_fail(EC_ERR_ARG, "attention: lengths must be an int32 tensor of %lld values", (long long)B);
    if (a->k.stride != a->v.stride) return ec_fail(EC_ERR_ARG, "attention: k and v must have the same row stride");
    if ((uint64_t)(B - 1) * kl.seq + kl.span > UINT32_MAX) return ec_fail(EC_ERR_ARG, "attention: k/v of more than 2^32 values");
    uint64_t group;
    EC_TRY(kv_groups(ctx, a, &group));
    ec_binding bind[5];
    EC_TRY(bind_span(a->lengths, 0, (uint64_t)B, &bind[3], NULL));
    if (T == 1) return attention_decode(ctx, a, bind, group);

    ec_pipeline *p;
    uint32_t width = ctx->info.subgroup_size;
    /* Many queries on a CPU device: the tiled kernel (attention_tiled.comp: blocks of 8 queries x 4 keys per
     * lane, one subgroup per workgroup, as lavapipe runs it); otherwise one query per lane. The views of K and
     * V start on 16-byte boundaries, so a value offset's remainder mod 4 is the same in every view. */
    int tiled = is_cpu(ctx) && D % 4 == 0 && a->k.off % 4 == 0 && a->v.off % 4 == 0 && a->k.stride % 4 == 0 &&
                kl.seq % 4 == 0 && kl.head % 4 == 0;
    if (tiled) EC_TRY(PIPELINE(attention_tiled, &p, .width = width, .wtype = wtype(a->k.t), .D = (uint32_t)D));
    else EC_TRY(PIPELINE(attention, &p, .width = width, .wtype = wtype(a->k.t), .D = (uint32_t)D));
    struct ec_attention_push pc = {
        .T = (uint32_t)T, .Hq = (uint32_t)H, .Hkv = (uint32_t)Hkv, .causal = a->causal != 0,
        .q_row = (uint32_t)a->q.stride, .q_seq = (uint32_t)(T * a->q.stride),
        .kv_row = (uint32_t)a->k.stride, .kv_seq = (uint32_t)kl.seq, .kv_head = (uint32_t)kl.head,
        .o_row = (uint32_t)a->out.stride, .o_seq = (uint32_t)(T * a->out.stride), .scale = a->scale};
    EC_TRY(bind_span(a->q.t, a->q.off, (uint64_t)(B * T - 1) * a->q.stride + (uint64_t)H * D, &bind[0], &pc.q_off));
    EC_TRY(bind_span(a->out.t, a->out.off, (uint64_t)(B * T - 1) * a->out.stride + (uint64_t)H * D, &bind[4], &pc.o_off));
    for (uint64_t b0 = 0; b0 < (uint64_t)B; b0 += group) {
        uint64_t n = (uint64_t)B - b0 < group ? (uint64_t)B - b0 : group;
        EC_TRY(bind_kv_group(a, b0, n, bind, &pc.k_off, &pc.v_off));
        pc.b0 = (uint32_t)b0;
        if (tiled) EC_TRY(dispatch_attention_tiled(ctx, p, bind, &pc, (uint32_t)((T + 7) / 8), (uint32_t)H, (uint32_t)n));
        else EC_TRY(dispatch_attention(ctx, p, bind, &pc, (uint32_t)((T + width - 1) / width), (uint32_t)H, (uint32_t)n));
    }
    return EC_OK;
}

ec_status ec_op_embedding(ec_context *ctx, ec_tensor *ids, ec_tensor *table, ec_tensor *out)
{
    EC_TRY(need_weight(table, "embedding table")); EC_TRY(need_f32(out, "embedding output"));
    if (!ids || ids->dtype != EC_I32) return ec_fail(EC_ERR_ARG, "embedding: ids must be int32");
    if (table->ndim != 2) return ec_fail(EC_ERR_ARG, "embedding: the table must be 2-D [vocab, dim]");
    int64_t T = ec_numel(ids), V = table->shape[0], D = table->shape[1];
    if (ec_numel(out) != T * D) return ec_fail(EC_ERR_ARG, "embedding: output must be [%lld, %lld]", (long long)T, (long long)D);
    if (T == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(embedding, &p, .width = width, .wtype = wtype(table)));
    ec_binding bind[3];
    struct ec_embedding_push pc = {.n_ids = (uint32_t)T, .dim = (uint32_t)D};
    EC_TRY(bind_span(ids, 0, (uint64_t)T, &bind[0], NULL));
    EC_TRY(bind_span(out, 0, (uint64_t)T * D, &bind[2], &pc.o_off));
    /* A table past the texel reach is read in pieces of whole rows: each dispatch writes the ids of its piece. */
    size_t row_bytes = (size_t)D * ec_dtype_size(table->dtype);
    uint64_t piece = (uint64_t)V;
    if (!ec_texel_fits(table)) {
        uint64_t align = ctx->limits.minTexelBufferOffsetAlignment > 16 ? ctx->limits.minTexelBufferOffsetAlignment : 16;
        piece = row_bytes ? (ec_texel_reach(ctx) - align) / row_bytes : (uint64_t)V;
        if (piece == 0) return ec_fail(EC_ERR_ARG, "embedding: one row of %zu bytes exceeds the device's texel-buffer reach", row_bytes);
    }
    for (uint64_t v0 = 0; v0 < (uint64_t)V; v0 += piece) {
        uint64_t rows = (uint64_t)V - v0 < piece ? (uint64_t)V - v0 : piece, skip;
        EC_TRY(ec_bind_texel_range(table, v0 * row_bytes, rows * row_bytes, &bind[1], &skip));
        pc.id0 = (uint32_t)v0;
        pc.vocab = (uint32_t)rows;
        pc.t_off = (uint32_t)(skip / ec_dtype_size(table->dtype));
        EC_TRY(dispatch_embedding(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)T * D, width), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_copy(ec_context *ctx, ec_cols src, ec_cols dst, int64_t rows, int64_t cols)
{
    EC_TRY(check_cols(src, rows, cols, "copy source"));
    EC_TRY(check_cols(dst, rows, cols, "copy destination"));
    if (rows == 0 || cols == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(copy2d, &p, .width = width));
    uint64_t widest = src.stride > dst.stride ? src.stride : dst.stride;
    uint64_t chunk = rows_per_binding(ctx, widest);
    if (!chunk) return ec_fail(EC_ERR_ARG, "copy: one row is larger than a storage binding");
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        ec_binding bind[2];
        struct ec_copy2d_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols, .src_stride = (uint32_t)src.stride,
                                    .dst_stride = (uint32_t)dst.stride};
        EC_TRY(bind_span(src.t, src.off + (uint64_t)r0 * src.stride, (uint64_t)(n - 1) * src.stride + cols, &bind[0], &pc.src_off));
        EC_TRY(bind_span(dst.t, dst.off + (uint64_t)r0 * dst.stride, (uint64_t)(n - 1) * dst.stride + cols, &bind[1], &pc.dst_off));
        EC_TRY(dispatch_copy2d(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n * cols, width), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_copy_to_f16(ec_context *ctx, ec_cols src, ec_cols dst, int64_t rows, int64_t cols)
{
    EC_TRY(check_cols(src, rows, cols, "copy source"));
    if (!dst.t || dst.t->dtype != EC_F16) return ec_fail(EC_ERR_ARG, "copy_to_f16: the destination must be float16");
    EC_TRY(check_kv_heads(dst, 1, 0, rows, 1, (uint64_t)cols, cols, "copy destination"));
    if (dst.off % 2 || dst.stride % 2 || cols % 2)
        return ec_fail(EC_ERR_ARG, "copy_to_f16: offset %zu, stride %zu and columns %lld must be even", dst.off, dst.stride, (long long)cols);
    if (rows == 0 || cols == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(copy2d_f16, &p, .width = width));
    uint64_t widest = src.stride > dst.stride / 2 ? src.stride : dst.stride / 2;
    uint64_t chunk = rows_per_binding(ctx, widest);
    if (!chunk) return ec_fail(EC_ERR_ARG, "copy: one row is larger than a storage binding");
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        ec_binding bind[2];
        uint32_t dst_word;
        struct ec_copy2d_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols, .src_stride = (uint32_t)src.stride,
                                    .dst_stride = (uint32_t)dst.stride};
        EC_TRY(bind_span(src.t, src.off + (uint64_t)r0 * src.stride, (uint64_t)(n - 1) * src.stride + cols, &bind[0], &pc.src_off));
        /* The destination in 32-bit words: two f16 values each. */
        EC_TRY(bind_span(dst.t, (dst.off + (uint64_t)r0 * dst.stride) / 2, ((uint64_t)(n - 1) * dst.stride + cols) / 2, &bind[1], &dst_word));
        pc.dst_off = 2 * dst_word;
        EC_TRY(dispatch_copy2d_f16(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n * cols / 2, width), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_concat(ec_context *ctx, ec_tensor **parts, int n, ec_tensor *out)
{
    EC_TRY(need_f32(out, "concat output"));
    int64_t rows = rows_of(out), col = 0;
    for (int i = 0; i < n; i++) {
        EC_TRY(need_f32(parts[i], "concat input"));
        if (rows_of(parts[i]) != rows) return ec_fail(EC_ERR_ARG, "concat: input %d has %lld rows, the output %lld", i, (long long)rows_of(parts[i]), (long long)rows);
        col += last_dim(parts[i]);
    }
    if (col != last_dim(out)) return ec_fail(EC_ERR_ARG, "concat: inputs have %lld columns in all, the output %lld", (long long)col, (long long)last_dim(out));
    col = 0;
    for (int i = 0; i < n; i++) {
        ec_cols dst = {out, (size_t)col, (size_t)last_dim(out)};
        EC_TRY(ec_op_copy(ctx, ec_whole(parts[i]), dst, rows, last_dim(parts[i])));
        col += last_dim(parts[i]);
    }
    return EC_OK;
}

ec_status ec_op_pool2d(ec_context *ctx, ec_tensor *x, int64_t batch, int h, int w, int oh, int ow, ec_tensor *y)
{
    EC_TRY(need_f32(x, "pool2d input")); EC_TRY(need_f32(y, "pool2d output"));
    if (h <= 0 || w <= 0 || oh <= 0 || ow <= 0 || oh > h || ow > w)
        return ec_fail(EC_ERR_ARG, "pool2d: cannot pool a %d x %d grid to %d x %d", h, w, oh, ow);
    int64_t C = last_dim(x);
    if (ec_numel(x) != batch * h * w * C) return ec_fail(EC_ERR_ARG, "pool2d: input must be [%lld, %d, %lld]", (long long)batch, h * w, (long long)C);
    if (ec_numel(y) != batch * oh * ow * C) return ec_fail(EC_ERR_ARG, "pool2d: output must be [%lld, %d, %lld]", (long long)batch, oh * ow, (long long)C);
    if (batch == 0 || C == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(pool2d, &p, .width = width));
    ec_binding bind[2];
    EC_TRY(ec_bind_storage(x, &bind[0]));
    EC_TRY(ec_bind_storage(y, &bind[1]));
    struct ec_pool2d_push pc = {.B = (uint32_t)batch, .H = (uint32_t)h, .W = (uint32_t)w, .C = (uint32_t)C,
                                .OH = (uint32_t)oh, .OW = (uint32_t)ow};
    return dispatch_pool2d(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)ec_numel(y), width), 1, 1);
}

ec_status ec_op_argmax(ec_context *ctx, ec_tensor *x, ec_tensor *out)
{
    EC_TRY(need_f32(x, "argmax input"));
    if (!out || out->dtype != EC_I32) return ec_fail(EC_ERR_ARG, "argmax: output must be int32");
    int64_t rows = rows_of(x), cols = last_dim(x);
    if (ec_numel(out) != rows) return ec_fail(EC_ERR_ARG, "argmax: output must have %lld values", (long long)rows);
    if (rows == 0) return EC_OK;
    if (cols == 0) return ec_fail(EC_ERR_ARG, "argmax of an empty row");
    ec_pipeline *p;
    uint32_t width = reduce_width(ctx);
    EC_TRY(PIPELINE(argmax, &p, .width = width));
    /* Rows of x past one storage binding (the logits of many rows over a large vocabulary) go in chunks. */
    uint64_t chunk = rows_per_binding(ctx, (uint64_t)cols);
    if (!chunk) return ec_fail(EC_ERR_ARG, "argmax: one row is larger than a storage binding");
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < (int64_t)chunk ? rows - r0 : (int64_t)chunk;
        ec_binding bind[2];
        struct ec_argmax_push pc = {.rows = (uint32_t)n, .cols = (uint32_t)cols};
        EC_TRY(bind_span(x, (uint64_t)r0 * cols, (uint64_t)n * cols, &bind[0], &pc.x_off));
        EC_TRY(bind_span(out, (uint64_t)r0, (uint64_t)n, &bind[1], &pc.o_off));
        EC_TRY(dispatch_argmax(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)n, 1), 1, 1));
    }
    return EC_OK;
}

ec_status ec_op_patchify(ec_context *ctx, ec_tensor *pixels, int patch, ec_tensor *out)
{
    EC_TRY(need_f32(pixels, "patchify input")); EC_TRY(need_f32(out, "patchify output"));
    if (pixels->ndim != 4 || pixels->shape[2] != pixels->shape[3])
        return ec_fail(EC_ERR_ARG, "patchify: pixels must be [B, C, S, S]");
    int64_t B = pixels->shape[0], C = pixels->shape[1], S = pixels->shape[2];
    if (patch <= 0 || patch > S) return ec_fail(EC_ERR_ARG, "patchify: patch size %d for an image of %lld pixels", patch, (long long)S);
    /* As a stride-P convolution without padding: floor(S / P) patches per side, the remainder unused
     * (SigLIP so400m: 384 px / 14 = 27 patches, the last 6 pixels dropped). */
    int64_t G = S / patch;
    if (ec_numel(out) != B * G * G * C * patch * patch) return ec_fail(EC_ERR_ARG, "patchify: output must be [%lld, %lld]", (long long)(B * G * G), (long long)(C * patch * patch));
    if (B == 0) return EC_OK;
    ec_pipeline *p;
    uint32_t width = pointwise_width(ctx);
    EC_TRY(PIPELINE(patchify, &p, .width = width));
    ec_binding bind[2];
    EC_TRY(ec_bind_storage(pixels, &bind[0]));
    EC_TRY(ec_bind_storage(out, &bind[1]));
    struct ec_patchify_push pc = {.B = (uint32_t)B, .C = (uint32_t)C, .S = (uint32_t)S, .P = (uint32_t)patch, .G = (uint32_t)G};
    return dispatch_patchify(ctx, p, bind, &pc, groups_for(ctx, (uint64_t)ec_numel(out), width), 1, 1);
}

ec_status ec_op_zero(ec_context *ctx, ec_tensor *t)
{
    EC_TRY(need_same_context(ctx, t));
    /* The barrier tracking orders the fill after earlier dispatches that touch t, and later ones after it. */
    return ec_fill_zero(ctx, t->mem.buffer, t->mem.offset, t->mem.size);
}

ec_status ec_op_peak_fma(ec_context *ctx, ec_tensor *out, uint32_t iterations)
{
    EC_TRY(need_f32(out, "peak_fma output"));
    uint32_t width = is_cpu(ctx) ? ctx->info.subgroup_size : 256;
    uint64_t n = (uint64_t)ec_numel(out) / width * width;
    if (n == 0) return ec_fail(EC_ERR_ARG, "peak_fma: the output needs at least %u values", width);
    ec_pipeline *p;
    EC_TRY(PIPELINE(peak_fma, &p, .width = width));
    ec_binding bind[1];
    EC_TRY(bind_span(out, 0, n, &bind[0], NULL));
    struct ec_peak_fma_push pc = {.iterations = iterations, .seed = 0.5f};
    return dispatch_peak_fma(ctx, p, bind, &pc, (uint32_t)(n / width), 1, 1);
}
