#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y) for a few rows of x (decode: M = batch of sequences).
// Memory-bound: every weight is read once and used for all M vectors. A workgroup (one subgroup on
// lavapipe) takes ROWS rows of W; lane l reads texels l, l+width, ... of every row (8 bf16/f16
// weights a fetch), so the x values it needs are the same for all ROWS rows: it loads them once per
// texel column and reuses them ROWS times. A subgroup sum finishes each dot product.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_MATVEC_SPEC(EC_SPEC_DECLARE)

layout(binding = 0) uniform utextureBuffer X;
layout(binding = 1) uniform utextureBuffer W;
layout(binding = 2) uniform utextureBuffer B;
layout(std430, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push { ec_matmul_push p; };

void main()
{
    uint lane = gl_LocalInvocationID.x;
    uint width = gl_WorkGroupSize.x;
    uint n0 = gl_WorkGroupID.x * ROWS;
    float acc[ROWS][NM];
    for (uint r = 0; r < ROWS; r++)
        for (uint m = 0; m < NM; m++) acc[r][m] = 0.0;

    if (p.aligned != 0) {
        uint step = per_texel();
        uint texels = p.K / step;
        for (uint t = lane; t < texels; t += width) {
            vec4 xlo[NM], xhi[NM];
            for (uint m = 0; m < NM; m++) {
                uint xt = (p.x_off + m * p.K + t * step) >> 2;  // x texel (4 floats)
                xlo[m] = uintBitsToFloat(texelFetch(X, int(xt)));
                xhi[m] = WTYPE == W_F32 ? vec4(0.0) : uintBitsToFloat(texelFetch(X, int(xt + 1)));
            }
            for (uint r = 0; r < ROWS; r++) {
                uint n = min(n0 + r, p.N - 1);
                vec4 wlo, whi;
                unpack_texel(texelFetch(W, int(p.w_off / step + n * texels + t)), wlo, whi);
                for (uint m = 0; m < NM; m++) acc[r][m] += dot(xlo[m], wlo) + dot(xhi[m], whi);
            }
        }
    } else {
        for (uint k = lane; k < p.K; k += width) {
            float xv[NM];
            for (uint m = 0; m < NM; m++) xv[m] = fetch_f32(X, p.x_off + m * p.K + k);
            for (uint r = 0; r < ROWS; r++) {
                float w = fetch_elem(W, p.w_off + min(n0 + r, p.N - 1) * p.K + k);
                for (uint m = 0; m < NM; m++) acc[r][m] += w * xv[m];
            }
        }
    }

    for (uint r = 0; r < ROWS; r++) {
        uint n = n0 + r;
        if (n >= p.N) break;
        float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n0 + n, BTYPE) : 0.0;
        for (uint m = 0; m < NM; m++) {
            float s = workgroup_sum(acc[r][m]);
            if (lane == 0) {
                uint o = p.y_off + m * p.y_stride + p.n0 + n;
                y[o] = p.accumulate != 0 ? y[o] + s + bias : s + bias;
            }
        }
    }
}
