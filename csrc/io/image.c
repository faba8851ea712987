/* Image decode (stb_image), PIL-exact bicubic resize, and the global view + tiles of docs/architecture.md 1.1. See image.h. */
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------------------------
 * stb_image, hardened for hostile input.
 *
 * stb_image checks its own invariants with STBI_ASSERT, and some of those checks can be reached with malformed
 * files; a plain assert() would abort the process. Here a failed check jumps back to the guarded call (stb_guarded),
 * which frees everything stb allocated in that call and reports a format error. To make that possible, and to cap
 * the memory a file can make stb allocate, every stb allocation goes through a per-thread session that links the
 * live blocks and counts their bytes.
 * ------------------------------------------------------------------------------------------------------------- */

typedef union stb_block {
    struct {
        union stb_block *prev, *next; /* in the session's list; both NULL once the block was handed to a caller */
        size_t size;
    } h;
    max_align_t align; /* keeps the payload after the header as aligned as malloc's */
} stb_block;

typedef struct stb_session {
    int active;
    stb_block live;         /* sentinel of the circular list of blocks allocated in this call */
    size_t live_bytes, budget;
    int over_budget;        /* an allocation was refused because of the budget */
    const char *failed_check;
    jmp_buf escape;
} stb_session;

/* Thread-local rather than on the stack, so nothing the guarded call changes is lost across longjmp. */
static _Thread_local stb_session session;

static void block_link(stb_block *b)
{
    b->h.next = session.live.h.next;
    b->h.prev = &session.live;
    session.live.h.next->h.prev = b;
    session.live.h.next = b;
    session.live_bytes += b->h.size;
}

static void block_unlink(stb_block *b)
{
    if (!b->h.prev) return;
    b->h.prev->h.next = b->h.next;
    b->h.next->h.prev = b->h.prev;
    b->h.prev = b->h.next = NULL;
    if (session.active) session.live_bytes -= b->h.size;
}

static int within_budget(size_t old_size, size_t new_size)
{
    if (!session.active || new_size <= old_size) return 1;
    if (new_size - old_size <= session.budget - session.live_bytes) return 1;
    session.over_budget = 1;
    return 0;
}

static void *stb_malloc(size_t n)
{
    if (n > SIZE_MAX - sizeof(stb_block) || !within_budget(0, n)) return NULL;
    /* Zeroed: stb_image 2.27 reads memory it never wrote when a file makes it (a JPEG scan naming a Huffman table no
     * DHT defined gives indices from uninitialized heap, hence reads far out of bounds). Zeros are a valid, empty
     * table, which stb rejects as a bad code. */
    stb_block *b = calloc(1, sizeof(stb_block) + n);
    if (!b) return NULL;
    b->h.size = n;
    b->h.prev = b->h.next = NULL;
    if (session.active) block_link(b);
    return b + 1;
}

static void stb_free(void *p)
{
    if (!p) return;
    stb_block *b = (stb_block *)p - 1;
    block_unlink(b);
    free(b);
}

static void *stb_realloc(void *p, size_t n)
{
    if (!p) return stb_malloc(n);
    stb_block *b = (stb_block *)p - 1;
    if (n > SIZE_MAX - sizeof(stb_block) || !within_budget(b->h.size, n)) return NULL;
    int linked = b->h.prev != NULL;
    block_unlink(b);
    stb_block *nb = realloc(b, sizeof(stb_block) + n);
    if (!nb) { /* the old block is still valid and still stb's */
        if (linked) block_link(b);
        return NULL;
    }
    nb->h.size = n;
    if (linked) block_link(nb);
    return nb + 1;
}

static _Noreturn void stb_check_failed(const char *check)
{
    session.failed_check = check;
    longjmp(session.escape, 1);
}

#define STBI_MALLOC(n) stb_malloc(n)
#define STBI_REALLOC(p, n) stb_realloc(p, n)
#define STBI_FREE(p) stb_free(p)
#define STBI_ASSERT(x) ((x) ? (void)0 : stb_check_failed(#x))
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO  /* files are read here (ec_image_load), so the size check sees the whole file first */
#define STBI_NO_LINEAR /* no float output API; HDR is still decoded and tone-mapped to 8 bit */
#define STBI_NO_PIC    /* formats nobody asked for are left out: less code reachable from hostile files */
#define STBI_NO_PNM
/* stb_image declares functions this file does not use (one, stbi_set_unpremultiply_on_load_thread, is declared but
 * never defined in v2.27); GCC reports those at the end of the file, outside any push/pop, so this stays off. */
#pragma GCC diagnostic ignored "-Wunused-function"
/* stb copies zero bytes to a NULL pointer in places (a PNG whose first IDAT chunk is empty): harmless, but undefined
 * behaviour that UBSan reports. Its memcpy calls go through one that skips empty copies (<string.h> is already in). */
static inline void *stb_memcpy(void *dst, const void *src, size_t n) { return n ? memcpy(dst, src, n) : dst; }
#define memcpy stb_memcpy
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#include <stb_image.h>
#pragma GCC diagnostic pop
#undef memcpy

