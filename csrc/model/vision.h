/* The vision side of EyecareGPT on the device: the SigLIP vision tower, the Layer-wise Dense
 * Connector (LDC), the mlpNx_gelu projector and the compression of tile tokens (docs/architecture.md, 1.2-1.3).
 *
 * Life of a tower:
 *   ec_vision_create(config, prefixes)  checks the config, lays out the table of weights it needs
 *   ec_vision_slots()                   the caller fills each slot's tensor (or leaves it NULL)
 *   ec_vision_check_weights()           every missing, misshapen or mistyped weight, in one report
 *   ec_vision_init(max_views)           derived tensors and scratch activations, allocated once
 *   ec_vision_run() ...                 a chunk of at most max_views views: one batch, one submit
 *   ec_vision_destroy()
 *
 * The weight tensors are borrowed: the caller keeps them alive (the Python binding holds the Tensor
 * objects and re-resolves the slots before each run). */
#ifndef EC_VISION_H
#define EC_VISION_H

#include "ops/ops.h"

#define EC_VISION_MAX_GROUPS 8
#define EC_VISION_MAX_PROJECTOR 8

typedef struct {
    /* SigLIP (Hugging Face SiglipVisionConfig fields) */
    int hidden;              /* hidden_size */
    int intermediate;        /* intermediate_size */
    int layers;              /* num_hidden_layers */
    int heads;               /* num_attention_heads */
    int channels;            /* num_channels */
    int image_size, patch;   /* image_size, patch_size */
    float eps;               /* layer_norm_eps */
    ec_activation act;       /* hidden_act: gelu_pytorch_tanh (SigLIP) or gelu */
    /* connector */
    int feature_layer;       /* index into h[0..layers]; negative counts from the end (-1 = h[layers]) */
    int n_groups;            /* averaged half-open ranges of h indices */
    int group_lo[EC_VISION_MAX_GROUPS], group_hi[EC_VISION_MAX_GROUPS];
    int projector_linears;   /* mlpNx_gelu: N linear layers with exact GELU between them */
    int d_llm;               /* the projector's output width; 0 = take it from the weights */
    /* compression */
    int tile_pool;           /* a tile's G x G grid is pooled to ceil(G / tile_pool) per side */

    /* derived by ec_vision_create */
    int head_dim, grid, tokens;  /* G = image_size / patch, tokens = G * G per view */
    int pooled_side, pooled_tokens;
    int feature_index;       /* feature_layer resolved to 0..layers */
    int layers_run;          /* layers the connector needs: the highest h index it reads */
} ec_vision_config;

/* One weight the tower reads: its full name (prefix + Hugging Face name), expected shape, and where
 * the tensor goes. Layers past layers_run are optional (they only serve hidden-state output). */
typedef struct {
    char name[192];
    int ndim;
    int64_t shape[4];
    int layer;        /* encoder layer, or -1 */
    int required;
    ec_tensor **dst;  /* the field of the tower that holds it */
} ec_vision_slot;

typedef struct ec_vision ec_vision;

/* Checks the config (ranges, divisibility, groups, feature layer) and fills its derived fields. */
ec_status ec_vision_config_check(ec_vision_config *c);

ec_status ec_vision_create(ec_context *ctx, const ec_vision_config *c, const char *vision_prefix,
                           const char *connector_prefix, ec_vision **out);
void ec_vision_destroy(ec_vision *v);
const ec_vision_config *ec_vision_get_config(const ec_vision *v);

/* The table of weights: fill *slots[i].dst with a tensor, or leave it NULL where absent. */
int ec_vision_slots(ec_vision *v, ec_vision_slot **slots);

/* Checks every slot. On a mismatch returns EC_ERR_FORMAT and sets *report to a malloc'd text listing
 * every problem (the caller frees it); *report is NULL when the problem is only a short message in
 * ec_last_error (out of memory). On success sets the available depth and the projector width. */
ec_status ec_vision_check_weights(ec_vision *v, char **report);

/* Layers whose weights are all present (at least layers_run after a successful check). */
int ec_vision_layers_available(const ec_vision *v);
int ec_vision_d_llm(const ec_vision *v);

/* Device bytes of scratch per view in a pass; a default for max_views is derived from it. */
uint64_t ec_vision_bytes_per_view(const ec_vision *v);

/* Allocates the scratch for up to max_views views per pass and the tensors derived from the weights
 * (the position table in f32). Call after a successful ec_vision_check_weights. */
ec_status ec_vision_init(ec_vision *v, int max_views);
int ec_vision_max_views(const ec_vision *v);

/* Output tokens of n views: a global view gives `tokens`, a tile `pooled_tokens`. */
int64_t ec_vision_count_tokens(const ec_vision *v, int n, const uint8_t *is_tile);

/* Runs n <= max_views views: pixels float32 [n, channels, image_size, image_size]; is_tile[i] says
 * whether view i is a tile (pooled) or a global view. Writes the projected tokens, view after view,
 * to tokens [count_tokens, d_llm]. With hidden != NULL also writes every hidden state h[0..depth]
 * (depth = layers_available, all of which are then computed): h[l] of view i goes to
 * hidden + (l * hidden_layer_stride) + i * tokens * hidden (floats). Records one batch and submits
 * it once. */
ec_status ec_vision_run(ec_vision *v, const float *pixels, int n, const uint8_t *is_tile, float *tokens,
                        float *hidden, size_t hidden_layer_stride);

/* Device time of the last run's batch in milliseconds (0 where the device has no timestamps). */
double ec_vision_last_ms(const ec_vision *v);
/* Dispatches recorded into the last run's batch. */
uint32_t ec_vision_last_dispatches(const ec_vision *v);

#endif
