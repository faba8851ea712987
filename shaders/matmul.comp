#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias[N]) (+ y when accumulating): the GEMM of prefill and vision.
// Register-blocked: each invocation computes TM rows x TN columns straight from memory. The rows of
// x are the same for every lane of a workgroup, so their loads are uniform (llvmpipe scalarizes
// per-lane addresses); W comes through the texel buffer, one fetch giving 4 or 8 weights.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_MATMUL_SPEC(EC_SPEC_DECLARE)

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) uniform utextureBuffer W;
layout(binding = 2) uniform utextureBuffer B;
layout(std430, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_matmul_push p; };

void main()
{
    uint m0 = gl_WorkGroupID.y * TM;
    uint n0 = (gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationID.x) * TN;
    float acc[TM][TN];
    for (uint i = 0; i < TM; i++)
        for (uint j = 0; j < TN; j++) acc[i][j] = 0.0;

    uint rows[TM];
    for (uint i = 0; i < TM; i++) rows[i] = p.x_off + min(m0 + i, p.M - 1) * p.K;
    uint cols[TN];
    for (uint j = 0; j < TN; j++) cols[j] = min(n0 + j, p.N - 1);
    uint w_texel = p.w_off / per_texel();  // whole texels when aligned (the C side starts pieces on texels)

    if (p.aligned != 0 && gl_SubgroupSize >= per_texel() && gl_NumSubgroups == 1) {
        // K is a multiple of the elements per texel: whole texels, no per-element indexing. Each lane
        // loads one x value per row per step (lane l: element l of the step) and the subgroup shares
        // them by broadcast: loads whose address varies per lane are llvmpipe's slowest operation, and
        // this makes one such load serve TN columns x 8 lanes.
        uint step = per_texel();
        uint texels_per_row = p.K / step;
        uint lane_k = gl_SubgroupInvocationID % step;
        for (uint t = 0; t < texels_per_row; t++) {
            vec4 wlo[TN], whi[TN];
            for (uint j = 0; j < TN; j++) unpack_texel(texelFetch(W, int(w_texel + cols[j] * texels_per_row + t)), wlo[j], whi[j]);
            uint k = t * step + lane_k;
            for (uint i = 0; i < TM; i++) {
                float xl = x[rows[i] + k];
                for (uint e = 0; e < 4; e++) {
                    float xe = subgroupBroadcast(xl, e);
                    for (uint j = 0; j < TN; j++) acc[i][j] += xe * wlo[j][e];
                }
                if (WTYPE != W_F32) {
                    for (uint e = 0; e < 4; e++) {
                        float xe = subgroupBroadcast(xl, e + 4);
                        for (uint j = 0; j < TN; j++) acc[i][j] += xe * whi[j][e];
                    }
                }
            }
        }
    } else if (p.aligned != 0) {
        uint step = per_texel();
        uint texels_per_row = p.K / step;
        for (uint t = 0; t < texels_per_row; t++) {
            vec4 wlo[TN], whi[TN];
            for (uint j = 0; j < TN; j++) unpack_texel(texelFetch(W, int(w_texel + cols[j] * texels_per_row + t)), wlo[j], whi[j]);
            uint k = t * step;
            for (uint i = 0; i < TM; i++) {
                uint r = rows[i] + k;
                vec4 xlo = vec4(x[r], x[r + 1], x[r + 2], x[r + 3]);
                if (WTYPE == W_F32) {
                    for (uint j = 0; j < TN; j++) acc[i][j] += dot(xlo, wlo[j]);
                } else {
                    vec4 xhi = vec4(x[r + 4], x[r + 5], x[r + 6], x[r + 7]);
                    for (uint j = 0; j < TN; j++) acc[i][j] += dot(xlo, wlo[j]) + dot(xhi, whi[j]);
                }
            }
        }
    } else {
        for (uint k = 0; k < p.K; k++) {
            float w[TN];
            for (uint j = 0; j < TN; j++) w[j] = fetch_elem(W, p.w_off + cols[j] * p.K + k);
            for (uint i = 0; i < TM; i++) {
                float xv = x[rows[i] + k];
                for (uint j = 0; j < TN; j++) acc[i][j] += xv * w[j];
            }
        }
    }

    for (uint j = 0; j < TN; j++) {
        uint n = n0 + j;
        if (n >= p.N) break;
        float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n0 + n, BTYPE) : 0.0;
        for (uint i = 0; i < TM; i++) {
            uint m = m0 + i;
            if (m >= p.M) break;
            uint o = p.y_off + m * p.y_stride + p.n0 + n;
            float v = acc[i][j] + bias;
            y[o] = p.accumulate != 0 ? y[o] + v : v;
        }
    }
}
