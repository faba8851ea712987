#version 450
// LayerNorm (MODE 0: (x - mean) / sqrt(var + eps) * w + b) and RMSNorm (MODE 1: x / sqrt(mean(x^2) +
// eps) * w), one workgroup per row, in f32 as transformers computes them.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_NORM_SPEC(EC_SPEC_DECLARE)

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) uniform utextureBuffer Wt;
layout(binding = 2) uniform utextureBuffer Bt;
layout(std430, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_norm_push p; };

void main()
{
    uint lane = gl_LocalInvocationID.x, width = gl_WorkGroupSize.x;
    for (uint row = gl_WorkGroupID.x; row < p.rows; row += gl_NumWorkGroups.x) {
        uint xr = p.x_off + row * p.cols, yr = p.y_off + row * p.cols;
        float mean = 0.0;
        if (MODE == 0) {
            float s = 0.0;
            for (uint c = lane; c < p.cols; c += width) s += x[xr + c];
            mean = workgroup_sum(s) / float(p.cols);
        }
        float ss = 0.0;
        for (uint c = lane; c < p.cols; c += width) { float d = x[xr + c] - mean; ss += d * d; }
        float inv = inversesqrt(workgroup_sum(ss) / float(p.cols) + p.eps);
        for (uint c = lane; c < p.cols; c += width) {
            float v = (x[xr + c] - mean) * inv * fetch_elem(Wt, c);
            if (p.has_bias != 0) v += fetch_elem(Bt, c);
            y[yr + c] = v;
        }
    }
}
