/* Device tensors: a typed, shaped piece of device memory. Weights are read by shaders through a
 * uniform texel buffer view (RGBA32UI, 16 bytes a fetch), which reaches maxTexelBufferElements * 16 bytes
 * (2 GiB on most GPUs, 1 MiB on some mobile ones) regardless of maxStorageBufferRange; activations are
 * bound as storage buffers. A tensor past the texel reach is read through views of parts of it
 * (ec_bind_texel_range), which the ops that can take such a tensor use piece by piece. */
#ifndef EC_TENSOR_H
#define EC_TENSOR_H

#include "vk/vk_context.h"

typedef enum { EC_F32 = 0, EC_F16 = 1, EC_BF16 = 2, EC_I32 = 3 } ec_dtype;

#define EC_MAX_DIMS 4

typedef struct {
    ec_context *ctx;
    ec_dtype dtype;
    int ndim;
    int64_t shape[EC_MAX_DIMS];
    size_t nbytes;
    ec_allocation mem;
    /* Texel views, created on first use and kept until the tensor is destroyed. Shared by shallow copies of
     * the struct (views of some rows of a tensor, e.g. decoder.c rows_view): the tensor that created the
     * list owns it. */
    struct ec_texel_views *views;
} ec_tensor;

size_t ec_dtype_size(ec_dtype d);
const char *ec_dtype_name(ec_dtype d);
int64_t ec_numel(const ec_tensor *t);

ec_status ec_tensor_create(ec_context *ctx, ec_dtype dtype, int ndim, const int64_t *shape, ec_tensor **out);
void ec_tensor_destroy(ec_tensor *t);
ec_status ec_tensor_upload(ec_tensor *t, const void *src, size_t nbytes);
ec_status ec_tensor_download(const ec_tensor *t, void *dst, size_t nbytes);

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

#endif
