#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias[N]) (+ y): the GEMM of prefill and vision with W block-quantized
// (int8/int4, shaders/quant.glsl). As matmul.comp, each invocation computes TM rows x TN columns; per
// block it fetches its TN columns' packed integers and scales once, then takes them apart eight
// weights at a time into scaled f32 values (exact), so no dequantized copy of W exists anywhere.
// x, too, is read through a texel buffer (why: matmul.comp).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "quant.glsl"

EC_MATMUL_Q_SPEC(EC_SPEC_DECLARE)

layout(binding = 0) uniform utextureBuffer X;  // f32 values
layout(binding = 1) uniform utextureBuffer W;
layout(binding = 2) uniform utextureBuffer S;
layout(binding = 3) uniform utextureBuffer B;
layout(std430, binding = 4) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_matmul_q_push p; };

void main()
{
    uint m0 = gl_WorkGroupID.y * TM;
    uint n0 = (gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationID.x) * TN;
    uint blocks = q_blocks(p.K);
    float acc[TM][TN];
    for (uint i = 0; i < TM; i++)
        for (uint j = 0; j < TN; j++) acc[i][j] = 0.0;

    uint rows[TM];
    for (uint i = 0; i < TM; i++) rows[i] = p.x_off + min(m0 + i, p.M - 1u) * p.K;
    uint cols[TN];
    for (uint j = 0; j < TN; j++) cols[j] = min(n0 + j, p.N - 1u);
    // Whole blocks and one subgroup of at least TM lanes: lane l fetches row l of the tile, eight values
    // at a time, and the subgroup shares them by broadcast (as in matmul.comp).
    bool broadcast = p.aligned != 0 && gl_SubgroupSize >= TM && gl_NumSubgroups == 1;
    uint my_row = p.x_off + min(m0 + min(gl_SubgroupInvocationID, TM - 1u), p.M - 1u) * p.K;

    for (uint b = 0; b < blocks; b++) {
        uvec4 q[TN][2];
        float scale[TN];
        for (uint j = 0; j < TN; j++) {
            q_fetch_block(W, p.w_off, cols[j], b, blocks, q[j]);
            scale[j] = q_scale(S, p.s_off + cols[j] * blocks + b);
        }
        for (uint g = 0; g < 4; g++) {
            uint k0 = b * QBLOCK + g * 8u;
            vec4 wlo[TN], whi[TN];
            for (uint j = 0; j < TN; j++) {
                q_group(q[j], g, wlo[j], whi[j]);
                wlo[j] *= scale[j];
                whi[j] *= scale[j];
            }
            vec4 xa = vec4(0.0), xb = vec4(0.0);
            if (broadcast) {
                xa = uintBitsToFloat(texelFetch(X, int((my_row + k0) / 4u)));
                xb = uintBitsToFloat(texelFetch(X, int((my_row + k0) / 4u + 1u)));
            }
            for (uint i = 0; i < TM; i++) {
                if (broadcast) {
                    for (uint e = 0; e < 4; e++) {
                        float xe = subgroupShuffle(xa[e], i);
                        for (uint j = 0; j < TN; j++) acc[i][j] += xe * wlo[j][e];
                    }
                    for (uint e = 0; e < 4; e++) {
                        float xe = subgroupShuffle(xb[e], i);
                        for (uint j = 0; j < TN; j++) acc[i][j] += xe * whi[j][e];
                    }
                } else {
                    for (uint e = 0; e < 8; e++) {
                        uint k = k0 + e;
                        float xe = k < p.K ? fetch_f32(X, rows[i] + k) : 0.0;
                        for (uint j = 0; j < TN; j++) acc[i][j] += xe * (e < 4 ? wlo[j][e] : whi[j][e - 4]);
                    }
                }
            }
        }
    }

    for (uint j = 0; j < TN; j++) {
        uint n = n0 + j;
        if (n >= p.N) break;
        float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n_first + n, BTYPE) : 0.0;
        for (uint i = 0; i < TM; i++) {
            uint m = m0 + i;
            if (m >= p.M) break;
            uint o = p.y_off + m * p.y_stride + p.n_first + n;
            float v = acc[i][j] + bias;
            y[o] = p.accumulate != 0 ? y[o] + v : v;
        }
    }
}
