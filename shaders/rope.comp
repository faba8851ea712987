#version 450
// Rotary embedding, rotate-half form, in place on the heads of x (rows of T tokens, each n_heads x
// head_dim, starting at column x_off of a row of row_stride floats: q and k inside a fused qkv).
// The cos/sin table [T, rot_dim] (cos in the first half, sin in the second) is computed on the host
// exactly as transformers does (f32 angles, LongRoPE factors and attention scale applied), so the
// device needs no transcendental of a large argument.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer CS { float cs[]; };

layout(push_constant) uniform Push { ec_rope_push p; };

void main()
{
    uint half_rot = p.rot_dim / 2;
    uint n = p.tokens * p.n_heads * half_rot;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint d = i % half_rot, h = (i / half_rot) % p.n_heads, t = i / (half_rot * p.n_heads);
        uint base = p.x_off + t * p.row_stride + h * p.head_dim;
        float c = cs[t * p.rot_dim + d], s = cs[t * p.rot_dim + half_rot + d];
        float x1 = x[base + d], x2 = x[base + d + half_rot];
        x[base + d] = x1 * c - x2 * s;
        x[base + d + half_rot] = x2 * c + x1 * s;
    }
}
