/* The table of compute kernels: one entry per shader in shaders/, defined in ops.c. */
#ifndef EC_KERNELS_H
#define EC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;          /* the shader file's name without .comp */
    const uint32_t *spirv;     /* compiled at build time and embedded (setup.py) */
    size_t spirv_bytes;
    const char *bindings;      /* one char per binding 0..n-1: 'S' storage buffer, 'T' uniform texel buffer */
    uint32_t push_size;        /* bytes of push constants */
} ec_kernel_def;

extern const ec_kernel_def ec_kernels[];
extern const int ec_kernel_count;

#endif
