/* Checks shared by the two safetensors harnesses: after a successful open, every promise of safetensors.h about the
 * collection must hold, and every tensor's bytes must be readable (the mmap shim makes them heap memory, so ASan
 * reports any tensor whose data pointer or size reaches past its file). */
#ifndef EC_FUZZ_ST_CHECK_H
#define EC_FUZZ_ST_CHECK_H

#include "common.h"
#include "io/safetensors.h"

static volatile uint8_t fuzz_sink;

static inline void fuzz_check_collection(const ec_st_file *f)
{
    size_t n = ec_st_count(f);
    for (size_t i = 0; i < n; i++) {
        ec_st_tensor t;
        ec_st_at(f, i, &t);
        FUZZ_CHECK(t.name && strcmp(t.name, ec_st_name(f, i)) == 0);
        FUZZ_CHECK(i == 0 || strcmp(ec_st_name(f, i - 1), t.name) < 0); /* sorted, no duplicates */
        FUZZ_CHECK(ec_st_index(f, t.name) == (ptrdiff_t)i);
        ec_st_tensor again;
        FUZZ_CHECK(ec_st_find(f, t.name, &again) == EC_OK && again.data == t.data && again.nbytes == t.nbytes);
        FUZZ_CHECK((unsigned)t.dtype < EC_ST_DTYPE_COUNT && t.ndim >= 0);
        FUZZ_CHECK((t.ndim == 0) == (t.shape == NULL));
        uint64_t numel = 1;
        for (int d = 0; d < t.ndim; d++) {
            FUZZ_CHECK(t.shape[d] >= 0);
            FUZZ_CHECK(t.shape[d] == 0 || numel <= UINT64_MAX / (uint64_t)t.shape[d]);
            numel *= (uint64_t)t.shape[d];
        }
        FUZZ_CHECK(t.numel >= 0 && (uint64_t)t.numel == numel);
        unsigned bits = ec_st_dtype_bits(t.dtype);
        FUZZ_CHECK(bits > 0 && numel <= UINT64_MAX / bits && numel * bits % 8 == 0 && numel * bits / 8 == t.nbytes);
        FUZZ_CHECK(t.file && t.file[0]);
        /* Touch the first and last byte and one in between: enough for ASan to see an out-of-bounds span. */
        if (t.nbytes) {
            const uint8_t *p = t.data;
            fuzz_sink ^= p[0] ^ p[t.nbytes / 2] ^ p[t.nbytes - 1];
        }
        if (t.dtype != EC_ST_F32 && t.dtype != EC_ST_F16 && t.dtype != EC_ST_BF16) {
            ec_status s = ec_st_unsupported(&t, "fuzzing", "F32, F16 and BF16");
            fuzz_check_error(s);
        }
    }
    FUZZ_CHECK(ec_st_name(f, n) == NULL);
    ec_st_tensor none;
    if (ec_st_index(f, "") < 0) fuzz_check_error(ec_st_find(f, "", &none));
    size_t nm = ec_st_metadata_count(f);
    for (size_t i = 0; i < nm; i++) {
        const char *key, *value;
        ec_st_metadata_at(f, i, &key, &value);
        FUZZ_CHECK(key && value);
        if (i > 0) {
            const char *prev_key, *prev_value;
            ec_st_metadata_at(f, i - 1, &prev_key, &prev_value);
            FUZZ_CHECK(strcmp(prev_key, key) < 0); /* sorted, one entry per key */
        }
        FUZZ_CHECK(ec_st_metadata_get(f, key) == value);
    }
}

#endif
