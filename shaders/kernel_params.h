/* The contract between the C core (csrc/ops/ops.c) and the compute shaders: each kernel's push
 * constants and specialization constants, declared once here and included by both sides, so that a
 * field or constant that one side lacks, or names differently, is a compile error.
 *
 * Push constants: one struct per kernel, ec_<kernel>_push. A shader holds it in its push-constant
 * block (layout(push_constant) uniform Push { ec_<kernel>_push p; };) and reads p.field; the C code
 * fills the same struct and passes it to the dispatch. Only 32-bit scalars (EC_UINT, float): their
 * std430 offsets in the shader are the C struct's offsets, 4 bytes apart, with no padding on either side.
 *
 * Specialization constants: 0 is the workgroup width and 1 the weight dtype of the kernel's texel
 * operand (both declared in common.glsl); a kernel's own constants, ids 2..7, are listed once in
 * EC_<KERNEL>_SPEC(X) as X(id, NAME, default). A shader declares them with
 * EC_<KERNEL>_SPEC(EC_SPEC_DECLARE); the C code gets struct ec_<kernel>_spec {width, wtype, NAME...}
 * and ec_<kernel>_spec_words(), which puts every field at its id. */
#ifndef EC_KERNEL_PARAMS_H
#define EC_KERNEL_PARAMS_H

#ifdef VULKAN /* GLSL for Vulkan (glslangValidator -V defines VULKAN) */
#define EC_UINT uint
#define EC_SPEC_DECLARE(id, name, default_value) layout(constant_id = id) const uint name = default_value;
#else
#include <stdint.h>
#define EC_UINT uint32_t
#endif

/* Weight dtypes (specialization constant 1, and BTYPE where a kernel has a second texel operand). */
#define EC_W_F32 0
#define EC_W_F16 1
#define EC_W_BF16 2
#define EC_W_Q8 3   /* block-quantized int8 (csrc/vk/tensor.h): read only by matvec_q and matmul_q */
#define EC_W_Q4 4   /* block-quantized int4 */

/* ---- matmul (GEMM) and matvec (decode): y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y) ---- */
struct ec_matmul_push {
    EC_UINT M, N, K;       /* N: rows of W in this dispatch (a piece of W past the texel reach, else all) */
    EC_UINT x_off, y_off;  /* element offsets of the bound ranges (row chunks of huge tensors) */
    EC_UINT has_bias, accumulate, aligned;  /* aligned: K is a whole number of texels */
    EC_UINT w_off;         /* element of the bound W view where this dispatch's row 0 starts */
    EC_UINT n0, y_stride;  /* W row n is output column n0 + n; y rows are y_stride floats apart */
};
#define EC_MATMUL_SPEC(X) X(2, BTYPE, 0) X(3, TM, 4) X(4, TN, 4)  /* bias dtype; rows x columns per invocation */
/* matvec's own push constants: x row m starts at x_off + m * x_stride (texels of its view); up_off: where
 * the up half starts within a row for PRE 2; eps: RMSNorm's for PRE 1. */
struct ec_matvec_push {
    EC_UINT M, N, K;       /* N: rows of W in this dispatch (a piece of W past the texel reach, else all) */
    EC_UINT x_off, y_off;
    EC_UINT has_bias, accumulate, aligned;
    EC_UINT w_off;         /* element of the bound W view where this dispatch's row 0 starts */
    EC_UINT n0, y_stride;  /* W row n is output column n0 + n; y rows are y_stride floats apart */
    EC_UINT x_stride, up_off;
    float eps;
};
/* bias dtype; W rows per workgroup; x vectors (M, at most 8); input transform (0 none, 1 RMSNorm, 2 silu-gated);
 * the RMSNorm weight's dtype */
#define EC_MATVEC_SPEC(X) X(2, BTYPE, 0) X(3, ROWS, 16) X(4, NM, 1) X(5, PRE, 0) X(6, GTYPE, 0)

/* ---- matvec_q (decode) and matmul_q (GEMM): the same product with an int8/int4 block-quantized W ----
 * A dispatch covers rows n_first .. n_first + N - 1 of W (all of them unless W is past the texel reach and
 * is read in pieces): its row n is row n_first + n of W, of the bias, and column n_first + n of y. W's packed
 * integers and its f16 scales come through two texel views; w_off (texels) and s_off (scales) say where
 * row n_first starts in them. */
struct ec_matmul_q_push {
    EC_UINT M, N, K;
    EC_UINT x_off, y_off, y_stride;  /* y element (m, n) = y_off + m * y_stride + n_first + n */
    EC_UINT n_first, w_off, s_off;
    EC_UINT has_bias, accumulate, aligned;  /* aligned: K is a whole number of blocks */
};
#define EC_MATMUL_Q_SPEC(X) X(2, BTYPE, 0) X(3, TM, 8) X(4, TN, 8)      /* bias dtype; rows x columns per invocation */
#define EC_MATVEC_Q_SPEC(X) X(2, BTYPE, 0) X(3, ROWS, 16) X(4, NM, 1)   /* bias dtype; W rows per workgroup; x vectors (M, at most 8) */

