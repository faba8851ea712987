/* libFuzzer harness for csrc/io/safetensors.c on a single .safetensors file: the 8-byte header length, the JSON header
 * (through csrc/io/json.c) and every tensor entry. The input is the whole file. safetensors.c is compiled with the
 * heap-backed mmap of mmap_shim.h, so a tensor that reaches past the end of its file is an ASan report. */
#include "st_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *dir = fuzz_workdir();
    fuzz_write_file(dir, "model.safetensors", data, size);
    char path[512];
    /* Every other input is opened through its directory, which also runs resolve_directory. */
    snprintf(path, sizeof path, size % 2 ? "%s/model.safetensors" : "%s", dir);
    ec_st_file *f = NULL;
    ec_status s = ec_st_open(path, &f);
    if (s == EC_OK) {
        FUZZ_CHECK(f != NULL);
        fuzz_check_collection(f);
        ec_st_close(f);
    } else {
        FUZZ_CHECK(f == NULL);
        fuzz_check_error(s);
        /* Inside a readable file every fault is the file's: a format error (or host memory). */
        FUZZ_CHECK(s == EC_ERR_FORMAT || s == EC_ERR_OOM);
    }
    return 0;
}
