/* Device tensors: a typed, shaped piece of device memory. Weights are read by shaders through a
 * uniform texel buffer view (RGBA32UI, 16 bytes a fetch), which addresses up to 2 GiB regardless of
 * maxStorageBufferRange; activations are bound as storage buffers. */
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
    VkBufferView texel_view; /* created on first use as a texel buffer */
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

#endif
