/* libFuzzer harness for the sharded-checkpoint reader of csrc/io/safetensors.c: model.safetensors.index.json plus up to
 * three shards. The input is the index followed by the shards, each part introduced by the separator below; the
 * shards are written as s1.safetensors, s2.safetensors and s3.safetensors (what the seed indexes name), and the
 * directory is opened as a checkpoint. */
#include <unistd.h>

#include "st_check.h"

static const char SEPARATOR[] = "\n==SHARD==\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"model.safetensors.index.json", "s1.safetensors", "s2.safetensors",
                                        "s3.safetensors"};
    const char *dir = fuzz_workdir();
    const size_t sep = sizeof SEPARATOR - 1;
    const uint8_t *p = data, *end = data + size;
    int present = 1; /* the index always exists; a shard exists when a separator introduced it */
    for (int part = 0; part < 4; part++) {
        const uint8_t *next = NULL;
        for (const uint8_t *q = p; part < 3 && q + sep <= end; q++)
            if (memcmp(q, SEPARATOR, sep) == 0) { next = q; break; }
        const uint8_t *stop = next ? next : end;
        if (present) fuzz_write_file(dir, names[part], p, (size_t)(stop - p));
        else { /* a missing shard: the index may still name it */
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, names[part]);
            unlink(path);
        }
        present = next != NULL;
        p = next ? next + sep : end;
    }
    ec_st_file *f = NULL;
    ec_status s = ec_st_open(dir, &f);
    if (s == EC_OK) {
        FUZZ_CHECK(f != NULL);
        fuzz_check_collection(f);
        ec_st_close(f);
    } else {
        FUZZ_CHECK(f == NULL);
        fuzz_check_error(s);
        FUZZ_CHECK(s == EC_ERR_FORMAT || s == EC_ERR_OOM);
    }
    return 0;
}
