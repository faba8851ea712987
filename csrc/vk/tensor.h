/* Device tensors: a typed, shaped piece of device memory. Weights are read by shaders through a
 * uniform texel buffer view (RGBA32UI, 16 bytes a fetch), which reaches maxTexelBufferElements * 16 bytes
 * (2 GiB on most GPUs, 1 MiB on some mobile ones) regardless of maxStorageBufferRange; activations are
 * bound as storage buffers. A tensor past the texel reach is read through views of parts of it
 * (ec_bind_texel_range), which the ops that can take such a tensor use piece by piece. */
#ifndef EC_TENSOR_H
#define EC_TENSOR_H

#include "vk/vk_context.h"

/* EC_Q8 and EC_Q4 ("int8", "int4") are block-quantized weights, 2-D [N, K] only: each row is cut into
 * blocks of EC_QBLOCK weights (the last one zero-padded when K is not a multiple), each block stored as
 * integers (int8: -127..127, one byte each; int4: -8..7, two's-complement nibbles, weight 2j in the low
 * nibble of byte j) with one f16 scale: weight = scale * integer. The allocation holds the packed rows
 * ([N, blocks * 32 or 16] bytes), then at `scales_at` the scales ([N, blocks] f16). Kernels read both
 * through texel views and dequantize in registers (shaders/quant.glsl). */
typedef enum { EC_F32 = 0, EC_F16 = 1, EC_BF16 = 2, EC_I32 = 3, EC_Q8 = 4, EC_Q4 = 5 } ec_dtype;

#define EC_MAX_DIMS 4
#define EC_QBLOCK 32

typedef struct {
    ec_context *ctx;
    ec_dtype dtype;
    int ndim;
    int64_t shape[EC_MAX_DIMS];
    size_t nbytes;
    ec_allocation mem;
    size_t scales_at;        /* EC_Q8/EC_Q4: byte offset of the f16 scales (0 otherwise) */
    /* Texel views, created on first use and kept until the tensor is destroyed. Shared by shallow copies of
     * the struct (views of some rows of a tensor, e.g. decoder.c rows_view): the tensor that created the
     * list owns it. */
    struct ec_texel_views *views;
} ec_tensor;

/* Bytes of one element (for the quantized dtypes: of one packed integer, 1; use ec_tensor.nbytes for sizes). */
size_t ec_dtype_size(ec_dtype d);
int ec_dtype_quantized(ec_dtype d);
/* Quantized layout of an [n, k] weight: blocks per row and bytes of the packed integers / of the scales. */
int64_t ec_qblocks(int64_t k);
uint64_t ec_qdata_bytes(ec_dtype d, int64_t n, int64_t k);
uint64_t ec_qscale_bytes(int64_t n, int64_t k);
const char *ec_dtype_name(ec_dtype d);
int64_t ec_numel(const ec_tensor *t);

ec_status ec_tensor_create(ec_context *ctx, ec_dtype dtype, int ndim, const int64_t *shape, ec_tensor **out);
void ec_tensor_destroy(ec_tensor *t);
ec_status ec_tensor_upload(ec_tensor *t, const void *src, size_t nbytes);
ec_status ec_tensor_download(const ec_tensor *t, void *dst, size_t nbytes);
/* The two parts of a quantized tensor: packed integers (ec_qdata_bytes) and f16 scales (ec_qscale_bytes). */
ec_status ec_tensor_upload_quantized(ec_tensor *t, const void *data, size_t data_bytes, const void *scales, size_t scale_bytes);
ec_status ec_tensor_download_quantized(const ec_tensor *t, void *data, size_t data_bytes, void *scales, size_t scale_bytes);

/* Bindings for ec_dispatch: the tensor as a storage buffer (whole, or a byte range of it), or its
 * texel view. */
ec_status ec_bind_storage(const ec_tensor *t, ec_binding *b);
ec_status ec_bind_storage_range(const ec_tensor *t, size_t offset, size_t range, ec_binding *b);
ec_status ec_bind_texel(ec_tensor *t, ec_binding *b);
/* The texel reach of the device in bytes, and whether t fits in one view. */
uint64_t ec_texel_reach(const ec_context *ctx);
int ec_texel_fits(const ec_tensor *t);
/* Binds a view that covers bytes [offset, offset + size) of t: the whole tensor's view when it fits in one,
 * else a view starting at or below `offset` (at the device's texel offset alignment). *skip is the number
 * of bytes between the view's start and `offset` (what the shader adds to its element indices). Fails when
 * the range itself is past the reach. */
ec_status ec_bind_texel_range(ec_tensor *t, uint64_t offset, uint64_t size, ec_binding *b, uint64_t *skip);
/* Rows row0 .. row0 + rows - 1 of a quantized weight: views of its packed integers and of its scales (the
 * whole parts when each fits in the texel reach, else views of these rows), and where row0 starts in them:
 * w_off in texels, s_off in scales. ec_quantized_rows_per_view: the most rows one pair of views reaches. */
ec_status ec_bind_quantized(ec_tensor *t, int64_t row0, int64_t rows, ec_binding *data, ec_binding *scales,
                            uint32_t *w_off, uint32_t *s_off);
uint64_t ec_quantized_rows_per_view(const ec_tensor *t);

#endif
