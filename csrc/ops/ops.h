/* The ops: one C function per shader in shaders/, each checking its operands and recording one (or,
 * for tensors past maxStorageBufferRange, a few) dispatches into the context's open batch.
 *
 * Activations are f32. Weights (w, bias, norm weights, embedding tables) may be f32, f16 or bf16 and
 * are read in their stored dtype. Shapes: a tensor of any rank is seen as [rows, last dimension]. */
#ifndef EC_OPS_H
#define EC_OPS_H

#include "vk/tensor.h"

/* A column range of a row-major f32 tensor: element (r, c) is t[off + r * stride + c]. Lets ops read
 * q, k and v straight out of a fused qkv projection, or write into a slice of a bigger tensor. */
typedef struct {
    ec_tensor *t;
    size_t off, stride;
} ec_cols;

ec_cols ec_whole(ec_tensor *t); /* off 0, stride = last dimension */

/* y[M,N] = x[M,K] w[N,K]^T + bias[N] (bias may be NULL); with accumulate, y += that instead. */
ec_status ec_op_matmul(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, ec_tensor *y, int accumulate);

/* Decode's fused forms: for a few rows (the mat-vec) the op before the matmul is computed inside it,
 * which saves a dispatch and a pass over memory; for many rows they run as the two ops, through the
 * scratch tensor (h, act: the shape of the intermediate).
 * y = rmsnorm(x; g, eps) w^T (+ bias) (+ y) */
ec_status ec_op_rmsnorm_matmul(ec_context *ctx, ec_tensor *x, ec_tensor *g, float eps, ec_tensor *h, ec_tensor *w,
                               ec_tensor *bias, ec_tensor *y, int accumulate);
/* y = (silu(gate) * up) w^T (+ y), gate | up the halves of gate_up [M, 2F] (Phi-3's fused projection). */
ec_status ec_op_silu_mul_matmul(ec_context *ctx, ec_tensor *gate_up, ec_tensor *act, ec_tensor *w, ec_tensor *y, int accumulate);

/* out = a + alpha * b, with b repeated when it has fewer elements (its count must divide a's). */
ec_status ec_op_add(ec_context *ctx, ec_tensor *a, ec_tensor *b, float alpha, ec_tensor *out);

ec_status ec_op_layernorm(ec_context *ctx, ec_tensor *x, ec_tensor *w, ec_tensor *bias, float eps, ec_tensor *y);
ec_status ec_op_rmsnorm(ec_context *ctx, ec_tensor *x, ec_tensor *w, float eps, ec_tensor *y);

typedef enum { EC_GELU_TANH = 0, EC_GELU_ERF = 1, EC_SILU = 2 } ec_activation;
ec_status ec_op_activation(ec_context *ctx, ec_activation kind, ec_tensor *x, ec_tensor *y);
/* y[M,F] = silu(gate) * up, where gate and up are [M,F] column ranges (e.g. the halves of Phi-3's
 * fused gate_up output). */
ec_status ec_op_silu_mul(ec_context *ctx, ec_cols gate, ec_cols up, ec_tensor *y);

ec_status ec_op_softmax(ec_context *ctx, ec_tensor *x, float scale, ec_tensor *y);

/* In place on the heads in x: rows are tokens, each n_heads * head_dim floats from the column range;
 * cos_sin is [tokens, rot_dim] f32, cos in the first half, sin in the second (rot_dim <= head_dim). */
ec_status ec_op_rope(ec_context *ctx, ec_cols x, int64_t tokens, int n_heads, int head_dim, int rot_dim, ec_tensor *cos_sin);

/* q and out are f32; k and v are f32 or f16 (both the same: the KV cache's dtype). A single query
 * token per sequence (decode) runs split-K: workgroups over (key range, KV head, sequence), each reading
 * its KV head once for the whole group of query heads; with partials (f32, at least
 * batch * n_heads * splits * (head_dim + 2) values) the key ranges are merged by a second kernel,
 * without it each KV head is one range. */
