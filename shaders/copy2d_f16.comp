#version 450
// copy2d into an f16 tensor: dst (f16) block = src (f32) block, rounded to f16. The KV cache append
// when the cache is f16. Each invocation writes one 32-bit word (two f16 values), so dst_off,
// dst_stride and cols are even (counted in f16 values) and no two invocations share a word.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer S { float src[]; };
layout(std430, binding = 1) buffer Dd { uint dst[]; };

layout(push_constant) uniform Push { ec_copy2d_push p; };

void main()
{
    uint pairs = p.cols / 2, n = p.rows * pairs;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint r = i / pairs, c = 2 * (i % pairs);
        uint s = p.src_off + r * p.src_stride + c;
        dst[(p.dst_off + r * p.dst_stride + c) / 2] = packHalf2x16(vec2(src[s], src[s + 1]));
    }
}
