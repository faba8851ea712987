// Shared by every kernel. Specialization constant 0 is the workgroup width (the device's subgroup
// size unless a kernel says otherwise); 1 is the weight dtype of the kernel's texel-buffer operand.
// Each kernel's push constants and own specialization constants are in kernel_params.h (shared with the C code).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_ballot : require
#extension GL_KHR_shader_subgroup_shuffle : require
// Texel buffers are declared as utextureBuffer (no sampler): a usamplerBuffer compiles to a sampled image of Dim
// Buffer, which newer SPIR-V validation (Mesa 25's lavapipe, current drivers) rejects.
#extension GL_EXT_samplerless_texture_functions : require
#include "kernel_params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint WTYPE = 0;
// Set at pipeline creation (csrc/vk/vk_context.c) when the workgroup is known to be one subgroup (CPU devices,
// whose subgroup size is fixed). It makes the shared-memory half of the reductions below dead code: llvmpipe
// runs a branch on a run-time value both ways and compiles a shader that contains a barrier as a coroutine,
// which made every mat-vec row's sum cost about a microsecond.
layout(constant_id = 8) const bool ONE_SUBGROUP = false;
const uint W_F32 = EC_W_F32, W_F16 = EC_W_F16, W_BF16 = EC_W_BF16;

// Weights (and any read-only operand) are read through a uniform texel buffer of RGBA32UI: one
// 16-byte fetch gives 4 f32 or 8 f16/bf16 values. It reaches 2 GiB, past maxStorageBufferRange.
uint per_texel() { return WTYPE == W_F32 ? 4u : 8u; }

vec2 unpack_pair_as(uint u, uint type)
{
    if (type == W_F16) return unpackHalf2x16(u);
    return vec2(uintBitsToFloat(u << 16), uintBitsToFloat(u & 0xffff0000u)); // bf16: the high half of an f32
}
vec2 unpack_pair(uint u) { return unpack_pair_as(u, WTYPE); }

// Elements 0..7 (16-bit) or 0..3 (f32, hi unused) of one texel.
void unpack_texel(uvec4 t, out vec4 lo, out vec4 hi)
{
    if (WTYPE == W_F32) {
        lo = uintBitsToFloat(t);
        hi = vec4(0.0);
    } else {
        lo = vec4(unpack_pair(t.x), unpack_pair(t.y));
        hi = vec4(unpack_pair(t.z), unpack_pair(t.w));
    }
}

// Element e of a texel buffer holding WTYPE values (the general path for unaligned rows).
float fetch_elem_as(utextureBuffer buf, uint e, uint type)
{
    if (type == W_F32) return uintBitsToFloat(texelFetch(buf, int(e >> 2))[e & 3u]);
    uint u = texelFetch(buf, int(e >> 3))[(e >> 1) & 3u];
    return unpack_pair_as(u, type)[e & 1u];
}
float fetch_elem(utextureBuffer buf, uint e) { return fetch_elem_as(buf, e, WTYPE); }

// f32 element e of a texel buffer of f32 values (activations read as texels).
float fetch_f32(utextureBuffer buf, uint e) { return uintBitsToFloat(texelFetch(buf, int(e >> 2))[e & 3u]); }

// Sum of v over the workgroup. One subgroup per workgroup is the fast case (lavapipe: 8 lanes);
// devices whose workgroup spans several subgroups combine their partial sums in shared memory.
shared float wg_partial[64];
float workgroup_sum(float v)
{
    float s = subgroupAdd(v);
    if (ONE_SUBGROUP || gl_NumSubgroups == 1) return s;
    barrier();
    if (subgroupElect()) wg_partial[gl_SubgroupID] = s;
    barrier();
    float total = 0.0;
    for (uint i = 0; i < gl_NumSubgroups; i++) total += wg_partial[i];
    barrier();
    return total;
}

float workgroup_max(float v)
{
    float s = subgroupMax(v);
    if (ONE_SUBGROUP || gl_NumSubgroups == 1) return s;
    barrier();
    if (subgroupElect()) wg_partial[gl_SubgroupID] = s;
    barrier();
    float m = wg_partial[0];
    for (uint i = 1; i < gl_NumSubgroups; i++) m = max(m, wg_partial[i]);
    barrier();
    return m;
}
