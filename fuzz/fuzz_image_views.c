/* libFuzzer harness for the geometry of csrc/io/image.c without a decoder in front: PIL-exact bicubic resizing
 * (ec_image_resize_bicubic) between arbitrary sizes, including extreme aspect ratios, and the global view + padded
 * tiles (ec_image_make_views) for any tile size and grid. The first 16 bytes choose the sizes and parameters; the rest
 * are pixels (repeated to fill the image). Output buffers are exactly as large as the API says, so ASan sees any
 * write past them. */
#include <math.h>

#include "common.h"
#include "io/image.h"

static int u16(const uint8_t *p) { return p[0] | p[1] << 8; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 16) return 0;
    /* Source of up to 2^12 pixels, any aspect ratio from 1 x 4096 to 4096 x 1: the geometry's corner cases are all there,
     * and the instrumented resampling loops make every pixel more cost time, not coverage. */
    int w = 1 + u16(data), h = 1 + u16(data + 2);
    while ((uint64_t)w * h > (1u << 12)) {
        if (w > h) w = (w + 1) / 2;
        else h = (h + 1) / 2;
    }
    /* Destination of the direct resize, up to 2^12 pixels as well. */
    int dw = 1 + u16(data + 4) % 1024, dh = 1 + u16(data + 6) % 1024;
    while ((uint64_t)dw * dh > (1u << 12)) {
        if (dw > dh) dw = (dw + 1) / 2;
        else dh = (dh + 1) / 2;
    }
    static const float means[] = {0.5f, 0.0f, 0.48145466f, -3.0f}, stds[] = {0.5f, 1.0f, 0.26862954f, 1e-30f};
    ec_view_params p = {.tile_size = 1 + data[8] % 24, .rows = 1 + data[9] % 4, .cols = 1 + data[10] % 4,
                        .pad_color = {data[11], data[12], data[13]},
                        .mean = {means[data[14] & 3], means[data[14] >> 2 & 3], means[data[14] >> 4 & 3]},
                        .std = {stds[data[15] & 3], stds[data[15] >> 2 & 3], stds[data[15] >> 4 & 3]}};
    const uint8_t *px = data + 16;
    size_t npx = size - 16;

    size_t n = (size_t)w * h * 3;
    uint8_t *src = malloc(n);
    /* Filled by copies, not byte by byte: comparisons in the harness's own loops are traced too, and were most of the
     * time spent per input. */
    if (!npx) memset(src, 0x5a, n);
    for (size_t done = 0; npx && done < n; done += npx) memcpy(src + done, px, n - done < npx ? n - done : npx);

    /* Direct resize, with a destination row stride wider than needed on odd inputs. */
    size_t stride = (size_t)dw * 3 + (data[8] & 1) * 5;
    uint8_t *dst = malloc(stride * (size_t)dh);
    ec_status s = ec_image_resize_bicubic(src, w, h, (size_t)w * 3, dst, dw, dh, stride);
    if (s != EC_OK) {
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_OOM);
    }
    /* Resizing a constant image must give the same constant: the filter's weights sum to one. */
    if (s == EC_OK && npx == 1)
        for (int y = 0; y < dh; y++)
            for (int x = 0; x < dw * 3; x++) FUZZ_CHECK(dst[(size_t)y * stride + x] == px[0]);
    free(dst);

    int fw, fh;
    ec_image_fit_size(w, h, p.cols * p.tile_size, p.rows * p.tile_size, &fw, &fh);
    FUZZ_CHECK(fw >= 1 && fh >= 1 && fw <= p.cols * p.tile_size && fh <= p.rows * p.tile_size);
    FUZZ_CHECK(fw == p.cols * p.tile_size || fh == p.rows * p.tile_size);

    size_t floats = 0;
    s = ec_image_views_size(&p, &floats);
    FUZZ_CHECK(s == EC_OK && floats == (size_t)(1 + p.rows * p.cols) * 3 * p.tile_size * p.tile_size);
    float *views = malloc(floats * sizeof *views);
    s = ec_image_make_views(src, w, h, &p, views);
    if (s != EC_OK) {
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_OOM);
    } else
        for (size_t i = 0; i < floats; i += 61) FUZZ_CHECK(!isnan(views[i]));
    free(views);
    free(src);
    return 0;
}
