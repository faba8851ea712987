/* A small, strict JSON parser (RFC 8259) for files that may be hostile: safetensors headers,
 * model.safetensors.index.json, config.json.
 *
 * Strict: UTF-8 is validated (no overlong forms, no encoded surrogates), escapes must be well formed
 * and \u surrogates paired, control characters inside strings, trailing commas, comments, NaN and
 * duplicate object keys are rejected. Bounded: nesting depth, node count and input size are limited,
 * and parsing is linear in the input (objects are sorted once, O(n log n) in their member count), so
 * no input can exhaust the stack, memory or time.
 *
 * The whole tree lives in one arena owned by the ec_json_doc; every pointer handed out stays valid
 * until ec_json_free. Accessors accept NULL and wrong types (returning NULL / 0), so lookups can be
 * chained: ec_json_str(ec_json_get(ec_json_get(root, "a"), "b"), NULL). */
#ifndef EC_JSON_H
#define EC_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"

typedef enum {
    EC_JSON_NULL,
    EC_JSON_BOOL,
    EC_JSON_INT,    /* a number written without fraction or exponent that fits in int64 */
    EC_JSON_NUMBER, /* any other number (also integers beyond int64), as a finite double */
    EC_JSON_STRING,
    EC_JSON_ARRAY,
    EC_JSON_OBJECT
} ec_json_type;

typedef struct ec_json ec_json;
typedef struct ec_json_member ec_json_member;

struct ec_json {
    ec_json_type type;
    size_t len; /* STRING: bytes, excluding the terminating NUL; ARRAY, OBJECT: number of items */
    union {
        int boolean;
        int64_t integer;
        double number;
        const char *string;             /* NUL-terminated; may also contain NULs written as \u0000 */
        const ec_json *items;           /* ARRAY */
        const ec_json_member *members;  /* OBJECT, in document order */
    } u;
    const ec_json_member *const *sorted; /* OBJECT: the members sorted by key, for binary search */
};

struct ec_json_member {
    const char *key; /* NUL-terminated */
    size_t key_len;
    ec_json value;
};

typedef struct ec_json_doc ec_json_doc;

typedef struct {
    int max_depth;    /* nested arrays/objects */
    size_t max_nodes; /* values plus object members: bounds the memory a document may take */
    size_t max_bytes; /* input length */
} ec_json_limits;

/* Defaults: depth 64, 2 Mi nodes (a parse then peaks below about 220 MB of host memory, whatever the
 * input; a safetensors header takes about 9 nodes a tensor), 100 MB of input. */
extern const ec_json_limits ec_json_default_limits;

/* Parses text[0..len) (need not be NUL-terminated). `what` names the input in error messages, e.g.
 * "model.safetensors: the header" gives "model.safetensors: the header is not valid JSON: ...".
 * limits may be NULL for the defaults. Fails with EC_ERR_FORMAT, or EC_ERR_OOM out of host memory. */
ec_status ec_json_parse(const char *text, size_t len, const ec_json_limits *limits, const char *what,
                        ec_json_doc **out);
const ec_json *ec_json_root(const ec_json_doc *doc);
void ec_json_free(ec_json_doc *doc);

const char *ec_json_type_name(ec_json_type t); /* "null", "boolean", "integer", "number", ... */

/* The value of `key` in an object (binary search); NULL when v is not an object or has no such key. */
const ec_json *ec_json_get(const ec_json *v, const char *key);
const ec_json *ec_json_get_n(const ec_json *v, const char *key, size_t key_len);

/* Number of items of an array or members of an object, else 0. */
size_t ec_json_count(const ec_json *v);
/* Item i of an array, or the value of member i of an object (document order); NULL out of range. */
const ec_json *ec_json_at(const ec_json *v, size_t i);
/* Key of member i of an object (document order); NULL out of range or not an object. */
const char *ec_json_key_at(const ec_json *v, size_t i, size_t *len);

/* Typed getters. ec_json_str returns the string (its length in *len when len is not NULL) or NULL
 * when v is not a string; the others return 1 and store the value when v has that type, else 0.
 * ec_json_number also accepts integers. */
const char *ec_json_str(const ec_json *v, size_t *len);
int ec_json_int(const ec_json *v, int64_t *out);
int ec_json_number(const ec_json *v, double *out);
int ec_json_bool(const ec_json *v, int *out);
int ec_json_is_null(const ec_json *v);

/* Writes text from an untrusted source (a key, a tensor name, a path) into dst for an error message:
 * valid UTF-8 is kept, control characters and invalid bytes become \xNN, and text that does not fit
 * in cap bytes ends in "..." at a character boundary. The result is always valid, NUL-terminated
 * UTF-8 (a message cut in the middle of a character would fail to become a Python string). Returns its
 * length. */
size_t ec_json_printable(char *dst, size_t cap, const char *src, size_t len);

#endif
