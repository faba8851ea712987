#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y) for a few rows of x (decode), W block-quantized (int8/int4,
// shaders/quant.glsl). As matvec.comp, memory-bound: a workgroup takes ROWS rows of W and lane l takes
// blocks l, l + width, ... of every row, so the 32 x values of a block are loaded once and reused for
// ROWS rows. Each block's dot product is taken with the integers and scaled once: one multiply per
// block instead of one per weight (lavapipe is bound by instructions here, not by bytes).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"

EC_MATVEC_Q_SPEC(EC_SPEC_DECLARE)

layout(binding = 0) uniform utextureBuffer X;
layout(binding = 1) uniform utextureBuffer W;
layout(binding = 2) uniform utextureBuffer S;
layout(binding = 3) uniform utextureBuffer B;
layout(std430, binding = 4) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_matmul_q_push p; };

// The 32 x values of block b of vector m (zero past K).
void load_x(uint m, uint b, out vec4 xv[8])
{
    uint first = p.x_off + m * p.K + b * QBLOCK;
    if (p.aligned != 0) {
        // Rows of x start on a texel: K is a multiple of 32, and x_off of 4.
        for (uint i = 0; i < 8; i++) xv[i] = uintBitsToFloat(texelFetch(X, int(first / 4u + i)));
    } else {
        for (uint i = 0; i < 8; i++) {
            vec4 v;
            for (uint e = 0; e < 4; e++) {
                uint k = b * QBLOCK + i * 4u + e;
                v[e] = k < p.K ? fetch_f32(X, first + i * 4u + e) : 0.0;
            }
            xv[i] = v;
        }
    }
}

void main()
{
    uint lane = gl_LocalInvocationID.x;
    uint width = gl_WorkGroupSize.x;
    uint n0 = gl_WorkGroupID.x * ROWS;
    uint blocks = q_blocks(p.K);
    float acc[ROWS][NM];
    for (uint r = 0; r < ROWS; r++)
        for (uint m = 0; m < NM; m++) acc[r][m] = 0.0;

    for (uint b = lane; b < blocks; b += width) {
        vec4 xv[NM][8];
        for (uint m = 0; m < NM; m++) load_x(m, b, xv[m]);
        for (uint r = 0; r < ROWS; r++) {
            uint n = min(n0 + r, p.N - 1u);
            uvec4 q[2];
            q_fetch_block(W, p.w_off, n, b, blocks, q);
            float scale = q_scale(S, p.s_off + n * blocks + b);
            float dots[NM];
            for (uint m = 0; m < NM; m++) dots[m] = 0.0;
            for (uint g = 0; g < 4; g++) {
                vec4 lo, hi;
                q_group(q, g, lo, hi);
                for (uint m = 0; m < NM; m++) dots[m] += dot(xv[m][2 * g], lo) + dot(xv[m][2 * g + 1], hi);
            }
            for (uint m = 0; m < NM; m++) acc[r][m] += scale * dots[m];
        }
    }

    for (uint r = 0; r < ROWS; r++) {
        uint n = n0 + r;
        if (n >= p.N) break;
        float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n_first + n, BTYPE) : 0.0;
        for (uint m = 0; m < NM; m++) {
            float s = workgroup_sum(acc[r][m]);
            if (lane == 0) {
                uint o = p.y_off + m * p.y_stride + p.n_first + n;
                y[o] = p.accumulate != 0 ? y[o] + s + bias : s + bias;
            }
        }
    }
}
