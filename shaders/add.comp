#version 450
// out[i] = a[i] + alpha * b[i % nb]: residual adds, position embeddings broadcast over views, and
// running means (alpha = 1/n) of the vision tower's hidden states.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer A { float a[]; };
layout(std430, binding = 1) readonly buffer Bb { float b[]; };
layout(std430, binding = 2) buffer O { float o[]; };

layout(push_constant) uniform Push { ec_add_push p; };

void main()
{
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride)
        o[p.o_off + i] = a[p.a_off + i] + p.alpha * b[p.b_off + (p.b_start + i) % p.nb];
}
