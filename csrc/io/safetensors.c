#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"

static const struct {
    const char *name;
    unsigned bits;
} dtypes[EC_ST_DTYPE_COUNT] = {
    [EC_ST_BOOL] = {"BOOL", 8},         [EC_ST_U8] = {"U8", 8},           [EC_ST_I8] = {"I8", 8},
    [EC_ST_I16] = {"I16", 16},          [EC_ST_U16] = {"U16", 16},        [EC_ST_F16] = {"F16", 16},
    [EC_ST_BF16] = {"BF16", 16},        [EC_ST_I32] = {"I32", 32},        [EC_ST_U32] = {"U32", 32},
    [EC_ST_F32] = {"F32", 32},          [EC_ST_I64] = {"I64", 64},        [EC_ST_U64] = {"U64", 64},
    [EC_ST_F64] = {"F64", 64},          [EC_ST_C64] = {"C64", 64},        [EC_ST_F8_E4M3] = {"F8_E4M3", 8},
    [EC_ST_F8_E5M2] = {"F8_E5M2", 8},   [EC_ST_F8_E8M0] = {"F8_E8M0", 8}, [EC_ST_F6_E2M3] = {"F6_E2M3", 6},
    [EC_ST_F6_E3M2] = {"F6_E3M2", 6},   [EC_ST_F4] = {"F4", 4},
};

const char *ec_st_dtype_name(ec_st_dtype d) { return (unsigned)d < EC_ST_DTYPE_COUNT ? dtypes[d].name : "unknown"; }
unsigned ec_st_dtype_bits(ec_st_dtype d) { return (unsigned)d < EC_ST_DTYPE_COUNT ? dtypes[d].bits : 0; }

/* ------------------------------------------------------------------------------------------------
 * The collection. Tensors of every shard go into one table, sorted by name once all are read. */

typedef struct {
    char *path;
    const char *file_name; /* the last component of path, for matching an index's weight_map */
    const unsigned char *map;
    size_t size;
    const unsigned char *data; /* the data section: after the 8-byte length and the header */
    uint64_t data_size;
} shard;

typedef struct {
    char *name;     /* one allocation holds the shape and then the name: `shape` points at its start */
    int64_t *shape;
    int ndim;
    ec_st_dtype dtype;
    int64_t numel;
    uint64_t begin, end; /* data_offsets, relative to the shard's data section */
    size_t shard;
} entry;

typedef struct {
    char *key, *value;
    size_t order; /* position of reading, so that the first shard wins a disagreement */
} meta;

struct ec_st_file {
    char *path;
    shard *shards;
    size_t nshards;
    entry *entries;
    size_t count, cap;
    meta *meta;
    size_t nmeta, meta_cap;
};

/* Names and paths from a file are untrusted: they are quoted through ec_json_printable, bounded so
 * that a message naming two tensors and a path fits errors.h's buffer. The temporaries live until
 * the end of the full expression (C11 6.2.4p8), so q(x).s can be passed straight to ec_fail. */
typedef struct { char s[100]; } quoted_name;
typedef struct { char s[360]; } quoted_path;

static quoted_name qn(const char *s, size_t len)
{
    quoted_name r;
    ec_json_printable(r.s, sizeof r.s, s, len);
    return r;
}
static quoted_name q(const char *s) { return qn(s, strlen(s)); }
static quoted_path qp(const char *s)
{
    quoted_path r;
    ec_json_printable(r.s, sizeof r.s, s, strlen(s));
    return r;
}

static ec_status no_memory(void)
{
    return ec_fail(EC_ERR_OOM, "out of host memory while reading a safetensors checkpoint");
}

static char *copy_string(const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (c) {
        memcpy(c, s, len);
        c[len] = 0;
    }
    return c;
}

static char *join_path(const char *dir, const char *name)
{
    size_t d = strlen(dir), n = strlen(name);
    while (d > 1 && dir[d - 1] == '/') d--;
    char *p = malloc(d + 1 + n + 1);
    if (!p) return NULL;
    memcpy(p, dir, d);
    p[d] = '/';
    memcpy(p + d + 1, name, n + 1);
    return p;
}