/* One call into stb_image: read the header only, or decode to 8-bit RGB. */
typedef struct stb_call {
    const uint8_t *data;
    int size;
    int decode; /* 0: stbi_info only */
    int width, height, channels;
    uint8_t *rgb; /* decode result, handed over to the caller (unlinked from the session) */
    int ok;
    size_t pos;           /* decode: how far stb has read */
    const char *refill;   /* decode: stb's own read-ahead buffer (the target of its first read) */
    int read_past_end;    /* decode: stb needed bytes after the last one */
} stb_call;

/* Decoding goes through stb's callback interface rather than its memory one so that a truncated file is noticed:
 * from memory, stb reads zeros past the end, and BMP, GIF, TGA, PSD and HDR files cut short then "decode" with
 * black where the data was missing. stb reads in two ways: it refills its read-ahead buffer (always the target of
 * its first read) when it needs one more byte, so a refill at the end means truncation; and it reads a known count
 * straight into its own arrays, where a short read means truncation. */
static int stb_read(void *user, char *out, int n)
{
    stb_call *c = user;
    if (!c->refill) c->refill = out;
    size_t left = (size_t)c->size - c->pos;
    if (n > 0 && (out == c->refill ? left == 0 : (size_t)n > left)) c->read_past_end = 1;
    size_t k = n < 0 ? 0 : (size_t)n < left ? (size_t)n : left;
    memcpy(out, c->data + c->pos, k);
    /* stb ignores short reads in places (stbi__getn into a pixel of a flat HDR file) and goes on to compute with
     * whatever the array held: give it zeros, as its memory interface does, rather than uninitialized stack. The
     * truncation is still reported through read_past_end. */
    if ((size_t)n > k) memset(out + k, 0, (size_t)n - k);
    c->pos += k;
    return (int)k;
}

static void stb_skip(void *user, int n)
{
    stb_call *c = user;
    if (n < 0) { /* stb's contract allows ungetting bytes */
        c->pos = (size_t)-n > c->pos ? 0 : c->pos - (size_t)-n;
    } else if ((size_t)n > (size_t)c->size - c->pos) {
        c->read_past_end = 1;
        c->pos = (size_t)c->size;
    } else {
        c->pos += (size_t)n;
    }
}

static int stb_eof(void *user)
{
    stb_call *c = user;
    return c->pos >= (size_t)c->size;
}

static void stb_call_run(stb_call *c)
{
    if (c->decode) {
        static const stbi_io_callbacks io = {stb_read, stb_skip, stb_eof};
        c->rgb = stbi_load_from_callbacks(&io, c, &c->width, &c->height, &c->channels, 3);
        c->ok = c->rgb != NULL;
    } else {
        c->ok = stbi_info_from_memory(c->data, c->size, &c->width, &c->height, &c->channels);
    }
}

