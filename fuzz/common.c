#include "common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every harness halts on the first UBSan report (libFuzzer then saves the input as a crash), except for the
 * reports ubsan.supp lists, which are in code eyecare does not own and explained there. Built in, so that running a
 * harness by hand behaves like fuzz/run.sh. */
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1:suppressions=" EC_FUZZ_DIR "/ubsan.supp";
}

/* Fresh heap blocks are filled with a non-zero byte (ASan fills only the first 4 KiB by default), so that code reading
 * memory it never wrote computes wild indices and offsets that ASan and UBSan see, instead of the benign zeros of
 * fresh pages: a cheap stand-in for MemorySanitizer, which would need every library rebuilt. */
const char *__asan_default_options(void) { return "malloc_fill_byte=255:max_malloc_fill_size=268435456"; }

static char workdir[256];

static void remove_workdir(void)
{
    char cmd[300];
    /* Only the directory mkdtemp made for this process (no shell metacharacters in it). */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", workdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", workdir);
}

const char *fuzz_workdir(void)
{
    if (workdir[0]) return workdir;
    struct stat st;
    /* The run script names a directory it cleans up itself: a crashing input ends the process before atexit. */
    const char *base = getenv("EC_FUZZ_TMP") ? getenv("EC_FUZZ_TMP")
                       : stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                           ? "/dev/shm"
                           : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(workdir, sizeof workdir, "%s/eyecare-fuzz-XXXXXX", base);
    if (!mkdtemp(workdir)) {
        perror("mkdtemp");
        abort();
    }
    atexit(remove_workdir);
    return workdir;
}

void fuzz_write_file(const char *dir, const char *name, const uint8_t *data, size_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            perror(path);
            abort();
        }
        done += (size_t)n;
    }
    close(fd);
}
