#include "vk/tensor.h"

#include <stdlib.h>
#include <string.h>

size_t ec_dtype_size(ec_dtype d) { return d == EC_Q8 || d == EC_Q4 ? 1 : d == EC_F16 || d == EC_BF16 ? 2 : 4; }

const char *ec_dtype_name(ec_dtype d)
{
    static const char *names[] = {"float32", "float16", "bfloat16", "int32", "int8", "int4"};
    return (unsigned)d <= EC_Q4 ? names[d] : "unknown";
}

int ec_dtype_quantized(ec_dtype d) { return d == EC_Q8 || d == EC_Q4; }

int64_t ec_qblocks(int64_t k) { return (k + EC_QBLOCK - 1) / EC_QBLOCK; }

uint64_t ec_qdata_bytes(ec_dtype d, int64_t n, int64_t k)
{
    return (uint64_t)n * (uint64_t)ec_qblocks(k) * (d == EC_Q4 ? EC_QBLOCK / 2 : EC_QBLOCK);
}

uint64_t ec_qscale_bytes(int64_t n, int64_t k) { return (uint64_t)n * (uint64_t)ec_qblocks(k) * 2; }

/* The scales start on an alignment every device accepts for a texel view's offset. */
#define EC_QSCALE_ALIGN 256

int64_t ec_numel(const ec_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

ec_status ec_tensor_create(ec_context *ctx, ec_dtype dtype, int ndim, const int64_t *shape, ec_tensor **out)
{
    *out = NULL;
    if (ndim < 1 || ndim > EC_MAX_DIMS) return ec_fail(EC_ERR_ARG, "tensors have 1 to %d dimensions, not %d", EC_MAX_DIMS, ndim);
    if ((unsigned)dtype > EC_Q4) return ec_fail(EC_ERR_ARG, "unknown dtype %d", (int)dtype);
    if (ec_dtype_quantized(dtype) && (ndim != 2 || shape[0] < 1 || shape[1] < 1))
        return ec_fail(EC_ERR_ARG, "%s weights are 2-D [N, K] with N, K >= 1", ec_dtype_name(dtype));
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ec_fail(EC_ERR_ARG, "negative dimension %lld", (long long)shape[i]);
        if (shape[i] && n > (UINT64_MAX >> 8) / (uint64_t)shape[i]) return ec_fail(EC_ERR_ARG, "tensor shape overflows");
        n *= (uint64_t)shape[i];
    }
    ec_tensor *t = calloc(1, sizeof *t);
    if (!t) return ec_fail(EC_ERR_OOM, "out of host memory");
    t->ctx = ctx;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->nbytes = (size_t)(n * ec_dtype_size(dtype));
    if (ec_dtype_quantized(dtype)) {
        uint64_t data = ec_qdata_bytes(dtype, shape[0], shape[1]);
        t->scales_at = (size_t)((data + EC_QSCALE_ALIGN - 1) / EC_QSCALE_ALIGN * EC_QSCALE_ALIGN);
        t->nbytes = t->scales_at + (size_t)((ec_qscale_bytes(shape[0], shape[1]) + 15) / 16 * 16);
    }
    ec_status s = ec_alloc(ctx, t->nbytes, &t->mem);
    if (s) { free(t); return s; }
    *out = t;
    return EC_OK;
}

void ec_tensor_destroy(ec_tensor *t)
{
    if (!t) return;
    ec_context *ctx = t->ctx;
    /* Recorded work may still use the memory: finish it before the memory can be handed out again. */
    if (ctx->recording) ec_batch_submit(ctx);
    if (t->texel_view) vkDestroyBufferView(ctx->device, t->texel_view, NULL);
    if (t->scale_view) vkDestroyBufferView(ctx->device, t->scale_view, NULL);
    ec_free(ctx, &t->mem);
    free(t);
}

ec_status ec_tensor_upload(ec_tensor *t, const void *src, size_t nbytes)
{
    if (ec_dtype_quantized(t->dtype)) return ec_fail(EC_ERR_ARG, "a %s tensor is written as packed integers and scales", ec_dtype_name(t->dtype));
    if (nbytes != t->nbytes) return ec_fail(EC_ERR_ARG, "upload of %zu bytes into a tensor of %zu bytes", nbytes, t->nbytes);
    return ec_write(t->ctx, &t->mem, 0, src, nbytes);
}

ec_status ec_tensor_download(const ec_tensor *t, void *dst, size_t nbytes)
{
    if (ec_dtype_quantized(t->dtype)) return ec_fail(EC_ERR_ARG, "a %s tensor is read as packed integers and scales", ec_dtype_name(t->dtype));
    if (nbytes != t->nbytes) return ec_fail(EC_ERR_ARG, "download of %zu bytes from a tensor of %zu bytes", nbytes, t->nbytes);
    return ec_read(t->ctx, &t->mem, 0, dst, nbytes);
}