/* The directory part of path ("." when it has none). */
static char *parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return copy_string(".", 1);
    return copy_string(path, slash == path ? 1 : (size_t)(slash - path));
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* ------------------------------------------------------------------------------------------------
 * Mapping files */

/* Maps path read-only. An empty file gives map NULL and size 0 (mmap cannot map nothing). On failure
 * *err holds errno, so that callers can tell a missing file from an unreadable one. */
static ec_status map_path(const char *path, const unsigned char **map, size_t *size, int *err)
{
    *map = NULL;
    *size = 0;
    *err = 0;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        *err = errno;
        return ec_fail(EC_ERR_IO, "%s: cannot open: %s", qp(path).s, strerror(*err));
    }
    struct stat st;
    ec_status s = EC_OK;
    if (fstat(fd, &st) < 0) {
        *err = errno;
        s = ec_fail(EC_ERR_IO, "%s: cannot stat: %s", qp(path).s, strerror(*err));
    } else if (!S_ISREG(st.st_mode)) {
        *err = EINVAL;
        s = ec_fail(EC_ERR_IO, "%s: not a regular file", qp(path).s);
    } else if ((uint64_t)st.st_size > SIZE_MAX) {
        *err = EFBIG;
        s = ec_fail(EC_ERR_IO, "%s: too large to map on this platform", qp(path).s);
    } else if (st.st_size > 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            *err = errno;
            s = ec_fail(EC_ERR_IO, "%s: cannot map %lld bytes: %s", qp(path).s, (long long)st.st_size, strerror(*err));
        } else {
            *map = m;
            *size = (size_t)st.st_size;
        }
    }
    close(fd); /* the mapping keeps the file */
    return s;
}

static void unmap(const unsigned char *map, size_t size)
{
    if (map) munmap((void *)map, size);
}

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * One tensor entry of a header */

static ec_status read_dtype(const char *file, const char *name, const ec_json *v, ec_st_dtype *out)
{
    size_t len;
    const char *s = ec_json_str(v, &len);
    if (!v) return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has no \"dtype\"", qp(file).s, q(name).s);
    if (!s)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has a JSON %s as \"dtype\", not a string", qp(file).s, q(name).s,
                       ec_json_type_name(v->type));
    for (int d = 0; d < EC_ST_DTYPE_COUNT; d++) {
        if (strlen(dtypes[d].name) == len && memcmp(dtypes[d].name, s, len) == 0) {
            *out = (ec_st_dtype)d;
            return EC_OK;
        }
    }
    return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", qp(file).s, q(name).s, qn(s, len).s);
}

/* Reads the shape into a fresh allocation that also holds the name (see entry) and computes the
 * element count, refusing counts whose size in bits would overflow 64 bits. */
static ec_status read_shape(const char *file, const char *name, size_t name_len, const ec_json *v, unsigned bits,
                            entry *e)
{
    if (!v) return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has no \"shape\"", qp(file).s, q(name).s);
    if (v->type != EC_JSON_ARRAY)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has a JSON %s as \"shape\", not an array", qp(file).s, q(name).s,
                       ec_json_type_name(v->type));
    size_t ndim = ec_json_count(v);
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        int64_t d;
        if (!ec_json_int(ec_json_at(v, i), &d) || d < 0)
            return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has shape entry %zu that is not a non-negative integer",
                           qp(file).s, q(name).s, i);
        if (d && numel > (uint64_t)INT64_MAX / bits / (uint64_t)d)
            return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has a shape whose element count overflows", qp(file).s,
                           q(name).s);
        numel *= (uint64_t)d;
    }
    void *block = malloc(ndim * sizeof(int64_t) + name_len + 1);
    if (!block) return no_memory();
    e->shape = block;
    e->name = (char *)block + ndim * sizeof(int64_t);
    memcpy(e->name, name, name_len + 1);
    for (size_t i = 0; i < ndim; i++) ec_json_int(ec_json_at(v, i), &e->shape[i]);
    e->ndim = (int)ndim;
    e->numel = (int64_t)numel;
    return EC_OK;
}

