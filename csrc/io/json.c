/* strtod_l (locale-independent number conversion) is a GNU/BSD extension. */
#define _GNU_SOURCE
#include "io/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <locale.h>
#include <pthread.h>
#ifdef __APPLE__
#include <xlocale.h>
#endif

const ec_json_limits ec_json_default_limits = {64, (size_t)1 << 21, 100000000};

/* ------------------------------------------------------------------------------------------------
 * Arena: the document's nodes and strings, freed all at once. Chunks never move, so pointers into
 * them stay valid while the document grows. */

typedef struct chunk {
    struct chunk *next;
    size_t used, size;
    max_align_t data[]; /* aligned for any node type */
} chunk;

struct ec_json_doc {
    chunk *chunks;
    ec_json root;
};

enum { CHUNK_BYTES = 64 * 1024 };

static void *arena_alloc(ec_json_doc *doc, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    chunk *c = doc->chunks;
    if (!c || c->size - c->used < n) {
        size_t size = n > CHUNK_BYTES ? n : CHUNK_BYTES;
        c = malloc(sizeof *c + size);
        if (!c) return NULL;
        c->size = size;
        c->used = 0;
        /* A big one-off block goes behind the current chunk, so the current one keeps filling. */
        if (doc->chunks && size > CHUNK_BYTES) {
            c->next = doc->chunks->next;
            doc->chunks->next = c;
        } else {
            c->next = doc->chunks;
            doc->chunks = c;
        }
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void ec_json_free(ec_json_doc *doc)
{
    if (!doc) return;
    for (chunk *c = doc->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(doc);
}

/* ------------------------------------------------------------------------------------------------
 * Parser state. Items of the arrays and objects still open wait on one shared stack; when a
 * container closes, its items move into the arena as one contiguous block, so building the tree
 * costs O(1) amortized per value. */

typedef struct {
    const char *begin, *p, *end;
    const char *what;
    ec_json_limits limits;
    int depth;
    size_t nodes;
    ec_json_doc *doc;
    ec_json_member *stack;
    size_t top, cap;
    ec_status failed; /* set once: the first error wins */
} parser;

/* Reports a syntax error at the current position as "<what> is not valid JSON: <why> at byte N (line L,
 * column C)"; the position is only computed on failure. */
static ec_status syntax_error(parser *ps, const char *why)
{
    if (ps->failed) return ps->failed;
    size_t line = 1, column = 1;
    for (const char *q = ps->begin; q < ps->p; q++) {
        if (*q == '\n') { line++; column = 1; }
        else column++;
    }
    ps->failed = ec_fail(EC_ERR_FORMAT, "%s is not valid JSON: %s at byte %zu (line %zu, column %zu)", ps->what, why,
                         (size_t)(ps->p - ps->begin), line, column);
    return ps->failed;
}

static ec_status limit_error(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ec_status limit_error(parser *ps, const char *fmt, ...)
{
    if (ps->failed) return ps->failed;
    char why[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    ps->failed = ec_fail(EC_ERR_FORMAT, "%s is not accepted: %s", ps->what, why);
    return ps->failed;
}

static ec_status out_of_memory(parser *ps)
{
    if (!ps->failed) ps->failed = ec_fail(EC_ERR_OOM, "%s: out of host memory while parsing JSON", ps->what);
    return ps->failed;
}

static ec_status count_node(parser *ps)
{
    if (++ps->nodes > ps->limits.max_nodes)
        return limit_error(ps, "it has more than %zu JSON values", ps->limits.max_nodes);
    return EC_OK;
}

static void skip_space(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

/* "unexpected character 'x'" or, for bytes that would garble the message, "unexpected byte 0xNN". */
static ec_status unexpected(parser *ps, const char *expected)
{
    char why[160];
    if (ps->p >= ps->end) {
        snprintf(why, sizeof why, "the input ends where %s was expected", expected);
    } else {
        unsigned char c = (unsigned char)*ps->p;
        if (c >= 0x20 && c < 0x7f)
            snprintf(why, sizeof why, "unexpected character '%c' where %s was expected", c, expected);
        else
            snprintf(why, sizeof why, "unexpected byte 0x%02x where %s was expected", c, expected);
    }
    return syntax_error(ps, why);
}

static ec_status push_member(parser *ps, const ec_json_member *m)
{
    if (ps->top == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        ec_json_member *s = realloc(ps->stack, cap * sizeof *s);
        if (!s) return out_of_memory(ps);
        ps->stack = s;
        ps->cap = cap;
    }
    ps->stack[ps->top++] = *m;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Strings */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the four hex digits of a \u escape at p (bounds already checked by the caller). */
static int read_hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(p[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: shortest form, no surrogates, at most
 * U+10FFFF), or 0 if it is malformed or cut off by end. */
static size_t utf8_sequence(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    else if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) { n = 3; lo = 0xA0; }
    else if (c == 0xED) { n = 3; hi = 0x9F; }           /* excludes U+D800..U+DFFF */
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) { n = 4; lo = 0x90; }
    else if (c == 0xF4) { n = 4; hi = 0x8F; }           /* nothing above U+10FFFF */
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

static size_t escape_error(parser *ps, const char *why)
{
    syntax_error(ps, why);
    return 0;
}

/* Decodes the escape after a backslash at ps->p (which points at the backslash) into out; returns the
 * number of bytes written, or 0 after reporting an error. */
static size_t decode_escape(parser *ps, char *out)
{
    const char *e = ps->p + 1;
    if (e >= ps->end) return escape_error(ps, "the input ends inside an escape sequence");
    static const char plain[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
    const char *hit = *e ? strchr(plain, *e) : NULL;
    if (hit) { *out = decoded[hit - plain]; ps->p += 2; return 1; }
    if (*e != 'u') {
        ps->p = e;
        return escape_error(ps, "invalid escape sequence");
    }
    if (ps->end - e < 5 || read_hex4(e + 1) < 0) return escape_error(ps, "\\u must be followed by four hex digits");
    uint32_t cp = (uint32_t)read_hex4(e + 1);
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return escape_error(ps, "a \\u escape is a low surrogate without a high one before it");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        /* A high surrogate must be followed at once by \u and a low surrogate. */
        const char *n = e + 5;
        int low = (ps->end - n >= 6 && n[0] == '\\' && n[1] == 'u') ? read_hex4(n + 2) : -1;
        if (low < 0xDC00 || low > 0xDFFF)
            return escape_error(ps, "a \\u escape is a high surrogate without a low one after it");
        cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)low - 0xDC00);
        ps->p = n + 6;
    } else {
        ps->p = e + 5;
    }
    return put_utf8(out, cp);
}

/* Parses the string starting at the opening quote at ps->p into the arena. Decoding never makes a
 * string longer (each escape is at least as long as the UTF-8 it stands for), so the undecoded span
 * bounds the buffer. */
static ec_status parse_string(parser *ps, const char **out, size_t *out_len)
{
    const char *start = ps->p + 1, *close = start;
    while (close < ps->end && *close != '"') close += (*close == '\\') ? 2 : 1;
    if (close >= ps->end) { ps->p = start - 1; return syntax_error(ps, "a string is not closed"); }
    char *buf = arena_alloc(ps->doc, (size_t)(close - start) + 1);
    if (!buf) return out_of_memory(ps);
    size_t n = 0;
    ps->p = start;
    while (ps->p < close) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '\\') {
            size_t k = decode_escape(ps, buf + n);
            if (!k) return ps->failed;
            n += k;
        } else if (c < 0x20) {
            return syntax_error(ps, "a control character inside a string must be escaped");
        } else {
            size_t k = utf8_sequence((const unsigned char *)ps->p, (const unsigned char *)close);
            if (!k) return syntax_error(ps, "invalid UTF-8");
            memcpy(buf + n, ps->p, k);
            n += k;
            ps->p += k;
        }
    }
    buf[n] = 0;
    ps->p = close + 1;
    *out = buf;
    *out_len = n;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Numbers */

static int is_digit(const parser *ps, const char *q) { return q < ps->end && *q >= '0' && *q <= '9'; }

/* strtod honours the process locale's decimal point (Python code may set one with a comma), so
 * numbers are converted in the "C" locale, created once. */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void make_c_locale(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

static int to_double(const char *text, size_t len, double *out)
{
    char small[64], *buf = len < sizeof small ? small : malloc(len + 1);
    if (!buf) return -1;
    memcpy(buf, text, len);
    buf[len] = 0;
    pthread_once(&c_locale_once, make_c_locale);
    *out = c_locale ? strtod_l(buf, NULL, c_locale) : strtod(buf, NULL);
    if (buf != small) free(buf);
    return 0;
}

/* Integer digits accumulate as a negative number, so that INT64_MIN is reachable; returns 0 on
 * overflow. */
static int to_int64(const char *digits, const char *end, int negative, int64_t *out)
{
    int64_t v = 0;
    for (const char *q = digits; q < end; q++) {
        int d = *q - '0';
        if (v < (INT64_MIN + d) / 10) return 0;
        v = v * 10 - d;
    }
    if (!negative) {
        if (v == INT64_MIN) return 0;
        v = -v;
    }
    *out = v;
    return 1;
}

static ec_status parse_number(parser *ps, ec_json *v)
{
    const char *start = ps->p, *q = ps->p;
    int negative = 0;
    if (*q == '-') { negative = 1; q++; }
    const char *digits = q;
    if (!is_digit(ps, q)) { ps->p = q; return unexpected(ps, "a digit"); }
    if (*q == '0') {
        q++;
        if (is_digit(ps, q)) { ps->p = q; return syntax_error(ps, "a number has a leading zero"); }
    } else {
        while (is_digit(ps, q)) q++;
    }
    const char *int_end = q;
    int fractional = 0;
    if (q < ps->end && *q == '.') {
        q++;
        if (!is_digit(ps, q)) { ps->p = q; return unexpected(ps, "a digit after the decimal point"); }
        while (is_digit(ps, q)) q++;
        fractional = 1;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (!is_digit(ps, q)) { ps->p = q; return unexpected(ps, "a digit in the exponent"); }
        while (is_digit(ps, q)) q++;
        fractional = 1;
    }
    ps->p = q;
    if (!fractional && to_int64(digits, int_end, negative, &v->u.integer)) {
        v->type = EC_JSON_INT;
        return EC_OK;
    }
    double d;
    if (to_double(start, (size_t)(q - start), &d) < 0) return out_of_memory(ps);
    if (!isfinite(d)) { ps->p = start; return syntax_error(ps, "a number is too large for a double"); }
    v->type = EC_JSON_NUMBER;
    v->u.number = d;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Arrays and objects */

static ec_status parse_value(parser *ps, ec_json *v);

static ec_status enter(parser *ps)
{
    if (++ps->depth > ps->limits.max_depth)
        return limit_error(ps, "arrays and objects nest deeper than %d levels", ps->limits.max_depth);
    ps->p++; /* the opening bracket */
    skip_space(ps);
    return EC_OK;
}

/* After an item: ',' continues (returns 1), the closing bracket ends (returns 0), anything else fails (-1). */
static int next_item(parser *ps, char close, const char *expected)
{
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == ',') { ps->p++; skip_space(ps); return 1; }
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return 0; }
    unexpected(ps, expected);
    return -1;
}

static ec_status parse_array(parser *ps, ec_json *v)
{
    EC_TRY(enter(ps));
    size_t base = ps->top;
    int more = 1;
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; more = 0; }
    while (more) {
        ec_json_member item = {0};
        EC_TRY(parse_value(ps, &item.value));
        EC_TRY(push_member(ps, &item));
        more = next_item(ps, ']', "',' or ']'");
        if (more < 0) return ps->failed;
    }
    size_t n = ps->top - base;
    ec_json *items = arena_alloc(ps->doc, n * sizeof *items + 1);
    if (!items) return out_of_memory(ps);
    for (size_t i = 0; i < n; i++) items[i] = ps->stack[base + i].value;
    ps->top = base;
    ps->depth--;
    v->type = EC_JSON_ARRAY;
    v->len = n;
    v->u.items = items;
    return EC_OK;
}

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static int member_ptr_cmp(const void *x, const void *y)
{
    const ec_json_member *a = *(const ec_json_member *const *)x, *b = *(const ec_json_member *const *)y;
    int c = key_cmp(a->key, a->key_len, b->key, b->key_len);
    /* Ties (duplicates, rejected right after) fall back to document order to keep the sort total. */
    return c ? c : (a > b) - (a < b);
}

/* Sorts the members for ec_json_get and rejects duplicate keys, which a reader could otherwise
 * resolve differently from the writer (first or last wins). */
static ec_status index_members(parser *ps, ec_json *v, const char *object_start)
{
    const ec_json_member **sorted = arena_alloc(ps->doc, v->len * sizeof *sorted + 1);
    if (!sorted) return out_of_memory(ps);
    for (size_t i = 0; i < v->len; i++) sorted[i] = &v->u.members[i];
    qsort(sorted, v->len, sizeof *sorted, member_ptr_cmp);
    for (size_t i = 1; i < v->len; i++) {
        if (key_cmp(sorted[i - 1]->key, sorted[i - 1]->key_len, sorted[i]->key, sorted[i]->key_len) == 0) {
            char key[100], why[160];
            ec_json_printable(key, sizeof key, sorted[i]->key, sorted[i]->key_len);
            snprintf(why, sizeof why, "duplicate key \"%s\" in the object starting", key);
            ps->p = object_start;
            return syntax_error(ps, why);
        }
    }
    v->sorted = sorted;
    return EC_OK;
}

static ec_status parse_object(parser *ps, ec_json *v)
{
    const char *object_start = ps->p;
    EC_TRY(enter(ps));
    size_t base = ps->top;
    int more = 1;
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; more = 0; }
    while (more) {
        ec_json_member m = {0};
        if (ps->p >= ps->end || *ps->p != '"') return unexpected(ps, "a string key");
        EC_TRY(count_node(ps));
        EC_TRY(parse_string(ps, &m.key, &m.key_len));
        skip_space(ps);
        if (ps->p >= ps->end || *ps->p != ':') return unexpected(ps, "':' after an object key");
        ps->p++;
        skip_space(ps);
        EC_TRY(parse_value(ps, &m.value));
        EC_TRY(push_member(ps, &m));
        more = next_item(ps, '}', "',' or '}'");
        if (more < 0) return ps->failed;
    }
    size_t n = ps->top - base;
    ec_json_member *members = arena_alloc(ps->doc, n * sizeof *members + 1);
    if (!members) return out_of_memory(ps);
    if (n) memcpy(members, ps->stack + base, n * sizeof *members); /* the stack is NULL until first used */
    ps->top = base;
    ps->depth--;
    v->type = EC_JSON_OBJECT;
    v->len = n;
    v->u.members = members;
    return index_members(ps, v, object_start);
}

static int match_literal(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return 0;
    ps->p += n;
    return 1;
}

static ec_status parse_value(parser *ps, ec_json *v)
{
    memset(v, 0, sizeof *v);
    EC_TRY(count_node(ps));
    if (ps->p >= ps->end) return unexpected(ps, "a value");
    switch (*ps->p) {
    case '{': return parse_object(ps, v);
    case '[': return parse_array(ps, v);
    case '"':
        v->type = EC_JSON_STRING;
        return parse_string(ps, &v->u.string, &v->len);
    case 't': case 'f': case 'n':
        if (match_literal(ps, "true")) { v->type = EC_JSON_BOOL; v->u.boolean = 1; return EC_OK; }
        if (match_literal(ps, "false")) { v->type = EC_JSON_BOOL; return EC_OK; }
        if (match_literal(ps, "null")) { v->type = EC_JSON_NULL; return EC_OK; }
        return unexpected(ps, "a value");
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps, v);
        return unexpected(ps, "a value");
    }
}

/* ------------------------------------------------------------------------------------------------
 * Entry points */

ec_status ec_json_parse(const char *text, size_t len, const ec_json_limits *limits, const char *what,
                        ec_json_doc **out)
{
    *out = NULL;
    parser ps = {.begin = text, .p = text, .end = text + len, .what = what ? what : "the input",
                 .limits = limits ? *limits : ec_json_default_limits};
    if (len > ps.limits.max_bytes)
        return ec_fail(EC_ERR_FORMAT, "%s is not accepted: it is %zu bytes of JSON, over the limit of %zu", ps.what, len,
                       ps.limits.max_bytes);
    ps.doc = calloc(1, sizeof *ps.doc);
    if (!ps.doc) return out_of_memory(&ps);
    skip_space(&ps);
    ec_status s = parse_value(&ps, &ps.doc->root);
    if (s == EC_OK) {
        skip_space(&ps);
        if (ps.p < ps.end) s = unexpected(&ps, "the end of the input after the JSON value");
    }
    free(ps.stack);
    if (s != EC_OK) {
        ec_json_free(ps.doc);
        return s;
    }
    *out = ps.doc;
    return EC_OK;
}

const ec_json *ec_json_root(const ec_json_doc *doc) { return doc ? &doc->root : NULL; }

const char *ec_json_type_name(ec_json_type t)
{
    static const char *names[] = {"null", "boolean", "integer", "number", "string", "array", "object"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

const ec_json *ec_json_get_n(const ec_json *v, const char *key, size_t key_len)
{
    if (!v || v->type != EC_JSON_OBJECT) return NULL;
    size_t lo = 0, hi = v->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ec_json_member *m = v->sorted[mid];
        int c = key_cmp(m->key, m->key_len, key, key_len);
        if (c == 0) return &m->value;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const ec_json *ec_json_get(const ec_json *v, const char *key) { return key ? ec_json_get_n(v, key, strlen(key)) : NULL; }

size_t ec_json_count(const ec_json *v)
{
    return v && (v->type == EC_JSON_ARRAY || v->type == EC_JSON_OBJECT) ? v->len : 0;
}

const ec_json *ec_json_at(const ec_json *v, size_t i)
{
    if (i >= ec_json_count(v)) return NULL;
    return v->type == EC_JSON_ARRAY ? &v->u.items[i] : &v->u.members[i].value;
}

const char *ec_json_key_at(const ec_json *v, size_t i, size_t *len)
{
    if (!v || v->type != EC_JSON_OBJECT || i >= v->len) return NULL;
    if (len) *len = v->u.members[i].key_len;
    return v->u.members[i].key;
}

const char *ec_json_str(const ec_json *v, size_t *len)
{
    if (!v || v->type != EC_JSON_STRING) return NULL;
    if (len) *len = v->len;
    return v->u.string;
}

int ec_json_int(const ec_json *v, int64_t *out)
{
    if (!v || v->type != EC_JSON_INT) return 0;
    *out = v->u.integer;
    return 1;
}

int ec_json_number(const ec_json *v, double *out)
{
    if (v && v->type == EC_JSON_INT) { *out = (double)v->u.integer; return 1; }
    if (v && v->type == EC_JSON_NUMBER) { *out = v->u.number; return 1; }
    return 0;
}

int ec_json_bool(const ec_json *v, int *out)
{
    if (!v || v->type != EC_JSON_BOOL) return 0;
    *out = v->u.boolean;
    return 1;
}

int ec_json_is_null(const ec_json *v) { return v && v->type == EC_JSON_NULL; }

size_t ec_json_printable(char *dst, size_t cap, const char *src, size_t len)
{
    static const char ellipsis[] = "...";
    const unsigned char *p = (const unsigned char *)src, *end = p + len;
    size_t n = 0;
    if (cap < sizeof ellipsis + 4) { if (cap) dst[0] = 0; return 0; }
    /* Room is kept for the longest piece (\xNN or a 4-byte sequence) plus the ellipsis. */
    while (p < end && n + 4 + sizeof ellipsis <= cap) {
        size_t k = utf8_sequence(p, end);
        if (k == 1 && (*p < 0x20 || *p == 0x7f)) k = 0;
        if (k) {
            memcpy(dst + n, p, k);
            n += k;
            p += k;
        } else {
            n += (size_t)snprintf(dst + n, cap - n, "\\x%02x", *p++);
        }
    }
    if (p < end) {
        memcpy(dst + n, ellipsis, sizeof ellipsis - 1);
        n += sizeof ellipsis - 1;
    }
    dst[n] = 0;
    return n;
}
