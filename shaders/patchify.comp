#version 450
// im2col for the vision tower's patch embedding (a P x P convolution with stride P): pixels
// [B, 3, S, S] become rows [B * G * G, 3 * P * P] (G = floor(S / P)) in the order of the conv weight
// (channel, kernel row, kernel column), so the convolution is one matmul.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_patchify_push p; };

void main()
{
    uint row_len = p.C * p.P * p.P;
    uint n = p.B * p.G * p.G * row_len;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint k = i % row_len, pidx = i / row_len;
        uint b = pidx / (p.G * p.G), gy = (pidx / p.G) % p.G, gx = pidx % p.G;
        uint c = k / (p.P * p.P), ky = (k / p.P) % p.P, kx = k % p.P;
        y[i] = x[((b * p.C + c) * p.S + gy * p.P + ky) * p.S + gx * p.P + kx];
    }
}
