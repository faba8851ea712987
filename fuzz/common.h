/* Helpers shared by the fuzz harnesses: invariant checks that turn a silent contract violation into a crash
 * libFuzzer reports, and temporary files for the readers that take paths. */
#ifndef EC_FUZZ_COMMON_H
#define EC_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* A broken promise of the code under test: print it and abort, which libFuzzer records as a crash. */
#define FUZZ_CHECK(cond)                                                                             \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: invariant failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ec_last_error());                                                                \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)

/* Whether s[0..len) is well-formed UTF-8 (RFC 3629: shortest forms, no surrogates, at most U+10FFFF). */
static inline int fuzz_valid_utf8(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text, *end = s + len;
    while (s < end) {
        unsigned char c = *s;
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c < 0x80) { s++; continue; }
        if (c >= 0xC2 && c <= 0xDF) n = 2;
        else if (c == 0xE0) { n = 3; lo = 0xA0; }
        else if (c == 0xED) { n = 3; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 3;
        else if (c == 0xF0) { n = 4; lo = 0x90; }
        else if (c == 0xF4) { n = 4; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) n = 4;
        else return 0;
        if ((size_t)(end - s) < n || s[1] < lo || s[1] > hi) return 0;
        for (size_t i = 2; i < n; i++)
            if ((s[i] & 0xC0) != 0x80) return 0;
        s += n;
    }
    return 1;
}

/* Every failure must leave a message that Python can show: non-empty, NUL-terminated within errors.c's
 * 1024-byte buffer. (A message cut inside a UTF-8 character is tolerated: ec_py_raise decodes leniently.) */
static inline void fuzz_check_error(ec_status s)
{
    FUZZ_CHECK(s != EC_OK);
    FUZZ_CHECK(ec_last_status() == s);
    const char *m = ec_last_error();
    size_t n = strnlen(m, 1024);
    FUZZ_CHECK(n > 0 && n < 1024);
}

/* A directory of its own for this fuzzing process, on tmpfs where there is one (writing a file per input to
 * a disk-backed filesystem would make the disk, not the code, the bottleneck). */
const char *fuzz_workdir(void);
/* Writes data to dir/name, replacing what was there; aborts if the file system fails (not the input's fault). */
void fuzz_write_file(const char *dir, const char *name, const uint8_t *data, size_t size);

#endif
