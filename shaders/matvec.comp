#version 450
// y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y) for a few rows of x (decode: M = batch of sequences).
// Memory-bound: every weight is read once and used for all M vectors. A workgroup (one subgroup on
// lavapipe) takes ROWS rows of W; lane l reads texels l, l+width, ... of every row (8 bf16/f16
// weights a fetch), so the x values it needs are the same for all ROWS rows: it loads them once per
// texel column and reuses them ROWS times. A subgroup sum finishes each dot product.
//
// The input can be made on the fly from what the op before it would have written (PRE), saving that
// op's dispatch and its pass over memory in a decode step:
//   PRE 0: x as stored;
//   PRE 1: RMSNorm(x) = x * g / sqrt(mean(x^2) + eps): the lanes sum x^2 over the whole row as they
//          read it (every workgroup reads all of x anyway), and the dot products are scaled at the end;
//   PRE 2: silu(x[:, k]) * x[:, up_off + k]: the gated MLP's input, from the gate | up projection.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_MATVEC_SPEC(EC_SPEC_DECLARE)

layout(binding = 0) uniform utextureBuffer X;
layout(binding = 1) uniform utextureBuffer W;
layout(binding = 2) uniform utextureBuffer B;
layout(std430, binding = 3) buffer Y { float y[]; };
layout(binding = 4) uniform utextureBuffer G;  // RMSNorm weight (PRE 1)

layout(push_constant) uniform Push { ec_matvec_push p; };

float silu(float v) { return v / (1.0 + exp(-v)); }

// Values e .. e + 3 (e a multiple of 4) of a texel buffer of dtype `type`.
vec4 fetch4_as(utextureBuffer buf, uint e, uint type)
{
    if (type == W_F32) return uintBitsToFloat(texelFetch(buf, int(e >> 2)));
    uvec4 t = texelFetch(buf, int(e >> 3));
    return (e & 4u) == 0 ? vec4(unpack_pair_as(t.x, type), unpack_pair_as(t.y, type))
                         : vec4(unpack_pair_as(t.z, type), unpack_pair_as(t.w, type));
}

// x[m, k .. k + 3] (aligned path: k a multiple of 4, row starts on a texel), after PRE; raw: x as stored
// (what RMSNorm's sum of squares needs).
vec4 x4(uint m, uint k, out vec4 raw)
{
    uint e = p.x_off + m * p.x_stride + k;
    raw = uintBitsToFloat(texelFetch(X, int(e >> 2)));
    if (PRE == 1) return raw * fetch4_as(G, k, GTYPE);
    if (PRE == 2) {
        vec4 up = uintBitsToFloat(texelFetch(X, int((e + p.up_off) >> 2)));
        return raw / (1.0 + exp(-raw)) * up;
    }
    return raw;
}

// x[m, k] after PRE (general path).
float x1(uint m, uint k, out float raw)
{
    uint e = p.x_off + m * p.x_stride + k;
    raw = fetch_f32(X, e);
    if (PRE == 1) return raw * fetch_elem_as(G, k, GTYPE);
    if (PRE == 2) return silu(raw) * fetch_f32(X, e + p.up_off);
    return raw;
}

void main()
{
    uint lane = gl_LocalInvocationID.x;
    uint width = gl_WorkGroupSize.x;
    uint n0 = gl_WorkGroupID.x * ROWS;
    float acc[ROWS][NM];
    float ss[NM];  // sum of x^2 (PRE 1)
    for (uint r = 0; r < ROWS; r++)
        for (uint m = 0; m < NM; m++) acc[r][m] = 0.0;
    for (uint m = 0; m < NM; m++) ss[m] = 0.0;

    if (p.aligned != 0) {
        uint step = per_texel();
        uint texels = p.K / step;
        for (uint t = lane; t < texels; t += width) {
            vec4 xlo[NM], xhi[NM];
            for (uint m = 0; m < NM; m++) {
                vec4 rlo, rhi;
                xlo[m] = x4(m, t * step, rlo);
                xhi[m] = WTYPE == W_F32 ? vec4(0.0) : x4(m, t * step + 4, rhi);
                if (PRE == 1) ss[m] += dot(rlo, rlo) + (WTYPE == W_F32 ? 0.0 : dot(rhi, rhi));
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
            for (uint m = 0; m < NM; m++) {
                float raw;
                xv[m] = x1(m, k, raw);
                if (PRE == 1) ss[m] += raw * raw;
            }
            for (uint r = 0; r < ROWS; r++) {
                float w = fetch_elem(W, p.w_off + min(n0 + r, p.N - 1) * p.K + k);
                for (uint m = 0; m < NM; m++) acc[r][m] += w * xv[m];
            }
        }
    }

    float scale[NM];
    for (uint m = 0; m < NM; m++) scale[m] = PRE == 1 ? inversesqrt(workgroup_sum(ss[m]) / float(p.K) + p.eps) : 1.0;
    if (ONE_SUBGROUP) {
        // One subgroup (CPU devices): each row's sum is assembled from constant-lane shuffles, and lane l
        // writes rows l, l + width, ...: one store per lane and ROWS / width rows, where a subgroupAdd
        // and a lane-0 store per row are each a loop over the lanes in llvmpipe (docs/devices.md).
        const uint width_c = gl_WorkGroupSize.x, PER_LANE = (ROWS + width_c - 1) / width_c;
        for (uint m = 0; m < NM; m++) {
            float mine[PER_LANE];
            for (uint c = 0; c < PER_LANE; c++) mine[c] = 0.0;
            for (uint r = 0; r < ROWS; r++) {
                float s = 0.0;
                for (uint l = 0; l < width_c; l++) s += subgroupShuffle(acc[r][m], l);
                if (lane == r % width_c) mine[r / width_c] = s * scale[m];
            }
            for (uint c = 0; c < PER_LANE; c++) {
                uint n = n0 + c * width_c + lane;
                if (c * width_c + lane < ROWS && n < p.N) {
                    float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n0 + n, BTYPE) : 0.0;
                    uint o = p.y_off + m * p.y_stride + p.n0 + n;
                    y[o] = p.accumulate != 0 ? y[o] + mine[c] + bias : mine[c] + bias;
                }
            }
        }
        return;
    }
    for (uint r = 0; r < ROWS; r++) {
        uint n = n0 + r;
        if (n >= p.N) break;
        float bias = p.has_bias != 0 ? fetch_elem_as(B, p.n0 + n, BTYPE) : 0.0;
        for (uint m = 0; m < NM; m++) {
            float s = workgroup_sum(acc[r][m]) * scale[m];
            if (lane == 0) {
                uint o = p.y_off + m * p.y_stride + p.n0 + n;
                y[o] = p.accumulate != 0 ? y[o] + s + bias : s + bias;
            }
        }
    }
}
