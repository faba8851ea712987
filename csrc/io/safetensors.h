/* Reader for safetensors checkpoints (https://github.com/huggingface/safetensors), single files and
 * sharded ones (model.safetensors.index.json plus its shards), treating every file as hostile.
 *
 * A file is mapped read-only and its header validated completely at open: the header length (at most
 * 100 MB, as the Rust library allows), strict JSON, every tensor's dtype, shape (element count checked
 * for overflow) and data_offsets (in order, inside the data section, matching the shape's byte size,
 * overlapping no other tensor), and the optional "__metadata__" string map. After a successful open
 * every tensor's data pointer and size are safe to use; tensor data is not copied.
 *
 * Dtypes the format defines but eyecare does not compute with (F8_*, F6_*, F4, C64, ...) are accepted
 * at open; users of a tensor check its dtype and call ec_st_unsupported() for a clear message.
 *
 * Errors follow errors.h: EC_ERR_IO when a path cannot be opened, read or mapped; EC_ERR_FORMAT,
 * with a message naming the file and the problem, for anything wrong inside a checkpoint (including
 * an index naming a shard that does not exist); EC_ERR_ARG for a tensor name that is not there.
 *
 * The mapping is shared with the file on disk: a file truncated by another process while mapped
 * makes reads of the lost pages fault (SIGBUS), as with every mmap-based loader. */
#ifndef EC_SAFETENSORS_H
#define EC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"

typedef enum {
    EC_ST_BOOL,
    EC_ST_U8,
    EC_ST_I8,
    EC_ST_I16,
    EC_ST_U16,
    EC_ST_F16,
    EC_ST_BF16,
    EC_ST_I32,
    EC_ST_U32,
    EC_ST_F32,
    EC_ST_I64,
    EC_ST_U64,
    EC_ST_F64,
    EC_ST_C64,
    EC_ST_F8_E4M3,
    EC_ST_F8_E5M2,
    EC_ST_F8_E8M0,
    EC_ST_F6_E2M3,
    EC_ST_F6_E3M2,
    EC_ST_F4,
    EC_ST_DTYPE_COUNT
} ec_st_dtype;

/* "BF16", "F32", ... as written in the header. */
const char *ec_st_dtype_name(ec_st_dtype d);
/* Bits per element: 4 and 6 for the packed F4 and F6_* types, else a multiple of 8. */
unsigned ec_st_dtype_bits(ec_st_dtype d);

/* The header limit of the Rust implementation, so that every file it writes can be read. */
#define EC_ST_MAX_HEADER 100000000u

typedef struct ec_st_file ec_st_file;

typedef struct {
    const char *name;
    ec_st_dtype dtype;
    int ndim;
    const int64_t *shape; /* ndim entries (NULL when ndim is 0), each >= 0 */
    int64_t numel;        /* product of shape: 1 for a 0-d tensor, 0 for an empty one */
    const void *data;     /* into the read-only mapping: valid until ec_st_close, never written */
    size_t nbytes;
    const char *file;     /* path of the file (shard) holding the tensor, for messages */
} ec_st_tensor;

/* Opens a checkpoint: path is a .safetensors file, a model.safetensors.index.json (or any *.json
 * index with a "weight_map"), or a directory holding model.safetensors.index.json or
 * model.safetensors (else its only *.safetensors.index.json or *.safetensors file). A sharded
 * checkpoint opens each shard once and presents the tensors of all shards as one collection; the
 * index's weight_map must name plain file names in the same directory (no path separators, no "..")
 * and every tensor it lists must be in the shard it names. */
ec_status ec_st_open(const char *path, ec_st_file **out);
void ec_st_close(ec_st_file *f);
const char *ec_st_path(const ec_st_file *f);

/* Tensors, sorted by name (byte order). */
size_t ec_st_count(const ec_st_file *f);
const char *ec_st_name(const ec_st_file *f, size_t i);
void ec_st_at(const ec_st_file *f, size_t i, ec_st_tensor *out);
/* Index of the tensor called name, or -1. O(log n). */
ptrdiff_t ec_st_index(const ec_st_file *f, const char *name);
/* Fills *out, or fails with EC_ERR_ARG "<path> has no tensor '<name>'". */
ec_status ec_st_find(const ec_st_file *f, const char *name, ec_st_tensor *out);

/* The "__metadata__" string map (of all shards: where two shards disagree on a key, the shard whose
 * file name sorts first wins), sorted by key. */
size_t ec_st_metadata_count(const ec_st_file *f);
void ec_st_metadata_at(const ec_st_file *f, size_t i, const char **key, const char **value);
const char *ec_st_metadata_get(const ec_st_file *f, const char *key); /* NULL when absent */

/* Reports that `user` (e.g. "to_device") cannot take t's dtype: EC_ERR_FORMAT with "<file>: tensor
 * '<name>' has dtype F8_E4M3, which <user> does not support (it supports <supported>)". */
ec_status ec_st_unsupported(const ec_st_tensor *t, const char *user, const char *supported);

#endif