static ec_status check_quantized_parts(const ec_tensor *t, size_t data_bytes, size_t scale_bytes)
{
    if (!ec_dtype_quantized(t->dtype)) return ec_fail(EC_ERR_ARG, "a %s tensor has no packed integers and scales", ec_dtype_name(t->dtype));
    uint64_t want_data = ec_qdata_bytes(t->dtype, t->shape[0], t->shape[1]), want_scales = ec_qscale_bytes(t->shape[0], t->shape[1]);
    if (data_bytes != want_data || scale_bytes != want_scales)
        return ec_fail(EC_ERR_ARG, "a [%lld, %lld] %s tensor holds %llu bytes of packed integers and %llu of scales, not %zu and %zu",
                       (long long)t->shape[0], (long long)t->shape[1], ec_dtype_name(t->dtype), (unsigned long long)want_data,
                       (unsigned long long)want_scales, data_bytes, scale_bytes);
    return EC_OK;
}

ec_status ec_tensor_upload_quantized(ec_tensor *t, const void *data, size_t data_bytes, const void *scales, size_t scale_bytes)
{
    EC_TRY(check_quantized_parts(t, data_bytes, scale_bytes));
    EC_TRY(ec_write(t->ctx, &t->mem, 0, data, data_bytes));
    return ec_write(t->ctx, &t->mem, t->scales_at, scales, scale_bytes);
}

ec_status ec_tensor_download_quantized(const ec_tensor *t, void *data, size_t data_bytes, void *scales, size_t scale_bytes)
{
    EC_TRY(check_quantized_parts(t, data_bytes, scale_bytes));
    EC_TRY(ec_read(t->ctx, &t->mem, 0, data, data_bytes));
    return ec_read(t->ctx, &t->mem, t->scales_at, scales, scale_bytes);
}

ec_status ec_bind_storage_range(const ec_tensor *t, size_t offset, size_t range, ec_binding *b)
{
    uint32_t max = t->ctx->limits.maxStorageBufferRange;
    if (range > max)
        return ec_fail(EC_ERR_ARG, "a %zu-byte piece of a tensor exceeds the device's %u-byte storage-buffer range", range, max);
    if (offset % t->ctx->limits.minStorageBufferOffsetAlignment)
        return ec_fail(EC_ERR_ARG, "storage binding offset %zu is not aligned", offset);
    memset(b, 0, sizeof *b);
    b->buffer = t->mem.buffer;
    b->offset = t->mem.offset + offset;
    b->range = range ? range : 4; /* empty tensors still need a valid binding */
    return EC_OK;
}

ec_status ec_bind_storage(const ec_tensor *t, ec_binding *b) { return ec_bind_storage_range(t, 0, t->nbytes, b); }

/* An RGBA32UI view of bytes [offset, offset + bytes) of the tensor's allocation. */
static ec_status make_view(ec_tensor *t, uint64_t offset, uint64_t bytes, const char *what, VkBufferView *out)
{
    uint64_t texels = bytes / 16;
    if (texels > t->ctx->limits.maxTexelBufferElements)
        return ec_fail(EC_ERR_ARG, "a %zu-byte tensor's %s exceed the device's texel-buffer reach of %llu bytes", t->nbytes, what,
                       (unsigned long long)t->ctx->limits.maxTexelBufferElements * 16);
    VkBufferViewCreateInfo vi = {.sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO, .buffer = t->mem.buffer,
                                 .format = VK_FORMAT_R32G32B32A32_UINT, .offset = t->mem.offset + offset, .range = texels * 16};
    if (vkCreateBufferView(t->ctx->device, &vi, NULL, out) != VK_SUCCESS)
        return ec_fail(EC_ERR_DEVICE, "creating a texel buffer view failed");
    return EC_OK;
}

ec_status ec_bind_texel(ec_tensor *t, ec_binding *b)
{
    if (!t->texel_view) {
        if (ec_dtype_quantized(t->dtype))
            EC_TRY(make_view(t, 0, ec_qdata_bytes(t->dtype, t->shape[0], t->shape[1]), "packed integers", &t->texel_view));
        else
            EC_TRY(make_view(t, 0, t->mem.size, "data", &t->texel_view));
    }
    memset(b, 0, sizeof *b);
    b->texel_view = t->texel_view;
    return EC_OK;
}

ec_status ec_bind_scales(ec_tensor *t, ec_binding *b)
{
    if (!ec_dtype_quantized(t->dtype)) return ec_fail(EC_ERR_ARG, "a %s tensor has no scales", ec_dtype_name(t->dtype));
    if (!t->scale_view) EC_TRY(make_view(t, t->scales_at, t->nbytes - t->scales_at, "scales", &t->scale_view));
    memset(b, 0, sizeof *b);
    b->texel_view = t->scale_view;
    return EC_OK;
}
