/* libFuzzer harness for csrc/io/image.c on encoded images: header reading (ec_image_info), decoding through the hardened
 * stb_image (every format eyecare accepts), then the whole processor path on what was decoded: the bicubic global
 * view and the padded, tiled grid (ec_image_make_views). The input is the file. */
#include "common.h"
#include "io/image.h"

/* Small enough that a crafted header cannot make one input take seconds to decode under ASan; the limit logic itself
 * is the same for any value. */
#define MAX_PIXELS (1u << 18)

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int w = 0, h = 0;
    ec_status info = ec_image_info(data, size, &w, &h);
    if (info == EC_OK) FUZZ_CHECK(w > 0 && h > 0);
    else {
        fuzz_check_error(info);
        FUZZ_CHECK(info == EC_ERR_FORMAT || info == EC_ERR_LIMIT);
    }

    ec_image img;
    memset(&img, 0xAB, sizeof img); /* decode must initialize it, on failure too */
    ec_status s = ec_image_decode(data, size, MAX_PIXELS, &img);
    if (s != EC_OK) {
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_FORMAT || s == EC_ERR_LIMIT || s == EC_ERR_OOM);
        FUZZ_CHECK(img.rgb == NULL);
        ec_image_free(&img);
        return 0;
    }
    FUZZ_CHECK(info == EC_OK && img.width == w && img.height == h);
    FUZZ_CHECK((uint64_t)w * (uint64_t)h <= MAX_PIXELS && img.rgb != NULL);
    size_t n = (size_t)w * (size_t)h * 3;
    sink ^= img.rgb[0] ^ img.rgb[n / 2] ^ img.rgb[n - 1]; /* ASan: the buffer holds every pixel */

    /* The processor path on the decoded image, with a small tile and a grid chosen from the input. */
    ec_view_params p = {.tile_size = 4 + (int)(size % 29), .rows = 1 + (w + h) % 3, .cols = 1 + (int)(size / 7 % 3),
                        .pad_color = {data[0], data[size / 2], data[size - 1]},
                        .mean = {0.5f, 0.5f, 0.5f}, .std = {0.5f, 0.5f, 0.5f}};
    size_t floats = 0;
    FUZZ_CHECK(ec_image_views_size(&p, &floats) == EC_OK);
    float *views = malloc(floats * sizeof *views);
    FUZZ_CHECK(views != NULL);
    s = ec_image_make_views(img.rgb, w, h, &p, views);
    if (s != EC_OK) {
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_OOM);
    } else
        for (size_t i = 0; i < floats; i += 97) FUZZ_CHECK(views[i] >= -1.0f && views[i] <= 1.0f);
    free(views);
    ec_image_free(&img);
    FUZZ_CHECK(img.rgb == NULL);
    return 0;
}
