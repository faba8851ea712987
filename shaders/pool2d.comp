#version 450
// 2-D adaptive average pooling of token grids, as torch's adaptive_avg_pool2d: x is [B, H*W, C] (a
// grid of H x W tokens per item, raster order), y is [B, OH*OW, C]; output cell (i, j) averages rows
// floor(i*H/OH) .. ceil((i+1)*H/OH) and the same for columns.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_pool2d_push p; };

void main()
{
    uint n = p.B * p.OH * p.OW * p.C;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint idx = gl_GlobalInvocationID.x; idx < n; idx += stride) {
        uint c = idx % p.C, cell = (idx / p.C) % (p.OH * p.OW), b = idx / (p.C * p.OH * p.OW);
        uint i = cell / p.OW, j = cell % p.OW;
        uint h0 = (i * p.H) / p.OH, h1 = ((i + 1) * p.H + p.OH - 1) / p.OH;
        uint w0 = (j * p.W) / p.OW, w1 = ((j + 1) * p.W + p.OW - 1) / p.OW;
        float s = 0.0;
        for (uint hh = h0; hh < h1; hh++)
            for (uint ww = w0; ww < w1; ww++) s += x[((b * p.H + hh) * p.W + ww) * p.C + c];
        y[idx] = s / float((h1 - h0) * (w1 - w0));
    }
}
