#include "vk/tensor.h"

#include <stdlib.h>
#include <string.h>

typedef struct ec_texel_view {
    VkDeviceSize offset, range; /* bytes of the tensor's allocation */
    VkBufferView view;
    struct ec_texel_view *next;
} ec_texel_view;

struct ec_texel_views { ec_texel_view *list; };

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
    t->views = calloc(1, sizeof *t->views);
    if (!t->views) { free(t); return ec_fail(EC_ERR_OOM, "out of host memory"); }
    ec_status s = ec_alloc(ctx, t->nbytes, &t->mem);
    if (s) { free(t->views); free(t); return s; }
    *out = t;
    return EC_OK;
}

void ec_tensor_destroy(ec_tensor *t)
{
    if (!t) return;
    ec_context *ctx = t->ctx;
    /* Recorded work may still use the memory: finish it before the memory can be handed out again. */
    if (ctx->recording) ec_batch_submit(ctx);
    for (ec_texel_view *v = t->views->list, *n; v; v = n) { n = v->next; vkDestroyBufferView(ctx->device, v->view, NULL); free(v); }
    free(t->views);
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

uint64_t ec_texel_reach(const ec_context *ctx) { return (uint64_t)ctx->limits.maxTexelBufferElements * 16; }

int ec_texel_fits(const ec_tensor *t) { return t->mem.size <= ec_texel_reach(t->ctx); }

/* The view of [offset, offset + range) of t's allocation, made once. */
static ec_status view_of(ec_tensor *t, VkDeviceSize offset, VkDeviceSize range, ec_binding *b)
{
    ec_texel_view *v = t->views->list;
    while (v && !(v->offset == offset && v->range == range)) v = v->next;
    if (!v) {
        v = calloc(1, sizeof *v);
        if (!v) return ec_fail(EC_ERR_OOM, "out of host memory");
        VkBufferViewCreateInfo vi = {.sType = VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO, .buffer = t->mem.buffer,
                                     .format = VK_FORMAT_R32G32B32A32_UINT, .offset = t->mem.offset + offset, .range = range};
        if (vkCreateBufferView(t->ctx->device, &vi, NULL, &v->view) != VK_SUCCESS) {
            free(v);
            return ec_fail(EC_ERR_DEVICE, "creating a texel buffer view failed");
        }
        v->offset = offset;
        v->range = range;
        v->next = t->views->list;
        t->views->list = v;
    }
    memset(b, 0, sizeof *b);
    b->texel_view = v->view;
    b->buffer = t->mem.buffer;
    b->offset = t->mem.offset + offset;
    b->range = range;
    return EC_OK;
}

ec_status ec_bind_texel(ec_tensor *t, ec_binding *b)
{
    if (ec_dtype_quantized(t->dtype)) {  /* the packed integers, as one view */
        uint64_t data = ec_qdata_bytes(t->dtype, t->shape[0], t->shape[1]);
        if (data > ec_texel_reach(t->ctx))
            return ec_fail(EC_ERR_ARG, "the %llu bytes of packed integers of a %s weight exceed the device's texel-buffer "
                           "reach of %llu bytes (maxTexelBufferElements %u), and this use of it cannot be split",
                           (unsigned long long)data, ec_dtype_name(t->dtype), (unsigned long long)ec_texel_reach(t->ctx),
                           t->ctx->limits.maxTexelBufferElements);
        return view_of(t, 0, data, b);
    }
    if (!ec_texel_fits(t))
        return ec_fail(EC_ERR_ARG, "a %zu-byte tensor exceeds the device's texel-buffer reach of %llu bytes "
                       "(maxTexelBufferElements %u), and this use of it cannot be split", t->nbytes,
                       (unsigned long long)ec_texel_reach(t->ctx), t->ctx->limits.maxTexelBufferElements);
    return view_of(t, 0, t->mem.size / 16 * 16, b);
}

/* A view covering bytes [offset, offset + size) of t that starts at an aligned offset at or below it: the
 * part's own view, or `whole` (bytes [base, base + whole)) when that fits in the reach. *skip: bytes from
 * the view's start to offset. */
static ec_status part_view(ec_tensor *t, uint64_t base, uint64_t whole, uint64_t offset, uint64_t size, ec_binding *b,
                           uint64_t *skip)
{
    uint64_t reach = ec_texel_reach(t->ctx);
    if (whole <= reach) {
        *skip = offset - base;
        return view_of(t, base, (whole + 15) / 16 * 16, b);
    }
    uint64_t align = t->ctx->limits.minTexelBufferOffsetAlignment;
    if (align < 16) align = 16;
    uint64_t start = offset / align * align, end = (offset + size + 15) / 16 * 16;
    if (end - start > reach)
        return ec_fail(EC_ERR_ARG, "a %llu-byte piece of a quantized weight exceeds the device's texel-buffer reach of %llu "
                       "bytes (maxTexelBufferElements %u)", (unsigned long long)(end - start), (unsigned long long)reach,
                       t->ctx->limits.maxTexelBufferElements);
    *skip = offset - start;
    t->ctx->counters.split_views++;
    return view_of(t, start, end - start, b);
}

uint64_t ec_quantized_rows_per_view(const ec_tensor *t)
{
    uint64_t reach = ec_texel_reach(t->ctx), align = t->ctx->limits.minTexelBufferOffsetAlignment;
    if (align < 16) align = 16;
    uint64_t blocks = (uint64_t)ec_qblocks(t->shape[1]);
    uint64_t row_bytes = blocks * (t->dtype == EC_Q4 ? EC_QBLOCK / 2 : EC_QBLOCK), scale_bytes = blocks * 2;
    uint64_t usable = reach > 2 * align ? reach - 2 * align : 0;
    uint64_t a = usable / row_bytes, b = usable / scale_bytes;
    return a < b ? a : b;
}

ec_status ec_bind_quantized(ec_tensor *t, int64_t row0, int64_t rows, ec_binding *data, ec_binding *scales,
                            uint32_t *w_off, uint32_t *s_off)
{
    if (!ec_dtype_quantized(t->dtype)) return ec_fail(EC_ERR_ARG, "a %s tensor has no packed integers", ec_dtype_name(t->dtype));
    if (row0 < 0 || rows < 1 || row0 + rows > t->shape[0]) return ec_fail(EC_ERR_ARG, "rows %lld..%lld of a %lld-row weight",
                                                                          (long long)row0, (long long)(row0 + rows - 1), (long long)t->shape[0]);
    uint64_t blocks = (uint64_t)ec_qblocks(t->shape[1]);
    uint64_t row_bytes = blocks * (t->dtype == EC_Q4 ? EC_QBLOCK / 2 : EC_QBLOCK);
    uint64_t data_bytes = row_bytes * (uint64_t)t->shape[0], scale_bytes = blocks * 2 * (uint64_t)t->shape[0];
    uint64_t skip;
    EC_TRY(part_view(t, 0, data_bytes, (uint64_t)row0 * row_bytes, (uint64_t)rows * row_bytes, data, &skip));
    if (skip / 16 > UINT32_MAX) return ec_fail(EC_ERR_ARG, "a quantized weight of more than 2^32 texels");
    *w_off = (uint32_t)(skip / 16);
    EC_TRY(part_view(t, t->scales_at, scale_bytes, t->scales_at + (uint64_t)row0 * blocks * 2, (uint64_t)rows * blocks * 2,
                     scales, &skip));
    if (skip / 2 > UINT32_MAX) return ec_fail(EC_ERR_ARG, "a quantized weight of more than 2^32 scales");
    *s_off = (uint32_t)(skip / 2);
    return EC_OK;
}

ec_status ec_bind_texel_range(ec_tensor *t, uint64_t offset, uint64_t size, ec_binding *b, uint64_t *skip)
{
    if (offset + size > t->mem.size) return ec_fail(EC_ERR_ARG, "a texel view past the end of a %zu-byte tensor", t->nbytes);
    if (ec_texel_fits(t)) {
        *skip = offset;
        return ec_bind_texel(t, b);
    }
    uint64_t align = t->ctx->limits.minTexelBufferOffsetAlignment;
    if (align < 16) align = 16;
    uint64_t start = offset / align * align;
    uint64_t end = (offset + size + 15) / 16 * 16;
    if (end - start > ec_texel_reach(t->ctx))
        return ec_fail(EC_ERR_ARG, "a %llu-byte piece of a tensor exceeds the device's texel-buffer reach of %llu bytes "
                       "(maxTexelBufferElements %u)", (unsigned long long)(end - start),
                       (unsigned long long)ec_texel_reach(t->ctx), t->ctx->limits.maxTexelBufferElements);
    /* As long a view as fits (fewer distinct views for the pieces of one op), within the allocation. */
    uint64_t range = ec_texel_reach(t->ctx) / align * align;
    if (start + range > t->mem.size) range = t->mem.size - start;
    if (range < end - start) range = end - start;
    *skip = offset - start;
    t->ctx->counters.split_views++;
    return view_of(t, start, range / 16 * 16, b);
}
