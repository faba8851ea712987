/* The language decoder: Phi-3 (LongRoPE) and Qwen2, as transformers' Phi3ForCausalLM and
 * Qwen2ForCausalLM compute them, with a KV cache on the device.
 *
 * Both architectures run as one layout, Phi-3's: a fused qkv projection (with an optional bias, which
 * Qwen2 has) and a fused gate_up projection. The Python loader (eyecare/language.py) concatenates
 * Qwen2's separate q/k/v and gate/up weights into that layout before uploading, so each layer costs
 * one mat-vec for q, k and v and one for gate and up.
 *
 * Weights are borrowed: the caller keeps them alive while the decoder exists. Everything else (the KV
 * cache, the activations of one step, the logits) is allocated once, at creation. */
#ifndef EC_DECODER_H
#define EC_DECODER_H

#include "ops/ops.h"

typedef struct {
    char model_type[32];       /* "phi3" or "qwen2": for messages */
    int64_t vocab, hidden, intermediate, layers, heads, kv_heads, head_dim;
    int64_t rot_dim;           /* leading dimensions of each head that RoPE rotates (even, <= head_dim) */
    float rms_eps;
    double rope_theta;
    /* LongRoPE (Phi-3): per-frequency divisors for sequences up to original_max (short) and beyond (long);
     * NULL for plain RoPE. Each has rot_dim / 2 values. */
    const float *short_factor, *long_factor;
    int64_t original_max;
    float attention_factor;    /* multiplies cos and sin (1 for plain RoPE) */
    int qkv_bias;              /* the qkv projection has a bias (Qwen2) */
    int tied;                  /* lm_head is the embedding table */
    int64_t window;            /* sliding-window attention span in tokens, 0 = none (see ec_decoder_forward) */
    ec_dtype kv_dtype;         /* the KV cache's dtype: EC_F16 (half the memory and reads) or EC_F32 */
} ec_decoder_config;

typedef struct {
    const char *name;
    ec_tensor *tensor;
} ec_named_tensor;

typedef struct ec_decoder ec_decoder;

/* Checks the weights against the config (every name present with its shape, no unknown name; all
 * problems reported in one message) and allocates the cache for max_batch sequences of `capacity`
 * tokens and the activations of `chunk` tokens (prompts are prefilled `chunk` tokens at a time).
 * Weight names, with L the layer index:
 *   model.embed_tokens.weight [vocab, hidden]       model.norm.weight [hidden]
 *   lm_head.weight [vocab, hidden] (absent when tied)
 *   model.layers.L.input_layernorm.weight [hidden]  model.layers.L.post_attention_layernorm.weight [hidden]
 *   model.layers.L.self_attn.qkv_proj.weight [(heads + 2 kv_heads) head_dim, hidden] (and .bias)
 *   model.layers.L.self_attn.o_proj.weight [hidden, heads head_dim]
 *   model.layers.L.mlp.gate_up_proj.weight [2 intermediate, hidden]
 *   model.layers.L.mlp.down_proj.weight [hidden, intermediate] */
ec_status ec_decoder_create(ec_context *ctx, const ec_decoder_config *cfg, const ec_named_tensor *weights, int n_weights,
                            int64_t capacity, int max_batch, int64_t chunk, ec_decoder **out);
void ec_decoder_destroy(ec_decoder *d);

typedef enum { EC_LOGITS_NONE = 0, EC_LOGITS_LAST = 1, EC_LOGITS_ALL = 2 } ec_logits_mode;

/* One forward call: `tokens` new tokens for each of the sequences first .. first + batch - 1, which
 * continue from what each has cached. Input is token ids or embeddings (exactly one of them). */
typedef struct {
    int first, batch;
    int64_t tokens;
    const int32_t *ids;        /* [batch * tokens], sequence-major */
    const float *embeds;       /* [batch * tokens, hidden] */
    ec_logits_mode logits;
    float *logits_out;         /* [batch, tokens, vocab] for ALL, [batch, vocab] for LAST */
    int force_long;            /* use the long LongRoPE factors whatever the length (see below) */
} ec_decoder_step;

/* Runs the step: every chunk of tokens is one batch of device work (all layers, final norm, lm_head),
 * submitted once. LongRoPE uses the long factors when a sequence is longer than original_max at the
 * end of the call, as transformers' forward decides (so the cache keeps keys rotated with the short
 * factors when a sequence grows past it step by step). transformers' generate() instead recomputes
 * the whole sequence with the long factors at the step that crosses over; force_long lets the caller
 * do that. Fails with EC_ERR_LIMIT, changing nothing, when a sequence would outgrow the cache
 * (or the model's sliding window, which this decoder does not implement: within it, attention is
 * exact). */
ec_status ec_decoder_forward(ec_decoder *d, const ec_decoder_step *step);

/* Token embeddings as f32 [n, hidden], for a caller that splices other embeddings (image tokens) in. */
ec_status ec_decoder_embed(ec_decoder *d, const int32_t *ids, int64_t n, float *out);

/* Tokens cached for sequence `seq`; setting a smaller length forgets the tail (0 starts it afresh). */
int64_t ec_decoder_length(const ec_decoder *d, int seq);
ec_status ec_decoder_set_length(ec_decoder *d, int seq, int64_t length);

/* The RoPE table the decoder uploads for these positions, [n, rot_dim] (cos | sin), computed with the
 * short (use_long 0) or long LongRoPE factors; for tests against transformers. */
ec_status ec_decoder_rope_table(const ec_decoder *d, const int64_t *positions, int64_t n, int use_long, float *out);

int64_t ec_decoder_capacity(const ec_decoder *d);
int ec_decoder_max_batch(const ec_decoder *d);
uint32_t ec_decoder_last_dispatches(const ec_decoder *d); /* dispatches in the last step's final batch */
uint64_t ec_decoder_weight_bytes(const ec_decoder *d);    /* bytes of weights one decode step reads */

#endif