static void session_release_all(void)
{
    while (session.live.h.next != &session.live) {
        stb_block *b = session.live.h.next;
        block_unlink(b);
        free(b);
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Known defects of Debian's stb_image (v2.27) that a file can reach: they are memory-safety bugs, not failed checks,
 * so they are refused before stb sees the data.
 * ------------------------------------------------------------------------------------------------------------- */

/* stb reads past the end of its buffer as zeros; so does this. */
static uint8_t byte_at(const uint8_t *d, size_t n, size_t i) { return i < n ? d[i] : 0; }

/* One DHT segment's tables, parsed as stb parses them (table after table while the declared length lasts, reading on
 * past it if the counts say so). stb 2.27 builds each table without checking that it holds at most 256 symbols
 * (upstream 2.28 added the check), and more overflow its arrays. */
static int jpeg_dht_ok(const uint8_t *d, size_t n, size_t p, long remaining)
{
    while (remaining > 0) {
        long symbols = 0;
        for (int i = 1; i <= 16; i++) symbols += byte_at(d, n, p + (size_t)i);
        if (symbols > 256) return 0;
        p += 17 + (size_t)symbols;
        remaining -= 17 + symbols;
    }
    return 1;
}

/* Walks a JPEG's markers the way stb does (segments by their lengths, entropy-coded data up to the next marker that
 * is not a stuffed byte or a restart) and checks every Huffman table stb would build. Not a JPEG: nothing to check. */
static int jpeg_tables_ok(const uint8_t *d, size_t n)
{
    /* stb finds the SOI marker as it finds every marker: 0xFF, any number of 0xFF fill bytes, then 0xD8. */
    if (n < 2 || d[0] != 0xFF) return 1;
    size_t p = 1;
    while (p < n && d[p] == 0xFF) p++;
    if (p >= n || d[p] != 0xD8) return 1;
    p++;
    while (p + 1 < n) {
        uint8_t m = d[p + 1];
        if (d[p] != 0xFF || m == 0xFF) { /* data, garbage between segments, or a fill byte before a marker */
            p++;
            continue;
        }
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { /* stuffed 0xFF, TEM, RSTn, SOI: no length */
            p += 2;
            continue;
        }
        if (m == 0xD9) return 1; /* EOI: stb stops here */
        size_t length = (size_t)byte_at(d, n, p + 2) << 8 | byte_at(d, n, p + 3);
        if (m == 0xC4 && !jpeg_dht_ok(d, n, p + 4, (long)length - 2)) return 0;
        p += 2 + length;
    }
    return 1;
}

/* stb's HDR header tokenizer (stbi__hdr_gettoken): a line, at most 1023 characters kept; returns the next offset. */
#define HDR_TOKEN_MAX 1024
static size_t hdr_token(const uint8_t *d, size_t n, size_t p, char token[HDR_TOKEN_MAX])
{
    int len = 0;
    char c = (char)byte_at(d, n, p++);
    while (p < n && c != '\n') {
        token[len++] = c;
        if (len == HDR_TOKEN_MAX - 1) {
            while (p < n && byte_at(d, n, p++) != '\n') continue;
            break;
        }
        c = (char)byte_at(d, n, p++);
    }
    token[len] = 0;
    return p;
}

/* stb 2.27 decodes a run-length scanline of an HDR file in a loop that only advances on a non-zero count; past the end
 * of the data every count reads as zero, so a truncated HDR file hangs the decoder forever (upstream 2.28 fixed it).
 * This follows stb's parse (header, size line, then scanline by scanline) and refuses a file whose run-length data
 * ends before a scanline is complete. Anything stb would reject or decode without run-lengths passes. */
static int hdr_runs_complete(const uint8_t *d, size_t n)
{
    static const char magic1[] = "#?RADIANCE\n", magic2[] = "#?RGBE\n";
    if (!(n >= sizeof magic1 - 1 && memcmp(d, magic1, sizeof magic1 - 1) == 0) &&
        !(n >= sizeof magic2 - 1 && memcmp(d, magic2, sizeof magic2 - 1) == 0))
        return 1;
    char token[HDR_TOKEN_MAX];
    size_t p = hdr_token(d, n, 0, token);
    do p = hdr_token(d, n, p, token); while (token[0]); /* header lines up to the empty one */
    p = hdr_token(d, n, p, token);                      /* "-Y <height> +X <width>" */
    if (strncmp(token, "-Y ", 3) != 0) return 1;
    char *t = token + 3;
    long height = strtol(t, &t, 10);
    while (*t == ' ') t++;
    if (strncmp(t, "+X ", 3) != 0) return 1;
    long width = strtol(t + 3, NULL, 10);
    if (width < 8 || width >= 32768 || height > EC_IMAGE_MAX_SIDE) return 1; /* flat pixels or rejected: no runs */
    for (long y = 0; y < height; y++) {
        if (byte_at(d, n, p) != 2 || byte_at(d, n, p + 1) != 2 || (byte_at(d, n, p + 2) & 0x80)) return 1; /* flat */
        if ((long)(byte_at(d, n, p + 2) << 8 | byte_at(d, n, p + 3)) != width) return 1; /* stb rejects it */
        p += 4;
        for (int channel = 0; channel < 4; channel++)
            for (long x = 0; x < width;) {
                if (p >= n) return 0; /* every count from here on is zero: stb would never finish */
                long count = d[p++];
                if (count > 128) count -= 128, p++; /* a run: one value */
                else p += (size_t)count;            /* a dump: count values */
                if (count > width - x) return 1;    /* stb rejects it */
                x += count;
            }
    }
    return 1;
}

/* Runs c inside a session that allows at most `budget` bytes of live allocations. Returns EC_OK whether or not stb
 * accepted the data (c->ok says); an error only for a failed internal check or the memory budget. */
static ec_status stb_guarded(stb_call *c, size_t budget)
{
    if (!jpeg_tables_ok(c->data, (size_t)c->size))
        return ec_fail(EC_ERR_FORMAT, "corrupt JPEG: a Huffman table declares more than 256 symbols");
    if (c->decode && !hdr_runs_complete(c->data, (size_t)c->size))
        return ec_fail(EC_ERR_FORMAT, "corrupt HDR image: its run-length data ends in the middle of a scanline");
    session.active = 1;
    session.live.h.prev = session.live.h.next = &session.live;
    session.live_bytes = 0;
    session.budget = budget;
    session.over_budget = 0;
    session.failed_check = NULL;
    if (setjmp(session.escape) == 0) stb_call_run(c);
    else c->ok = 0, c->rgb = NULL;
    if (c->rgb) block_unlink((stb_block *)c->rgb - 1); /* the caller owns the pixels now */
    session_release_all(); /* stb frees everything else itself; after a failed check nothing else will */
    session.active = 0;
    if (session.failed_check)
        return ec_fail(EC_ERR_FORMAT, "corrupt image: the decoder's consistency check (%s) failed", session.failed_check);
    if (!c->ok && session.over_budget)
        return ec_fail(EC_ERR_FORMAT, "corrupt image: decoding it needs far more memory than its declared size");
    return EC_OK;
}

/* Header parsing needs little memory whatever the image size. */
#define INFO_BUDGET ((size_t)64 << 20)
/* Decoding needs at most about 24 bytes per declared pixel (16-bit RGBA PNG: zlib output plus 16-bit image; HDR:
 * float image plus 8-bit copy); more than this means the data is inconsistent with its header. */
#define DECODE_BYTES_PER_PIXEL 32
#define DECODE_SLACK ((size_t)64 << 20)

static ec_status check_data_size(size_t size)
{
    if (size == 0) return ec_fail(EC_ERR_FORMAT, "cannot decode image: the data is empty (0 bytes)");
    if (size > INT_MAX) return ec_fail(EC_ERR_LIMIT, "cannot decode image: %zu bytes is over the 2 GiB limit", size);
    return EC_OK;
}

ec_status ec_image_info(const uint8_t *data, size_t size, int *width, int *height)
{
    if (!data && size) return ec_fail(EC_ERR_ARG, "ec_image_info: data is NULL");
    EC_TRY(check_data_size(size));
    stb_call c = {.data = data, .size = (int)size};
    EC_TRY(stb_guarded(&c, INFO_BUDGET));
    if (!c.ok || c.width <= 0 || c.height <= 0)
        return ec_fail(EC_ERR_FORMAT,
                       "cannot decode image: not a JPEG, PNG, BMP, GIF, TGA, PSD or HDR image, or its header is corrupt (%s)",
                       stbi_failure_reason() ? stbi_failure_reason() : "unknown");
    *width = c.width;
    *height = c.height;
    return EC_OK;
}

static ec_status check_pixel_limit(uint64_t width, uint64_t height, uint64_t max_pixels)
{
    uint64_t pixels = width * height; /* sides are below 2^32, so this cannot wrap */
    if (pixels > max_pixels)
        return ec_fail(EC_ERR_LIMIT,
                       "image of %llux%llu = %llu pixels is over the limit of %llu pixels (max_pixels; a guard against "
                       "decompression bombs)",
                       (unsigned long long)width, (unsigned long long)height, (unsigned long long)pixels,
                       (unsigned long long)max_pixels);
    return EC_OK;
}

/* stb_image's header parser refuses a PNG over 2^30 bytes of pixels, and then reports only "unknown image type";
 * reading the size from IHDR here lets such a file fail with the pixel limit it actually exceeds. */
static int png_declared_size(const uint8_t *data, size_t size, uint64_t *width, uint64_t *height)
{
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size < 24 || memcmp(data, signature, 8) != 0 || memcmp(data + 12, "IHDR", 4) != 0) return 0;
    const uint8_t *p = data + 16;
    *width = (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3];
    *height = (uint64_t)p[4] << 24 | (uint64_t)p[5] << 16 | (uint64_t)p[6] << 8 | p[7];
    return 1;
}

/* stb_image 2.27 expands palette images through a 256-entry palette on its stack (stbi__parse_png_file, stbi__bmp_load)
 * of which it fills only the entries the file has: a pixel whose index is past them takes its color from uninitialized
 * stack memory, which would reach the caller in the decoded pixels (an information leak; upstream issues
 * nothings/stb#1861 and #1929, unfixed). So a PNG or BMP with a short palette is decoded from a copy whose palette is
 * padded to 256 entries with black, the color libpng and PIL give such pixels. Returns that copy (malloc'd, its size in
 * *out_n), or NULL with EC_OK when the data needs none, or NULL with an error. */
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]; }
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[1] << 8 | p[0]); }

