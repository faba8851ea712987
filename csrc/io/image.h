/* Image input for the vision path: decoding (stb_image), PIL-exact bicubic resizing, and the adaptive-resolution
 * views (a global view plus a grid of tiles, docs/architecture.md 1.1) as normalized float32 tensors.
 *
 * Every function here runs on the CPU only and needs no Vulkan device. Inputs may be hostile (files from users,
 * fuzzers): every failure returns an ec_status with a message, never aborts. */
#ifndef EC_IMAGE_H
#define EC_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"

/* Default limit on width * height of a decoded image (64 megapixels), the guard against decompression bombs. */
#define EC_IMAGE_DEFAULT_MAX_PIXELS 64000000ull

/* Images, tiles and grids are bounded so that every size computed from them fits comfortably in size_t and int. */
#define EC_IMAGE_MAX_SIDE (1 << 24)
#define EC_IMAGE_MAX_TILE 8192
#define EC_IMAGE_MAX_GRID 64

/* A decoded image: 8-bit RGB, row-major, rows packed (stride = 3 * width). */
typedef struct ec_image {
    int width, height;
    uint8_t *rgb; /* owned; release with ec_image_free (it was allocated by the decoder's own allocator) */
} ec_image;

/* Reads the declared width and height from an encoded image's header without decoding it.
 * EC_ERR_FORMAT when the data is not an image format stb_image reads. */
ec_status ec_image_info(const uint8_t *data, size_t size, int *width, int *height);

/* Decodes JPEG (baseline, progressive), PNG (1-16 bit, gray, palette, alpha), BMP, GIF (first frame), TGA, PSD
 * (composite) and HDR (tone-mapped to 8 bit as stb_image does) into 8-bit RGB. Grayscale is replicated, alpha dropped
 * (as PIL's convert("RGB")). 16-bit samples keep their high byte. The declared size is checked against max_pixels
 * before any pixel is decoded (EC_ERR_LIMIT); corrupt, truncated (data ending before the last pixel) or unknown data
 * is EC_ERR_FORMAT. stb_image's failed internal checks, the memory a file can make it allocate (bounded by the
 * declared size) and the known defects of Debian's stb 2.27 reachable from a file are all turned into errors. */
ec_status ec_image_decode(const uint8_t *data, size_t size, uint64_t max_pixels, ec_image *out);

/* Reads a regular file and decodes it like ec_image_decode; EC_ERR_IO when the file cannot be read. */
ec_status ec_image_load(const char *path, uint64_t max_pixels, ec_image *out);

/* Releases the pixels of a decoded image (safe on a zeroed or already freed ec_image). */
void ec_image_free(ec_image *img);

/* Bicubic resize of 8-bit RGB with exactly PIL's algorithm (Image.resize(..., BICUBIC) on an RGB image): separable,
 * filter support widened by the downscale factor, 22-bit fixed-point weights, rounding plus clipping to uint8 after
 * each pass, and Pillow 13's choice of which pass goes first (older Pillow differs when the image loses more than
 * twice as many rows as columns: it always went horizontally first). Strides are in bytes. Equal sizes copy. */
ec_status ec_image_resize_bicubic(const uint8_t *src, int src_w, int src_h, size_t src_stride, uint8_t *dst, int dst_w,
                                  int dst_h, size_t dst_stride);

/* The size an image of src_w x src_h takes inside target_w x target_h when resized keeping its aspect ratio, as
 * LLaVA-NeXT's resize_and_pad_image and transformers' get_patch_output_size compute it (the filled side is exact,
 * the other is ceil(side * scale) capped at the target). */
void ec_image_fit_size(int src_w, int src_h, int target_w, int target_h, int *new_w, int *new_h);

/* How one image becomes views. */
typedef struct ec_view_params {
    int tile_size;        /* side of every view, pixels (384 for SigLIP so400m-patch14-384) */
    int rows, cols;       /* the grid chosen for the image (select_best_resolution), 1..EC_IMAGE_MAX_GRID each */
    uint8_t pad_color[3]; /* RGB fill around the aspect-preserving resize */
    float mean[3], std[3];/* normalization after rescaling by 1/255: (x / 255 - mean) / std */
} ec_view_params;

/* Number of floats ec_image_make_views writes: (1 + rows*cols) * 3 * tile_size^2; EC_ERR_ARG for invalid params. */
ec_status ec_image_views_size(const ec_view_params *p, size_t *n_floats);

/* Writes the views of an RGB image (packed rows) to out, float32 [1 + rows*cols][3][tile][tile]:
 * view 0 is the whole image resized to tile x tile; then the image is resized keeping its aspect ratio to fit
 * (cols*tile) x (rows*tile), centered on pad_color, and cut into tiles in raster order (row by row).
 * This follows transformers' LlavaNextImageProcessor (_resize_for_patching + _pad_for_patching + divide_to_patches),
 * which computes the same pixels as LLaVA-NeXT's resize_and_pad_image + divide_to_patches. */
ec_status ec_image_make_views(const uint8_t *rgb, int width, int height, const ec_view_params *p, float *out);

#endif