/* ---- add: o[i] = a[i] + alpha * b[(b_start + i) % nb] ---- */
struct ec_add_push {
    EC_UINT n, nb;
    float alpha;
    EC_UINT a_off, b_off, o_off, b_start;
};
#define EC_ADD_SPEC(X)

/* ---- norm: LayerNorm (MODE 0) or RMSNorm (MODE 1) per row ---- */
struct ec_norm_push {
    EC_UINT rows, cols;
    float eps;
    EC_UINT x_off, y_off, has_bias;
};
#define EC_NORM_SPEC(X) X(2, MODE, 0)

/* ---- activation: MODE 0 gelu-tanh, 1 gelu-erf, 2 silu, 3 silu(in0) * in1 ---- */
struct ec_activation_push {
    EC_UINT rows, cols, in0_off, in0_stride, in1_off, in1_stride, o_off;
};
#define EC_ACTIVATION_SPEC(X) X(2, MODE, 0)

/* ---- softmax(scale * x) per row ---- */
struct ec_softmax_push {
    EC_UINT rows, cols;
    float scale;
    EC_UINT x_off, y_off;
};
#define EC_SOFTMAX_SPEC(X)

/* ---- rope: rotate-half rotary embedding in place ---- */
struct ec_rope_push {
    EC_UINT tokens, n_heads, head_dim, rot_dim, x_off, row_stride;
};
#define EC_ROPE_SPEC(X)

/* ---- rope_kv: RoPE on q and k of T rows of the fused qkv projection, q into q_out, k and v into the
 * KV cache (in its dtype, specialization constant 1); offsets and strides in values of each buffer ---- */
struct ec_rope_kv_push {
    EC_UINT T, Hq, Hkv, head_dim, rot_dim;
    EC_UINT src_off, src_row, cs_off, q_off, q_row;
    EC_UINT kv_off, kv_row, kv_head;      /* cache value (r, head, e) = kv_off + r*kv_row + head*kv_head + e, heads:
                                             the Hkv k heads, then the Hkv v heads */
};
#define EC_ROPE_KV_SPEC(X)

/* ---- attention: online-softmax SDPA with grouped-query heads ---- */
struct ec_attention_push {
    EC_UINT T, Hq, Hkv, causal;
    EC_UINT b0;                           /* first sequence of this dispatch: b = b0 + workgroup z; the K/V
                                             views start at sequence b0 (k/v elements below use b - b0) */
    EC_UINT q_off, q_row, q_seq;          /* q element (b,t,h,d) = q_off + b*q_seq + t*q_row + h*D + d */
    EC_UINT k_off, v_off, kv_row, kv_seq, kv_head; /* k/v element (b,s,h,d) = k_off + (b-b0)*kv_seq + s*kv_row + h*kv_head + d */
    EC_UINT o_off, o_row, o_seq;
    float scale;
};
#define EC_ATTENTION_SPEC(X) X(2, D, 64)  /* head dimension (any up to 256: 72 for SigLIP, 128 for Qwen2) */
/* K and V of attention and attention_decode are read in the dtype of specialization constant 1 (f32 or f16:
 * the KV cache's dtype); q and the output are f32. */

/* ---- attention_decode: one query token per sequence (decode), split-K over the cached keys ----
 * A workgroup takes one KV head and one range of split_len keys, for the whole group of G query heads
 * that share that KV head (so the cache is read once per group, not once per query head). With
 * splits == 1 it writes the normalized output; otherwise each (sequence, query head, split) writes
 * its partial softmax state {max, sum, acc[D]} for attention_combine. */
struct ec_attention_decode_push {
    EC_UINT Hq, Hkv;
    EC_UINT b0;                           /* first sequence of this dispatch: b = b0 + workgroup z; the K/V views
                                             start at sequence b0 (k/v elements below use b - b0) */
    EC_UINT q_off, q_seq;                 /* q element (b,h,d) = q_off + b*q_seq + h*D + d */
    EC_UINT k_off, v_off, kv_row, kv_seq, kv_head; /* k/v element (b,s,h,d) = k_off + (b-b0)*kv_seq + s*kv_row + h*kv_head + d */
    EC_UINT o_off, o_seq;                 /* output (b,h,d) = o_off + b*o_seq + h*D + d, or the partials' base */
    EC_UINT splits, split_len;
    float scale;
};
/* head dimension; query heads per KV head; 1: keys across lanes (CPU devices), 0: head dimension across lanes */
#define EC_ATTENTION_DECODE_SPEC(X) X(2, D, 64) X(3, G, 1) X(4, LANE_KEYS, 0)