/* Copies d with `extra` zero bytes inserted at each of the `count` offsets `at` (ascending); NULL out of memory. */
static uint8_t *insert_zeros(const uint8_t *d, size_t n, const size_t *at, const size_t *extra, int count, size_t *out_n)
{
    size_t total = n;
    for (int i = 0; i < count; i++) total += extra[i];
    uint8_t *o = malloc(total);
    if (!o) return NULL;
    size_t from = 0, to = 0;
    for (int i = 0; i < count; i++) {
        memcpy(o + to, d + from, at[i] - from);
        to += at[i] - from;
        memset(o + to, 0, extra[i]);
        to += extra[i];
        from = at[i];
    }
    memcpy(o + to, d + from, n - from);
    *out_n = total;
    return o;
}

/* PLTE chunks padded per file. A real file has one; the first one padded sets all 256 entries, and a later PLTE only
 * overwrites some of them, so the cap leaves nothing uninitialized. */
#define MAX_PADDED_PLTE 8

static uint8_t *pad_palettes(const uint8_t *d, size_t n, size_t *out_n, ec_status *err)
{
    static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *err = EC_OK;
    size_t at[MAX_PADDED_PLTE], extra[MAX_PADDED_PLTE];
    if (n >= 8 && memcmp(d, png_signature, 8) == 0) {
        /* Each PLTE chunk of 3k < 768 bytes becomes one of 768 (stb skips chunk CRCs); its length field grows, and
         * the zeros go at the end of its data. */
        int count = 0;
        for (size_t p = 8; p + 12 <= n && count < MAX_PADDED_PLTE;) {
            uint32_t len = be32(d + p);
            if (len > n - p - 12) break; /* cut short: stb reports it */
            if (memcmp(d + p + 4, "PLTE", 4) == 0 && len < 768 && len % 3 == 0) {
                at[count] = p + 8 + len;
                extra[count++] = 768 - len;
            }
            p += 12 + (size_t)len;
        }
        if (!count) return NULL;
        uint8_t *o = insert_zeros(d, n, at, extra, count, out_n);
        if (!o) { *err = ec_fail(EC_ERR_OOM, "out of host memory decoding a %zu-byte PNG", n); return NULL; }
        /* Rewrite the length fields, each shifted by the zeros inserted before it. */
        size_t shift = 0;
        for (int i = 0; i < count; i++) {
            uint32_t len = (uint32_t)(768 - extra[i]);
            uint8_t *field = o + at[i] - len - 8 + shift;
            field[0] = 0; field[1] = 0; field[2] = 768 >> 8; field[3] = 768 & 0xFF;
            shift += extra[i];
        }
        return o;
    }
    if (n >= 30 && d[0] == 'B' && d[1] == 'M') {
        /* stb's rule (stbi__bmp_load): psize = (offset - 14 - hsz) / 4 four-byte entries, or (offset - 38) / 3
         * three-byte ones for the 12-byte OS/2 header, read right after the header; only 1-, 4- and 8-bit images
         * use them. Padding inserts the missing entries after those and moves the pixel offset by as much. */
        uint32_t offset = le32(d + 10), hsz = le32(d + 14);
        if (hsz != 12 && hsz != 40 && hsz != 56 && hsz != 108 && hsz != 124) return NULL; /* stb refuses it */
        unsigned bpp = hsz == 12 ? le16(d + 24) : (n >= 30 ? le16(d + 28) : 0);
        if (bpp != 1 && bpp != 4 && bpp != 8) return NULL;
        long entry = hsz == 12 ? 3 : 4, start = 14 + (long)hsz;
        long psize = hsz == 12 ? ((long)offset - 38) / 3 : ((long)offset - start) / 4;
        if (offset > INT_MAX || psize < 1 || (hsz == 12 && (long)offset < 38))
            /* stb would read no palette at all (a negative count passes its check) and show its stack instead. */
            return *err = ec_fail(EC_ERR_FORMAT, "corrupt BMP: its pixel data offset %u leaves no room for the palette "
                                  "of a %u-bit image", offset, bpp), NULL;
        if (psize >= 256 || (size_t)(start + psize * entry) > n) return NULL; /* full, or cut short: stb reports it */
        at[0] = (size_t)(start + psize * entry);
        extra[0] = (size_t)((256 - psize) * entry);
        if (offset + extra[0] > INT_MAX) return NULL;
        uint8_t *o = insert_zeros(d, n, at, extra, 1, out_n);
        if (!o) { *err = ec_fail(EC_ERR_OOM, "out of host memory decoding a %zu-byte BMP", n); return NULL; }
        uint32_t moved = offset + (uint32_t)extra[0];
        o[10] = moved & 0xFF; o[11] = moved >> 8 & 0xFF; o[12] = moved >> 16 & 0xFF; o[13] = moved >> 24;
        return o;
    }
    return NULL;
}