/* RoPE and the KV-cache append of one sequence's `tokens` new rows: qkv rows hold q | k | v heads
 * (n_heads + 2 n_kv_heads of head_dim values); q is rotated into q_out, k rotated and v copied into kv
 * (the cache, f32 or f16): value e of head j (the k heads, then the v heads) of new row r lands at
 * kv.off + r * kv.stride + j * kv_head + e. kv_head = head_dim (or 0): token-major rows k | v; the
 * decoder's head-major cache passes the capacity times head_dim. cos_sin rows as ec_op_rope's table. */
ec_status ec_op_rope_kv(ec_context *ctx, ec_cols qkv, int64_t tokens, int n_heads, int n_kv_heads, int head_dim, int rot_dim,
                        ec_cols cos_sin, ec_cols q_out, ec_cols kv, int64_t kv_head);

typedef struct {
    ec_cols q, k, v, out;  /* q/out rows: (b, t) -> row b*T + t; k/v rows: (b, s) -> row b*kv_rows + s */
    int64_t batch, tokens; /* B sequences of T query tokens */
    int64_t kv_rows;       /* rows of k/v per sequence (cache capacity, or T for self-attention) */
    /* k/v value (b, s, head h, d) at off + b*kv_seq + s*stride + h*kv_head + d. 0 means token-major rows
     * (kv_seq = kv_rows*stride, kv_head = head_dim); the decoder's cache is head-major: each head's keys
     * contiguous (stride head_dim, kv_head = capacity*head_dim), which a CPU's prefetcher can follow. */
    int64_t kv_seq, kv_head;
    int n_heads, n_kv_heads, head_dim;
    int causal;
    float scale;
    ec_tensor *lengths;    /* int32 [B]: keys present per sequence (after appending this step's) */
    ec_tensor *partials;   /* decode only, may be NULL: scratch for split-K partial results */
    int splits;            /* decode only: key ranges per KV head, 0 = chosen for the device */
    int64_t max_len;       /* decode only: an upper bound of lengths known to the host (0 = kv_rows) */
} ec_attention_args;
ec_status ec_op_attention(ec_context *ctx, const ec_attention_args *a);

/* out[t,:] = table[ids[t],:]; ids int32 [T] (checked against the vocabulary by the caller). */
ec_status ec_op_embedding(ec_context *ctx, ec_tensor *ids, ec_tensor *table, ec_tensor *out);

/* Copies a rows x cols block from src to dst (both column ranges): concat, KV append, slicing. */
ec_status ec_op_copy(ec_context *ctx, ec_cols src, ec_cols dst, int64_t rows, int64_t cols);
/* The same block copied from f32 src into an f16 tensor (rounded to nearest): the f16 KV cache's
 * append. dst's offset, stride and cols (in f16 values) must be even. */
ec_status ec_op_copy_to_f16(ec_context *ctx, ec_cols src, ec_cols dst, int64_t rows, int64_t cols);
/* out = [a | b | c ...] along the last axis. */
ec_status ec_op_concat(ec_context *ctx, ec_tensor **parts, int n, ec_tensor *out);

/* x [B, H*W, C] -> y [B, OH*OW, C] (torch adaptive_avg_pool2d over each item's token grid). */
ec_status ec_op_pool2d(ec_context *ctx, ec_tensor *x, int64_t batch, int h, int w, int oh, int ow, ec_tensor *y);

/* out int32 [rows] = argmax over the last axis of x. */
ec_status ec_op_argmax(ec_context *ctx, ec_tensor *x, ec_tensor *out);

/* pixels [B, C, S, S] -> patches [B * G^2, C * P * P] for the patch-embedding matmul, G = floor(S/P) as a
 * stride-P convolution (the pixels past G * P are unused). */
ec_status ec_op_patchify(ec_context *ctx, ec_tensor *pixels, int patch, ec_tensor *out);

/* Benchmark probe: iterations x 64 FMAs per invocation, one invocation per value of out. */
ec_status ec_op_peak_fma(ec_context *ctx, ec_tensor *out, uint32_t iterations);

/* Sets every byte of t to zero. */
ec_status ec_op_zero(ec_context *ctx, ec_tensor *t);

#endif
