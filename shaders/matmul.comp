#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias[N]) (+ y when accumulating): the GEMM of prefill and vision.
// Register-blocked: each invocation computes TM rows x TN columns straight from memory. Both x and W
// come through texel buffers: on llvmpipe a texel fetch is a few vector loads, while a storage-buffer
// load whose address it cannot prove uniform becomes a per-lane scalar loop (Mesa 22.3), which made
// the x loads 40 % of this kernel's time.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_MATMUL_SPEC(EC_SPEC_DECLARE)

layout(binding = 0) uniform utextureBuffer X;  // f32 values
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

    if (p.aligned != 0 && gl_SubgroupSize >= TM && gl_NumSubgroups == 1) {
        // K is a multiple of the elements per texel: whole texels, no per-element indexing. Lane l
        // fetches row l of the tile (lanes past TM repeat the last row) and the subgroup shares the
        // values by shuffles from constant lanes (llvmpipe runs subgroupBroadcast as a loop over the
        // lanes, a constant-lane shuffle as one extract): one x fetch per lane and step serves TM rows
        // x TN columns.
        uint step = per_texel();
        uint texels_per_row = p.K / step;
        uint my_row = p.x_off + min(m0 + min(gl_SubgroupInvocationID, TM - 1), p.M - 1) * p.K;
        for (uint t = 0; t < texels_per_row; t++) {
            vec4 wlo[TN], whi[TN];
            for (uint j = 0; j < TN; j++) unpack_texel(texelFetch(W, int(w_texel + cols[j] * texels_per_row + t)), wlo[j], whi[j]);
            uint xt = (my_row + t * step) / 4;
            vec4 xa = uintBitsToFloat(texelFetch(X, int(xt)));
            vec4 xb = WTYPE != W_F32 ? uintBitsToFloat(texelFetch(X, int(xt + 1))) : vec4(0.0);
            for (uint i = 0; i < TM; i++) {
                for (uint e = 0; e < 4; e++) {
                    float xe = subgroupShuffle(xa[e], i);
                    for (uint j = 0; j < TN; j++) acc[i][j] = fma(xe, wlo[j][e], acc[i][j]);
                }
                if (WTYPE != W_F32) {
                    for (uint e = 0; e < 4; e++) {
                        float xe = subgroupShuffle(xb[e], i);
                        for (uint j = 0; j < TN; j++) acc[i][j] = fma(xe, whi[j][e], acc[i][j]);
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
                vec4 xlo = uintBitsToFloat(texelFetch(X, int(r / 4)));
                if (WTYPE == W_F32) {
                    for (uint j = 0; j < TN; j++) acc[i][j] += dot(xlo, wlo[j]);
                } else {
                    vec4 xhi = uintBitsToFloat(texelFetch(X, int(r / 4 + 1)));
                    for (uint j = 0; j < TN; j++) acc[i][j] += dot(xlo, wlo[j]) + dot(xhi, whi[j]);
                }
            }
        }
    } else {
        for (uint k = 0; k < p.K; k++) {
            float w[TN];
            for (uint j = 0; j < TN; j++) w[j] = fetch_elem(W, p.w_off + cols[j] * p.K + k);
            for (uint i = 0; i < TM; i++) {
                float xv = fetch_f32(X, rows[i] + k);
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