ec_status ec_image_decode(const uint8_t *data, size_t size, uint64_t max_pixels, ec_image *out)
{
    if (!out) return ec_fail(EC_ERR_ARG, "ec_image_decode: out is NULL");
    memset(out, 0, sizeof *out);
    EC_TRY(check_data_size(size));
    uint64_t png_w, png_h;
    if (data && png_declared_size(data, size, &png_w, &png_h)) EC_TRY(check_pixel_limit(png_w, png_h, max_pixels));
    int width, height;
    EC_TRY(ec_image_info(data, size, &width, &height));
    EC_TRY(check_pixel_limit((uint64_t)width, (uint64_t)height, max_pixels));

    size_t padded_size = 0;
    ec_status pad_status;
    uint8_t *padded = pad_palettes(data, size, &padded_size, &pad_status);
    if (pad_status != EC_OK) return pad_status;
    if (padded && padded_size > INT_MAX) {
        free(padded);
        return ec_fail(EC_ERR_LIMIT, "cannot decode image: %zu bytes is over the 2 GiB limit", size);
    }
    stb_call c = {.data = padded ? padded : data, .size = (int)(padded ? padded_size : size), .decode = 1};
    ec_status guarded = stb_guarded(&c, (size_t)width * (size_t)height * DECODE_BYTES_PER_PIXEL + DECODE_SLACK);
    free(padded);
    EC_TRY(guarded);
    if (c.ok && c.read_past_end) {
        stb_free(c.rgb);
        return ec_fail(EC_ERR_FORMAT, "truncated image: the data ends before the image does (%zu bytes)", size);
    }
    if (!c.ok)
        return ec_fail(EC_ERR_FORMAT, "cannot decode image: %s (corrupt or truncated data)",
                       stbi_failure_reason() ? stbi_failure_reason() : "unknown error");
    out->width = c.width;
    out->height = c.height;
    out->rgb = c.rgb;
    /* The header was checked already; this only guards against a decoder that disagrees with its own header. */
    ec_status s = check_pixel_limit((uint64_t)c.width, (uint64_t)c.height, max_pixels);
    if (s != EC_OK) ec_image_free(out);
    return s;
}

void ec_image_free(ec_image *img)
{
    if (!img) return;
    stb_free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}

/* Reads a whole regular file. Pipes and devices are refused (they could block or never end); O_NONBLOCK keeps even
 * the open of a FIFO from waiting for a writer, and does nothing to reads of a regular file. */
