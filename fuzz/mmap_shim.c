/* The heap-backed mmap/munmap that fuzz/mmap_shim.h substitutes in csrc/io/safetensors.c (see there). */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

void *ec_fuzz_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    (void)addr; (void)prot; (void)flags;
    if (length == 0) { errno = EINVAL; return MAP_FAILED; } /* as the kernel does */
    unsigned char *p = malloc(length);
    if (!p) { errno = ENOMEM; return MAP_FAILED; }
    size_t got = 0;
    while (got < length) {
        ssize_t n = pread(fd, p + got, length - got, offset + (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got < length) { free(p); errno = EIO; return MAP_FAILED; }
    return p;
}

int ec_fuzz_munmap(void *addr, size_t length)
{
    (void)length;
    free(addr);
    return 0;
}
