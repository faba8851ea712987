#version 450
// Row-wise softmax(scale * x), numerically stable (max subtracted), one workgroup per row.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_softmax_push p; };

void main()
{
    uint lane = gl_LocalInvocationID.x, width = gl_WorkGroupSize.x;
    for (uint row = gl_WorkGroupID.x; row < p.rows; row += gl_NumWorkGroups.x) {
        uint xr = p.x_off + row * p.cols, yr = p.y_off + row * p.cols;
        float m = -3.402823466e38;
        for (uint c = lane; c < p.cols; c += width) m = max(m, p.scale * x[xr + c]);
        m = workgroup_max(m);
        float s = 0.0;
        for (uint c = lane; c < p.cols; c += width) s += exp(p.scale * x[xr + c] - m);
        float inv = 1.0 / workgroup_sum(s);
        for (uint c = lane; c < p.cols; c += width) y[yr + c] = exp(p.scale * x[xr + c] - m) * inv;
    }
}