static ec_status read_file(const char *path, uint8_t **data, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return ec_fail(EC_ERR_IO, "cannot open image file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ec_fail(EC_ERR_IO, "cannot read image file '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ec_fail(EC_ERR_IO, "cannot read image file '%s': not a regular file", path);
    }
    if (st.st_size > INT_MAX) {
        close(fd);
        return ec_fail(EC_ERR_LIMIT, "image file '%s' is %lld bytes, over the 2 GiB limit", path, (long long)st.st_size);
    }
    size_t want = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(want ? want : 1);
    if (!buf) {
        close(fd);
        return ec_fail(EC_ERR_OOM, "out of host memory reading image file '%s' (%zu bytes)", path, want);
    }
    while (got < want) { /* the file may shrink while we read it: keep what was there */
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return ec_fail(EC_ERR_IO, "cannot read image file '%s': %s", path, strerror(e));
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    close(fd);
    *data = buf;
    *size = got;
    return EC_OK;
}

ec_status ec_image_load(const char *path, uint64_t max_pixels, ec_image *out)
{
    if (!out || !path) return ec_fail(EC_ERR_ARG, "ec_image_load: path and out must not be NULL");
    memset(out, 0, sizeof *out);
    uint8_t *data = NULL;
    size_t size = 0;
    EC_TRY(read_file(path, &data, &size));
    ec_status s = ec_image_decode(data, size, max_pixels, out);
    free(data);
    if (s == EC_ERR_FORMAT || s == EC_ERR_LIMIT) {
        /* Name the file in the message: copy first, ec_fail overwrites the buffer it reads from. */
        char reason[768];
        snprintf(reason, sizeof reason, "%s", ec_last_error());
        return ec_fail(s, "%s: %s", path, reason);
    }
    return s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Bicubic resize, a transcription of Pillow's ImagingResample (libImaging/Resample.c) for 8-bit RGB, so the global
 * view matches SiglipImageProcessor (which resizes with PIL) bit for bit. The details that matter for exactness:
 * the filter support grows with the downscale factor (antialiasing), each output sample's weights are normalized in
 * double and then rounded to 22-bit fixed point, sums start at 0.5 in that fixed point, and each pass rounds down and
 * clips to uint8 before the next one (in the order resample_two_pass explains).
 * ------------------------------------------------------------------------------------------------------------- */

#define PRECISION_BITS (32 - 8 - 2)

/* Keys' cubic with a = -0.5, term for term as Pillow writes it, so rounding in double matches too. */
static double bicubic_filter(double x)
{
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}
#define BICUBIC_SUPPORT 2.0

typedef struct resample_axis {
    int ksize;      /* taps per output sample (the stride of k) */
    int *first;     /* [out] first input sample used */
    int *count;     /* [out] number of input samples used */
    int32_t *k;     /* [out][ksize] fixed-point weights */
} resample_axis;

static void axis_free(resample_axis *a)
{
    free(a->first);
    free(a->count);
    free(a->k);
    memset(a, 0, sizeof *a);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for a full-image box. */
static ec_status axis_init(resample_axis *a, int in_size, int out_size)
{
    memset(a, 0, sizeof *a);
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = BICUBIC_SUPPORT * filterscale;
    a->ksize = (int)ceil(support) * 2 + 1;
    size_t taps;
    if (__builtin_mul_overflow((size_t)a->ksize, (size_t)out_size, &taps) || taps > SIZE_MAX / sizeof(double))
        return ec_fail(EC_ERR_LIMIT, "resize: %d -> %d samples needs too many filter taps", in_size, out_size);
    a->first = malloc(sizeof(int) * (size_t)out_size);
    a->count = malloc(sizeof(int) * (size_t)out_size);
    a->k = malloc(sizeof(int32_t) * taps);
    double *w = malloc(sizeof(double) * (size_t)a->ksize);
    if (!a->first || !a->count || !a->k || !w) {
        free(w);
        axis_free(a);
        return ec_fail(EC_ERR_OOM, "resize: out of host memory for %zu filter taps", taps);
    }
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = a->k + (size_t)xx * a->ksize;
        for (int x = 0; x < a->ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        a->first[xx] = xmin;
        a->count[xx] = xmax;
    }
    free(w);
    return EC_OK;
}

/* Rounds a fixed-point sum down to an integer and clips it to 0..255 (Pillow's clip8). */
static inline uint8_t clip8(int32_t v)
{
    int32_t i = v >> PRECISION_BITS;
    return (uint8_t)(i < 0 ? 0 : i > 255 ? 255 : i);
}

/* Horizontal pass: rows [0, rows) of src to rows [0, rows) of dst, out_w samples each. */
static void resample_rows(const uint8_t *src, size_t src_stride, int rows, uint8_t *dst, size_t dst_stride, int out_w,
                          const resample_axis *a)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *in = src + (size_t)y * src_stride;
        uint8_t *o = dst + (size_t)y * dst_stride;
        for (int xx = 0; xx < out_w; xx++) {
            const int32_t *k = a->k + (size_t)xx * a->ksize;
            const uint8_t *p = in + (size_t)a->first[xx] * 3;
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < a->count[xx]; x++, p += 3) {
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            o[xx * 3 + 0] = clip8(s0);
            o[xx * 3 + 1] = clip8(s1);
            o[xx * 3 + 2] = clip8(s2);
        }
    }
}

/* Vertical pass: out_h rows of width w, row yy combining src rows first[yy] - row_offset onwards. */
static void resample_columns(const uint8_t *src, size_t src_stride, int row_offset, int w, uint8_t *dst,
                             size_t dst_stride, int out_h, const resample_axis *a)
{
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t *k = a->k + (size_t)yy * a->ksize;
        const uint8_t *in = src + (size_t)(a->first[yy] - row_offset) * src_stride;
        uint8_t *o = dst + (size_t)yy * dst_stride;
        for (int xx = 0; xx < w * 3; xx++) {
            int32_t s = 1 << (PRECISION_BITS - 1);
            const uint8_t *p = in + xx;
            for (int y = 0; y < a->count[yy]; y++, p += src_stride) s += *p * k[y];
            o[xx] = clip8(s);
        }
    }
}

