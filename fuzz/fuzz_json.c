/* libFuzzer harness for csrc/io/json.c, the parser of every JSON file eyecare reads (safetensors headers,
 * model.safetensors.index.json, config.json): any input must either parse into a tree that keeps json.h's
 * promises or fail with a message, never crash, leak, or take more than linear time. */
#include <math.h>

#include "common.h"
#include "io/json.h"

/* Walks the tree checking what json.h promises about it. Depth is bounded by the parser's limit. */
static void walk(const ec_json *v, int depth, size_t *nodes)
{
    FUZZ_CHECK(depth <= ec_json_default_limits.max_depth);
    ++*nodes;
    switch (v->type) {
    case EC_JSON_NULL: FUZZ_CHECK(ec_json_is_null(v)); break;
    case EC_JSON_BOOL: {
        int b = -1;
        FUZZ_CHECK(ec_json_bool(v, &b) && (b == 0 || b == 1));
        break;
    }
    case EC_JSON_INT: {
        int64_t i;
        double d;
        FUZZ_CHECK(ec_json_int(v, &i) && ec_json_number(v, &d));
        break;
    }
    case EC_JSON_NUMBER: {
        double d;
        int64_t i;
        FUZZ_CHECK(ec_json_number(v, &d) && isfinite(d) && !ec_json_int(v, &i));
        break;
    }
    case EC_JSON_STRING: {
        size_t len = 0;
        const char *s = ec_json_str(v, &len);
        FUZZ_CHECK(s && s[len] == 0 && fuzz_valid_utf8(s, len)); /* \u0000 decodes to a NUL, which is valid UTF-8 */
        char buf[64];
        size_t n = ec_json_printable(buf, sizeof buf, s, len);
        FUZZ_CHECK(n < sizeof buf && buf[n] == 0 && strlen(buf) == n && fuzz_valid_utf8(buf, n));
        break;
    }
    case EC_JSON_ARRAY:
        FUZZ_CHECK(ec_json_count(v) == v->len && ec_json_at(v, v->len) == NULL);
        for (size_t i = 0; i < v->len; i++) walk(ec_json_at(v, i), depth + 1, nodes);
        break;
    case EC_JSON_OBJECT:
        FUZZ_CHECK(ec_json_count(v) == v->len && ec_json_key_at(v, v->len, NULL) == NULL);
        for (size_t i = 0; i < v->len; i++) {
            size_t klen;
            const char *key = ec_json_key_at(v, i, &klen);
            FUZZ_CHECK(key && key[klen] == 0 && fuzz_valid_utf8(key, klen));
            /* Keys are unique, so the binary search must find exactly this member. */
            FUZZ_CHECK(ec_json_get_n(v, key, klen) == ec_json_at(v, i));
            /* A key one byte longer (with a NUL) is a different key; it may exist, but must not be this one. */
            char *longer = malloc(klen + 2);
            memcpy(longer, key, klen);
            longer[klen] = 0;
            FUZZ_CHECK(ec_json_get_n(v, longer, klen + 1) != ec_json_at(v, i));
            free(longer);
            walk(ec_json_at(v, i), depth + 1, nodes);
        }
        break;
    default: FUZZ_CHECK(!"unknown node type");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The input is not NUL-terminated: a copy of exactly `size` bytes lets ASan catch any read past it. */
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);

    ec_json_doc *doc = NULL;
    ec_status s = ec_json_parse(text, size, NULL, "fuzz input", &doc);
    if (s == EC_OK) {
        FUZZ_CHECK(doc != NULL);
        size_t nodes = 0;
        walk(ec_json_root(doc), 0, &nodes);
        FUZZ_CHECK(nodes <= ec_json_default_limits.max_nodes);
        ec_json_free(doc);
    } else {
        FUZZ_CHECK(doc == NULL);
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_FORMAT || s == EC_ERR_OOM);
    }

    /* Tight limits reach the depth, node-count and size refusals with small inputs. */
    ec_json_limits tight = {3, 24, size > 4 ? size - 4 : size};
    s = ec_json_parse(text, size, &tight, "fuzz input (tight limits)", &doc);
    if (s == EC_OK) {
        size_t nodes = 0;
        walk(ec_json_root(doc), 0, &nodes);
        FUZZ_CHECK(nodes <= tight.max_nodes);
        ec_json_free(doc);
    } else {
        fuzz_check_error(s);
    }

    /* ec_json_printable takes arbitrary bytes (names from files) and any capacity. */
    char small[16], big[200];
    size_t n = ec_json_printable(small, sizeof small, text, size);
    FUZZ_CHECK(n < sizeof small && small[n] == 0 && fuzz_valid_utf8(small, n));
    n = ec_json_printable(big, sizeof big, text, size);
    FUZZ_CHECK(n < sizeof big && big[n] == 0 && fuzz_valid_utf8(big, n));
    free(text);
    return 0;
}