/* ---- attention_combine: merges the splits' partial softmax states of attention_decode ---- */
struct ec_attention_combine_push {
    EC_UINT Hq, splits, part_off, o_off, o_seq;
};
#define EC_ATTENTION_COMBINE_SPEC(X) X(2, D, 64)

/* ---- embedding: o[t, :] = table[ids[t], :] ---- */
struct ec_embedding_push {
    EC_UINT n_ids, dim, vocab, o_off;
    EC_UINT id0, t_off;    /* this dispatch writes the ids in [id0, id0 + vocab), whose row id0 starts at
                              element t_off of the bound table view (a piece past the texel reach) */
};
#define EC_EMBEDDING_SPEC(X)

/* ---- copy2d: a rows x cols block between strided regions ---- */
struct ec_copy2d_push {
    EC_UINT rows, cols, src_off, src_stride, dst_off, dst_stride;
};
#define EC_COPY2D_SPEC(X)
/* copy2d_f16: the same block from f32 to f16 (the KV cache append); dst_off, dst_stride and cols even,
 * counted in f16 elements. */
#define EC_COPY2D_F16_SPEC(X)

/* ---- pool2d: adaptive average pooling of [B, H*W, C] token grids to [B, OH*OW, C] ---- */
struct ec_pool2d_push {
    EC_UINT B, H, W, C, OH, OW;
};
#define EC_POOL2D_SPEC(X)

/* ---- argmax per row ---- */
struct ec_argmax_push {
    EC_UINT rows, cols, x_off;
    EC_UINT o_off;         /* output element of this dispatch's row 0 (rows past a storage binding go in chunks) */
};
#define EC_ARGMAX_SPEC(X)

/* ---- patchify: im2col of [B, C, S, S] pixels into [B*G*G, C*P*P] rows ---- */
struct ec_patchify_push {
    EC_UINT B, C, S, P, G;
};
#define EC_PATCHIFY_SPEC(X)

/* ---- peak_fma: the FMA-throughput probe ---- */
struct ec_peak_fma_push {
    EC_UINT iterations;
    float seed;
};
#define EC_PEAK_FMA_SPEC(X)

#ifndef VULKAN
/* The C side of the specialization constants: struct ec_<kernel>_spec and its words by id. */
typedef struct { uint32_t w[8]; } ec_spec_words;
#define EC_SPEC_FIELD_(id, name, default_value) uint32_t name;
#define EC_SPEC_STORE_(id, name, default_value) out.w[id] = s.name;
#define EC_SPEC_STRUCT(kernel, LIST)                                                   \
    struct ec_##kernel##_spec { uint32_t width, wtype; LIST(EC_SPEC_FIELD_) };         \
    static inline ec_spec_words ec_##kernel##_spec_words(struct ec_##kernel##_spec s)  \
    {                                                                                  \
        ec_spec_words out = {{s.width, s.wtype, 0, 0, 0, 0, 0, 0}};                    \
        LIST(EC_SPEC_STORE_)                                                           \
        return out;                                                                    \
    }
EC_SPEC_STRUCT(matmul, EC_MATMUL_SPEC)
EC_SPEC_STRUCT(matvec, EC_MATVEC_SPEC)
EC_SPEC_STRUCT(matmul_q, EC_MATMUL_Q_SPEC)
EC_SPEC_STRUCT(matvec_q, EC_MATVEC_Q_SPEC)
EC_SPEC_STRUCT(add, EC_ADD_SPEC)
EC_SPEC_STRUCT(norm, EC_NORM_SPEC)
EC_SPEC_STRUCT(activation, EC_ACTIVATION_SPEC)
EC_SPEC_STRUCT(softmax, EC_SOFTMAX_SPEC)
EC_SPEC_STRUCT(rope, EC_ROPE_SPEC)
EC_SPEC_STRUCT(rope_kv, EC_ROPE_KV_SPEC)
EC_SPEC_STRUCT(attention, EC_ATTENTION_SPEC)
EC_SPEC_STRUCT(attention_tiled, EC_ATTENTION_SPEC)  /* attention_tiled.comp: attention's push and constants */
EC_SPEC_STRUCT(attention_decode, EC_ATTENTION_DECODE_SPEC)
EC_SPEC_STRUCT(attention_combine, EC_ATTENTION_COMBINE_SPEC)
EC_SPEC_STRUCT(embedding, EC_EMBEDDING_SPEC)
EC_SPEC_STRUCT(copy2d, EC_COPY2D_SPEC)
EC_SPEC_STRUCT(copy2d_f16, EC_COPY2D_F16_SPEC)
EC_SPEC_STRUCT(pool2d, EC_POOL2D_SPEC)
EC_SPEC_STRUCT(argmax, EC_ARGMAX_SPEC)
EC_SPEC_STRUCT(patchify, EC_PATCHIFY_SPEC)
EC_SPEC_STRUCT(peak_fma, EC_PEAK_FMA_SPEC)
#endif

#endif