static ec_status read_offsets(const char *file, const char *name, const ec_json *v, const shard *sh, entry *e)
{
    int64_t b, en;
    if (!v) return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has no \"data_offsets\"", qp(file).s, q(name).s);
    if (v->type != EC_JSON_ARRAY || ec_json_count(v) != 2 || !ec_json_int(ec_json_at(v, 0), &b) ||
        !ec_json_int(ec_json_at(v, 1), &en) || b < 0 || en < 0)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has \"data_offsets\" that are not [begin, end] with two "
                       "non-negative 64-bit integers", qp(file).s, q(name).s);
    if (b > en)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has data_offsets [%lld, %lld] that begin after they end",
                       qp(file).s, q(name).s, (long long)b, (long long)en);
    if ((uint64_t)en > sh->data_size)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' data_offsets [%lld, %lld] run past the end of the file (data "
                       "section is %llu bytes)", qp(file).s, q(name).s, (long long)b, (long long)en,
                       (unsigned long long)sh->data_size);
    uint64_t bits = (uint64_t)e->numel * dtypes[e->dtype].bits; /* cannot overflow: read_shape checked */
    if (bits % 8)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has %lld elements of the %u-bit %s, which do not fill a whole "
                       "number of bytes", qp(file).s, q(name).s, (long long)e->numel, dtypes[e->dtype].bits,
                       dtypes[e->dtype].name);
    if ((uint64_t)(en - b) != bits / 8)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has data_offsets [%lld, %lld] spanning %lld bytes, but %lld "
                       "elements of %s take %llu bytes", qp(file).s, q(name).s, (long long)b, (long long)en,
                       (long long)(en - b), (long long)e->numel, dtypes[e->dtype].name, (unsigned long long)(bits / 8));
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    return EC_OK;
}

static ec_status append_entry(ec_st_file *f, const entry *e)
{
    if (f->count == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        entry *n = realloc(f->entries, cap * sizeof *n);
        if (!n) return no_memory();
        f->entries = n;
        f->cap = cap;
    }
    f->entries[f->count++] = *e;
    return EC_OK;
}

static ec_status add_tensor(ec_st_file *f, size_t si, const char *name, size_t name_len, const ec_json *v)
{
    const char *file = f->shards[si].path;
    if (memchr(name, 0, name_len))
        return ec_fail(EC_ERR_FORMAT, "%s: tensor name '%s' contains a NUL character", qp(file).s, qn(name, name_len).s);
    if (v->type != EC_JSON_OBJECT)
        return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' is described by a JSON %s, not an object", qp(file).s, q(name).s,
                       ec_json_type_name(v->type));
    entry e = {.shard = si};
    EC_TRY(read_dtype(file, name, ec_json_get(v, "dtype"), &e.dtype));
    EC_TRY(read_shape(file, name, name_len, ec_json_get(v, "shape"), dtypes[e.dtype].bits, &e));
    ec_status s = read_offsets(file, name, ec_json_get(v, "data_offsets"), &f->shards[si], &e);
    if (s == EC_OK) s = append_entry(f, &e);
    if (s != EC_OK) free(e.shape);
    return s;
}

/* ------------------------------------------------------------------------------------------------
 * __metadata__ */