static ec_status check_side(const char *what, int w, int h)
{
    if (w < 1 || h < 1 || w > EC_IMAGE_MAX_SIDE || h > EC_IMAGE_MAX_SIDE)
        return ec_fail(EC_ERR_ARG, "%s size %dx%d is out of range (1..%d per side)", what, w, h, EC_IMAGE_MAX_SIDE);
    return EC_OK;
}

/* Both passes. Pillow 13 resamples vertically first when the image loses more than twice as many rows as columns
 * (older Pillow always went horizontally first); the order changes the uint8 rounding in between, so follow it. */
static ec_status resample_two_pass(const uint8_t *src, int src_w, int src_h, size_t src_stride, uint8_t *dst, int dst_w,
                                   int dst_h, size_t dst_stride, const resample_axis *ax, const resample_axis *ay)
{
    int vertical_first = src_h - dst_h > 0 && src_h - dst_h > 2 * (src_w - dst_w);
    /* Horizontal first covers only the source rows the vertical pass will read, as Pillow does. */
    int first_row = vertical_first ? 0 : ay->first[0];
    int tmp_w = vertical_first ? src_w : dst_w;
    int tmp_h = vertical_first ? dst_h : ay->first[dst_h - 1] + ay->count[dst_h - 1] - first_row;
    size_t tmp_stride = (size_t)tmp_w * 3;
    uint8_t *tmp = malloc(tmp_stride * (size_t)tmp_h);
    if (!tmp) return ec_fail(EC_ERR_OOM, "resize: out of host memory for a %dx%d intermediate image", tmp_w, tmp_h);
    if (vertical_first) {
        resample_columns(src, src_stride, 0, src_w, tmp, tmp_stride, dst_h, ay);
        resample_rows(tmp, tmp_stride, dst_h, dst, dst_stride, dst_w, ax);
    } else {
        resample_rows(src + (size_t)first_row * src_stride, src_stride, tmp_h, tmp, tmp_stride, dst_w, ax);
        resample_columns(tmp, tmp_stride, first_row, dst_w, dst, dst_stride, dst_h, ay);
    }
    free(tmp);
    return EC_OK;
}

ec_status ec_image_resize_bicubic(const uint8_t *src, int src_w, int src_h, size_t src_stride, uint8_t *dst, int dst_w,
                                  int dst_h, size_t dst_stride)
{
    EC_TRY(check_side("resize: source", src_w, src_h));
    EC_TRY(check_side("resize: destination", dst_w, dst_h));
    if (!src || !dst || src_stride < (size_t)src_w * 3 || dst_stride < (size_t)dst_w * 3)
        return ec_fail(EC_ERR_ARG, "resize: NULL buffer or a stride shorter than a row");
    int horizontal = dst_w != src_w, vertical = dst_h != src_h;
    if (!horizontal && !vertical) {
        for (int y = 0; y < src_h; y++) memcpy(dst + (size_t)y * dst_stride, src + (size_t)y * src_stride, (size_t)src_w * 3);
        return EC_OK;
    }
    resample_axis ax = {0}, ay = {0};
    ec_status s = EC_OK;
    if (horizontal) s = axis_init(&ax, src_w, dst_w);
    if (s == EC_OK && vertical) s = axis_init(&ay, src_h, dst_h);
    if (s == EC_OK) {
        if (!vertical) resample_rows(src, src_stride, src_h, dst, dst_stride, dst_w, &ax);
        else if (!horizontal) resample_columns(src, src_stride, 0, src_w, dst, dst_stride, dst_h, &ay);
        else s = resample_two_pass(src, src_w, src_h, src_stride, dst, dst_w, dst_h, dst_stride, &ax, &ay);
    }
    axis_free(&ax);
    axis_free(&ay);
    return s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Views: global view + tiles (docs/architecture.md 1.1).
 * ------------------------------------------------------------------------------------------------------------- */

void ec_image_fit_size(int src_w, int src_h, int target_w, int target_h, int *new_w, int *new_h)
{
    if (src_w < 1 || src_h < 1) { /* no aspect ratio to keep */
        *new_w = target_w;
        *new_h = target_h;
        return;
    }
    /* Python's floats are doubles, so these are the exact values transformers' get_patch_output_size computes. */
    double scale_w = (double)target_w / src_w;
    double scale_h = (double)target_h / src_h;
    if (scale_w < scale_h) {
        double h = ceil(src_h * scale_w);
        *new_w = target_w;
        *new_h = h < target_h ? (int)h : target_h;
    } else {
        double w = ceil(src_w * scale_h);
        *new_h = target_h;
        *new_w = w < target_w ? (int)w : target_w;
    }
}

ec_status ec_image_views_size(const ec_view_params *p, size_t *n_floats)
{
    if (!p) return ec_fail(EC_ERR_ARG, "views: params is NULL");
    if (p->tile_size < 1 || p->tile_size > EC_IMAGE_MAX_TILE)
        return ec_fail(EC_ERR_ARG, "views: tile_size %d is out of range (1..%d)", p->tile_size, EC_IMAGE_MAX_TILE);
    if (p->rows < 1 || p->cols < 1 || p->rows > EC_IMAGE_MAX_GRID || p->cols > EC_IMAGE_MAX_GRID)
        return ec_fail(EC_ERR_ARG, "views: grid %dx%d is out of range (1..%d per side)", p->rows, p->cols,
                       EC_IMAGE_MAX_GRID);
    for (int c = 0; c < 3; c++)
        if (!isfinite(p->mean[c]) || !isfinite(p->std[c]) || p->std[c] == 0.0f)
            return ec_fail(EC_ERR_ARG, "views: mean and std must be finite and std non-zero (channel %d: %g, %g)", c,
                           p->mean[c], p->std[c]);
    /* Bounded by the limits above: (1 + 64*64) * 3 * 8192^2 < 2^40, so no overflow in 64-bit size_t. */
    *n_floats = (size_t)(1 + p->rows * p->cols) * 3 * (size_t)p->tile_size * (size_t)p->tile_size;
    return EC_OK;
}

/* uint8 -> normalized float for each channel, computed as transformers does: rescale in double, round to float32,
 * then (x - mean) / std in float32. A table makes it exact and cheap. */
static void build_lut(const ec_view_params *p, float lut[3][256])
{
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = (float)(v * (1.0 / 255.0));
            lut[c][v] = (x - p->mean[c]) / p->std[c];
        }
}

