/* Force-included (-include) into csrc/io/safetensors.c for the fuzz harnesses only.
 *
 * AddressSanitizer cannot see past the end of a file mapping: a read just beyond the mapped bytes lands
 * in the rest of the page (zeros) and goes unnoticed. Here mmap() copies the file into a heap block of
 * exactly the mapped length, so every byte the reader or the harness touches beyond it is a reported
 * heap-buffer-overflow, and munmap() frees that block, so a use after close is reported too. */
#ifndef EC_FUZZ_MMAP_SHIM_H
#define EC_FUZZ_MMAP_SHIM_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/mman.h>

void *ec_fuzz_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
int ec_fuzz_munmap(void *addr, size_t length);

#define mmap ec_fuzz_mmap
#define munmap ec_fuzz_munmap

#endif