static ec_status add_metadata(ec_st_file *f, size_t si, const ec_json *v)
{
    const char *file = f->shards[si].path;
    if (ec_json_is_null(v)) return EC_OK; /* the Rust reader accepts null as "no metadata" */
    if (v->type != EC_JSON_OBJECT)
        return ec_fail(EC_ERR_FORMAT, "%s: \"__metadata__\" is a JSON %s, not an object of strings", qp(file).s,
                       ec_json_type_name(v->type));
    for (size_t i = 0; i < ec_json_count(v); i++) {
        size_t klen, vlen;
        const char *key = ec_json_key_at(v, i, &klen);
        const char *value = ec_json_str(ec_json_at(v, i), &vlen);
        if (!value)
            return ec_fail(EC_ERR_FORMAT, "%s: \"__metadata__\" entry '%s' is a JSON %s, not a string", qp(file).s,
                           qn(key, klen).s, ec_json_type_name(ec_json_at(v, i)->type));
        if (memchr(key, 0, klen) || memchr(value, 0, vlen))
            return ec_fail(EC_ERR_FORMAT, "%s: \"__metadata__\" entry '%s' contains a NUL character", qp(file).s,
                           qn(key, klen).s);
        if (f->nmeta == f->meta_cap) {
            size_t cap = f->meta_cap ? f->meta_cap * 2 : 8;
            meta *n = realloc(f->meta, cap * sizeof *n);
            if (!n) return no_memory();
            f->meta = n;
            f->meta_cap = cap;
        }
        meta *m = &f->meta[f->nmeta];
        m->key = copy_string(key, klen);
        m->value = copy_string(value, vlen);
        m->order = f->nmeta;
        f->nmeta++;
        if (!m->key || !m->value) return no_memory();
    }
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * One shard: header and overlap check */

typedef struct {
    uint64_t begin, end;
    size_t index;
} span;

static int span_cmp(const void *x, const void *y)
{
    const span *a = x, *b = y;
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* Two tensors sharing bytes would let a write through one (on the device, after upload) or a
 * reinterpretation alias the other; no writer produces them. Empty tensors occupy no bytes. */
static ec_status check_overlaps(ec_st_file *f, size_t first)
{
    size_t n = 0;
    span *spans = malloc((f->count - first + 1) * sizeof *spans);
    if (!spans) return no_memory();
    for (size_t i = first; i < f->count; i++)
        if (f->entries[i].end > f->entries[i].begin) spans[n++] = (span){f->entries[i].begin, f->entries[i].end, i};
    qsort(spans, n, sizeof *spans, span_cmp);
    ec_status s = EC_OK;
    for (size_t i = 1; i < n && s == EC_OK; i++) {
        if (spans[i].begin < spans[i - 1].end) {
            const entry *a = &f->entries[spans[i - 1].index], *b = &f->entries[spans[i].index];
            s = ec_fail(EC_ERR_FORMAT, "%s: tensors '%s' (data_offsets [%llu, %llu]) and '%s' ([%llu, %llu]) overlap",
                        qp(f->shards[a->shard].path).s, q(a->name).s, (unsigned long long)a->begin,
                        (unsigned long long)a->end, q(b->name).s, (unsigned long long)b->begin, (unsigned long long)b->end);
        }
    }
    free(spans);
    return s;
}

static ec_status read_header(ec_st_file *f, size_t si)
{
    shard *sh = &f->shards[si];
    if (sh->size < 8)
        return ec_fail(EC_ERR_FORMAT, "%s: the file is %zu bytes, too short for a safetensors file (which starts "
                       "with an 8-byte header length)", qp(sh->path).s, sh->size);
    uint64_t n = read_le64(sh->map);
    if (n > EC_ST_MAX_HEADER)
        return ec_fail(EC_ERR_FORMAT, "%s: header length %llu is over the limit of %u bytes (not a safetensors file, "
                       "or a corrupt one)", qp(sh->path).s, (unsigned long long)n, EC_ST_MAX_HEADER);
    if (n > sh->size - 8)
        return ec_fail(EC_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes follow the "
                       "8-byte length; truncated file?)", qp(sh->path).s, (unsigned long long)n, sh->size - 8);
    sh->data = sh->map + 8 + n;
    sh->data_size = sh->size - 8 - n;

    char what[400];
    snprintf(what, sizeof what, "%s: the header", qp(sh->path).s);
    ec_json_doc *doc;
    EC_TRY(ec_json_parse((const char *)sh->map + 8, (size_t)n, NULL, what, &doc));
    const ec_json *root = ec_json_root(doc);
    size_t first = f->count;
    ec_status s = EC_OK;
    if (root->type != EC_JSON_OBJECT)
        s = ec_fail(EC_ERR_FORMAT, "%s: the header is a JSON %s, not an object", qp(sh->path).s,
                    ec_json_type_name(root->type));
    for (size_t i = 0; s == EC_OK && i < ec_json_count(root); i++) {
        size_t klen;
        const char *key = ec_json_key_at(root, i, &klen);
        if (strcmp(key, "__metadata__") == 0 && klen == 12) s = add_metadata(f, si, ec_json_at(root, i));
        else s = add_tensor(f, si, key, klen, ec_json_at(root, i));
    }
    ec_json_free(doc);
    return s == EC_OK ? check_overlaps(f, first) : s;
}

/* Maps shard si and reads its header. missing_is_format: the shard was named by an index, so its
 * absence is a fault of the checkpoint, not of the caller's path. */
static ec_status load_shard(ec_st_file *f, size_t si, const char *index_path)
{
    shard *sh = &f->shards[si];
    int err;
    ec_status s = map_path(sh->path, &sh->map, &sh->size, &err);
    /* A name too long for the file system cannot exist either: the index is at fault, not the caller's path. */
    if (s != EC_OK && (err == ENOENT || err == ENAMETOOLONG) && index_path)
        return ec_fail(EC_ERR_FORMAT, "%s: the weight_map names shard '%s', which does not exist", qp(index_path).s,
                       q(sh->file_name).s);
    return s == EC_OK ? read_header(f, si) : s;
}

static ec_status add_shard(ec_st_file *f, char *path)
{
    if (!path) return no_memory();
    shard *n = realloc(f->shards, (f->nshards + 1) * sizeof *n);
    if (!n) { free(path); return no_memory(); }
    f->shards = n;
    const char *slash = strrchr(path, '/');
    f->shards[f->nshards++] = (shard){.path = path, .file_name = slash ? slash + 1 : path};
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * The collection's tables, once every shard is read */

static int entry_cmp(const void *x, const void *y) { return strcmp(((const entry *)x)->name, ((const entry *)y)->name); }

static int meta_cmp(const void *x, const void *y)
{
    const meta *a = x, *b = y;
    int c = strcmp(a->key, b->key);
    return c ? c : (a->order > b->order) - (a->order < b->order);
}

/* Sorts the tensors for binary search and refuses a name present in two shards; sorts the metadata
 * and keeps the first reading of each key. */
static ec_status finish(ec_st_file *f)
{
    if (f->count) qsort(f->entries, f->count, sizeof *f->entries, entry_cmp); /* the tables are NULL while empty */
    for (size_t i = 1; i < f->count; i++) {
        const entry *a = &f->entries[i - 1], *b = &f->entries[i];
        if (strcmp(a->name, b->name) == 0)
            return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' is in two shards, %s and %s", qp(f->path).s, q(a->name).s,
                           q(f->shards[a->shard].file_name).s, q(f->shards[b->shard].file_name).s);
    }
    if (f->nmeta) qsort(f->meta, f->nmeta, sizeof *f->meta, meta_cmp);
    size_t kept = 0;
    for (size_t i = 0; i < f->nmeta; i++) {
        if (kept && strcmp(f->meta[kept - 1].key, f->meta[i].key) == 0) {
            free(f->meta[i].key);
            free(f->meta[i].value);
        } else {
            f->meta[kept++] = f->meta[i];
        }
    }
    f->nmeta = kept;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Sharded checkpoints */

/* A shard must be a plain file name next to the index: a name with a separator or ".." could reach
 * any file the process can read. */
static int plain_file_name(const char *s, size_t len)
{
    if (len == 0 || memchr(s, 0, len) || memchr(s, '/', len) || memchr(s, '\\', len)) return 0;
    return !(strcmp(s, ".") == 0 || strcmp(s, "..") == 0);
}

static int str_ptr_cmp(const void *x, const void *y) { return strcmp(*(const char *const *)x, *(const char *const *)y); }

/* Index in f->shards of the shard whose file name is name (shards are sorted by file name), or -1. */
static ptrdiff_t shard_index(const ec_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->nshards;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->shards[mid].file_name, name);
        if (c == 0) return (ptrdiff_t)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* Collects the distinct shard names of the weight_map (checked) and adds them, sorted, as shards. */
static ec_status add_index_shards(ec_st_file *f, const char *index_path, const char *dir, const ec_json *weight_map)
{
    size_t n = ec_json_count(weight_map);
    const char **names = malloc((n + 1) * sizeof *names);
    if (!names) return no_memory();
    ec_status s = EC_OK;
    for (size_t i = 0; i < n && s == EC_OK; i++) {
        size_t klen, len;
        const char *tensor = ec_json_key_at(weight_map, i, &klen);
        names[i] = ec_json_str(ec_json_at(weight_map, i), &len);
        if (!names[i])
            s = ec_fail(EC_ERR_FORMAT, "%s: the weight_map entry of '%s' is a JSON %s, not a file name", qp(index_path).s,
                        qn(tensor, klen).s, ec_json_type_name(ec_json_at(weight_map, i)->type));
        else if (!plain_file_name(names[i], len))
            s = ec_fail(EC_ERR_FORMAT, "%s: the weight_map puts tensor '%s' in '%s', which is not a plain file name in "
                        "the checkpoint's directory", qp(index_path).s, qn(tensor, klen).s, qn(names[i], len).s);
    }
    if (s == EC_OK) qsort(names, n, sizeof *names, str_ptr_cmp);
    for (size_t i = 0; i < n && s == EC_OK; i++)
        if (i == 0 || strcmp(names[i - 1], names[i]) != 0) s = add_shard(f, join_path(dir, names[i]));
    free(names);
    return s;
}

/* Every tensor the weight_map lists must be in the shard it names: a checkpoint whose index and
 * shards disagree is damaged (a shard from another version, an interrupted download). */
static ec_status check_weight_map(const ec_st_file *f, const char *index_path, const ec_json *weight_map)
{
    for (size_t i = 0; i < ec_json_count(weight_map); i++) {
        size_t klen;
        const char *tensor = ec_json_key_at(weight_map, i, &klen);
        const char *file = ec_json_str(ec_json_at(weight_map, i), NULL);
        ptrdiff_t t = memchr(tensor, 0, klen) ? -1 : ec_st_index(f, tensor);
        if (t < 0 || f->entries[t].shard != (size_t)shard_index(f, file))
            return ec_fail(EC_ERR_FORMAT, "%s: the weight_map puts tensor '%s' in %s, but that file does not contain it",
                           qp(index_path).s, qn(tensor, klen).s, q(file).s);
    }
    return EC_OK;
}

static ec_status open_index(ec_st_file *f, const char *index_path)
{
    const unsigned char *map;
    size_t size;
    int err;
    EC_TRY(map_path(index_path, &map, &size, &err));
    char *dir = parent_dir(index_path);
    ec_json_doc *doc = NULL;
    /* An empty file maps to NULL: parse it as "" for the usual message. */
    ec_status s = dir ? ec_json_parse(map ? (const char *)map : "", size, NULL, qp(index_path).s, &doc) : no_memory();
    const ec_json *weight_map = ec_json_get(ec_json_root(doc), "weight_map");
    if (s == EC_OK && (!weight_map || weight_map->type != EC_JSON_OBJECT))
        s = ec_fail(EC_ERR_FORMAT, "%s: an index must be a JSON object with a \"weight_map\" object", qp(index_path).s);
    if (s == EC_OK) s = add_index_shards(f, index_path, dir, weight_map);
    for (size_t i = 0; s == EC_OK && i < f->nshards; i++) s = load_shard(f, i, index_path);
    if (s == EC_OK) s = finish(f);
    if (s == EC_OK) s = check_weight_map(f, index_path, weight_map);
    ec_json_free(doc);
    free(dir);
    unmap(map, size);
    return s;
}

/* ------------------------------------------------------------------------------------------------
 * Opening */

static int is_regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The directory's only file with the given suffix, or NULL (with *count the number found). */
static char *only_file_ending(const char *dir, const char *suffix, int *count)
{
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char *found = NULL;
    for (struct dirent *de; (de = readdir(d));) {
        if (!ends_with(de->d_name, suffix)) continue;
        char *p = join_path(dir, de->d_name);
        if (!p || !is_regular_file(p)) { free(p); continue; }
        if (++*count == 1) found = p;
        else free(p);
    }
    closedir(d);
    if (*count != 1) { free(found); found = NULL; }
    return found;
}

/* Picks the checkpoint file of a directory; *is_index says whether it is an index. */
static ec_status resolve_directory(const char *dir, char **chosen, int *is_index)
{
    static const char *const preferred[] = {"model.safetensors.index.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char *p = join_path(dir, preferred[i]);
        if (!p) return no_memory();
        if (is_regular_file(p)) { *chosen = p; *is_index = i == 0; return EC_OK; }
        free(p);
    }
    int indexes, files;
    char *p = only_file_ending(dir, ".safetensors.index.json", &indexes);
    if (p) { *chosen = p; *is_index = 1; return EC_OK; }
    p = only_file_ending(dir, ".safetensors", &files);
    if (p && !indexes) { *chosen = p; *is_index = 0; return EC_OK; }
    free(p);
    if (indexes || files)
        return ec_fail(EC_ERR_FORMAT, "%s: no model.safetensors or model.safetensors.index.json, and %d index files and "
                       "%d .safetensors files to choose from: open one of them", qp(dir).s, indexes, files);
    return ec_fail(EC_ERR_FORMAT, "%s: the directory holds no safetensors checkpoint (no model.safetensors, "
                   "model.safetensors.index.json or other .safetensors file)", qp(dir).s);
}

static ec_status open_single(ec_st_file *f, const char *path)
{
    EC_TRY(add_shard(f, copy_string(path, strlen(path))));
    EC_TRY(load_shard(f, 0, NULL));
    return finish(f);
}

static ec_status open_path(ec_st_file *f, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) return ec_fail(EC_ERR_IO, "%s: cannot open: %s", qp(path).s, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char *chosen = NULL;
        int is_index = 0;
        EC_TRY(resolve_directory(path, &chosen, &is_index));
        ec_status s = is_index ? open_index(f, chosen) : open_single(f, chosen);
        free(chosen);
        return s;
    }
    return ends_with(path, ".json") ? open_index(f, path) : open_single(f, path);
}

ec_status ec_st_open(const char *path, ec_st_file **out)
{
    *out = NULL;
    ec_st_file *f = calloc(1, sizeof *f);
    if (!f) return no_memory();
    f->path = copy_string(path, strlen(path));
    ec_status s = f->path ? open_path(f, path) : no_memory();
    if (s != EC_OK) {
        ec_st_close(f);
        return s;
    }
    *out = f;
    return EC_OK;
}

void ec_st_close(ec_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->nshards; i++) {
        unmap(f->shards[i].map, f->shards[i].size);
        free(f->shards[i].path);
    }
    for (size_t i = 0; i < f->count; i++) free(f->entries[i].shape);
    for (size_t i = 0; i < f->nmeta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->shards);
    free(f->entries);
    free(f->meta);
    free(f->path);
    free(f);
}

/* ------------------------------------------------------------------------------------------------
 * Lookups */

const char *ec_st_path(const ec_st_file *f) { return f->path; }
size_t ec_st_count(const ec_st_file *f) { return f->count; }
const char *ec_st_name(const ec_st_file *f, size_t i) { return i < f->count ? f->entries[i].name : NULL; }

void ec_st_at(const ec_st_file *f, size_t i, ec_st_tensor *out)
{
    const entry *e = &f->entries[i];
    const shard *sh = &f->shards[e->shard];
    *out = (ec_st_tensor){.name = e->name, .dtype = e->dtype, .ndim = e->ndim, .shape = e->ndim ? e->shape : NULL,
                          .numel = e->numel, .data = sh->data + e->begin, .nbytes = (size_t)(e->end - e->begin),
                          .file = sh->path};
}

ptrdiff_t ec_st_index(const ec_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->entries[mid].name, name);
        if (c == 0) return (ptrdiff_t)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

ec_status ec_st_find(const ec_st_file *f, const char *name, ec_st_tensor *out)
{
    ptrdiff_t i = ec_st_index(f, name);
    if (i < 0) return ec_fail(EC_ERR_ARG, "%s has no tensor '%s'", qp(f->path).s, q(name).s);
    ec_st_at(f, (size_t)i, out);
    return EC_OK;
}

size_t ec_st_metadata_count(const ec_st_file *f) { return f->nmeta; }

void ec_st_metadata_at(const ec_st_file *f, size_t i, const char **key, const char **value)
{
    *key = f->meta[i].key;
    *value = f->meta[i].value;
}

const char *ec_st_metadata_get(const ec_st_file *f, const char *key)
{
    size_t lo = 0, hi = f->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->meta[mid].key, key);
        if (c == 0) return f->meta[mid].value;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

ec_status ec_st_unsupported(const ec_st_tensor *t, const char *user, const char *supported)
{
    return ec_fail(EC_ERR_FORMAT, "%s: tensor '%s' has dtype %s, which %s does not support (it supports %s)",
                   qp(t->file).s, q(t->name).s, ec_st_dtype_name(t->dtype), user, supported);
}