/* One tile x tile RGB block (packed pixels, rows `stride` bytes apart) to a planar float view [3][tile][tile]. */
static void write_view(const uint8_t *px, size_t stride, int tile, const float lut[3][256], float *out)
{
    size_t plane = (size_t)tile * tile;
    for (int y = 0; y < tile; y++) {
        const uint8_t *row = px + (size_t)y * stride;
        float *r = out + (size_t)y * tile, *g = r + plane, *b = g + plane;
        for (int x = 0; x < tile; x++) {
            r[x] = lut[0][row[3 * x + 0]];
            g[x] = lut[1][row[3 * x + 1]];
            b[x] = lut[2][row[3 * x + 2]];
        }
    }
}

static ec_status make_global_view(const uint8_t *rgb, int width, int height, int tile, const float lut[3][256],
                                  float *out)
{
    uint8_t *view = malloc((size_t)tile * tile * 3);
    if (!view) return ec_fail(EC_ERR_OOM, "views: out of host memory for a %dx%d view", tile, tile);
    ec_status s = ec_image_resize_bicubic(rgb, width, height, (size_t)width * 3, view, tile, tile, (size_t)tile * 3);
    if (s == EC_OK) write_view(view, (size_t)tile * 3, tile, lut, out);
    free(view);
    return s;
}

/* Resize keeping the aspect ratio, center on a pad_color canvas of the grid's size, cut in raster order. */
static ec_status make_tiles(const uint8_t *rgb, int width, int height, const ec_view_params *p,
                            const float lut[3][256], float *out)
{
    int tile = p->tile_size, canvas_w = p->cols * tile, canvas_h = p->rows * tile;
    size_t stride = (size_t)canvas_w * 3;
    uint8_t *canvas = malloc(stride * (size_t)canvas_h);
    if (!canvas) return ec_fail(EC_ERR_OOM, "views: out of host memory for a %dx%d canvas", canvas_w, canvas_h);
    for (size_t i = 0; i < (size_t)canvas_w * canvas_h; i++) memcpy(canvas + 3 * i, p->pad_color, 3);

    int fit_w, fit_h;
    ec_image_fit_size(width, height, canvas_w, canvas_h, &fit_w, &fit_h);
    /* The odd pixel of padding goes after the image (right, bottom), as in LLaVA-NeXT and transformers. */
    int x0 = (canvas_w - fit_w) / 2, y0 = (canvas_h - fit_h) / 2;
    ec_status s = ec_image_resize_bicubic(rgb, width, height, (size_t)width * 3, canvas + (size_t)y0 * stride + (size_t)x0 * 3,
                                          fit_w, fit_h, stride);
    if (s == EC_OK) {
        size_t view_floats = 3 * (size_t)tile * tile;
        for (int r = 0; r < p->rows; r++)
            for (int c = 0; c < p->cols; c++)
                write_view(canvas + (size_t)r * tile * stride + (size_t)c * tile * 3, stride, tile, lut,
                           out + (size_t)(r * p->cols + c) * view_floats);
    }
    free(canvas);
    return s;
}

ec_status ec_image_make_views(const uint8_t *rgb, int width, int height, const ec_view_params *p, float *out)
{
    size_t n;
    EC_TRY(ec_image_views_size(p, &n));
    EC_TRY(check_side("views: image", width, height));
    if (!rgb || !out) return ec_fail(EC_ERR_ARG, "views: NULL image or output buffer");
    float lut[3][256];
    build_lut(p, lut);
    EC_TRY(make_global_view(rgb, width, height, p->tile_size, (const float(*)[256])lut, out));
    return make_tiles(rgb, width, height, p, (const float(*)[256])lut, out + 3 * (size_t)p->tile_size * p->tile_size);
}
