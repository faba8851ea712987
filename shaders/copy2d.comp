#version 450
// dst[dst_off + r*dst_stride + c] = src[src_off + r*src_stride + c] for a rows x cols block: concat on
// the channel axis, appending to the KV cache, and slicing rows or columns out of a tensor.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer S { float src[]; };
layout(std430, binding = 1) buffer Dd { float dst[]; };

layout(push_constant) uniform Push { ec_copy2d_push p; };

void main()
{
    uint n = p.rows * p.cols;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint r = i / p.cols, c = i % p.cols;
        dst[p.dst_off + r * p.dst_stride + c] = src[p.src_off + r * p.src_stride + c];
    }
}
