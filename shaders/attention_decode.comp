#version 450
// Decode attention: one query token per sequence against its cached keys, split-K (flash-decoding).
// Workgroup (split, kv head, sequence) walks keys [split * split_len, min(+split_len, len)) once
// for all G query heads of its group: grouped-query attention reads each KV head once per step, not
// once per query head. The lanes split the head dimension into chunks of 8 values (one f16 texel, two
// f32 texels): lane l holds chunks l, l + width, ... of q (for the G heads) and of the running output,
// so a key costs each lane a texel or two and a workgroup sum per query head, with no per-lane
// scratch arrays. The softmax runs online (running max m, running sum l), with one exp per key and
// head: whichever of the old max and the new score is smaller is rescaled.
//
// LANE_KEYS (CPU devices, one subgroup per workgroup): the lanes take consecutive keys instead, and each
// lane runs its own online softmax over its keys (lane, lane + width, ...): it scores its key against the
// G query rows (q loaded once), rescales and adds its key's whole V row to its own output rows, and the
// lanes are combined once, at the end (max, rescale, subgroup sums). Each K or V fetch then reads
// `width` rows at once (their cache misses overlap), and no key needs a cross-lane operation: llvmpipe
// runs a subgroup broadcast or max as a loop over the lanes, and lane-uniform math at full cost.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

EC_ATTENTION_DECODE_SPEC(EC_SPEC_DECLARE)
const uint C8 = (D + 7) / 8;  // chunks of 8 values per head row

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) uniform utextureBuffer K;
layout(binding = 2) uniform utextureBuffer V;
layout(std430, binding = 3) readonly buffer L { int lens[]; };
layout(std430, binding = 4) buffer O { float o[]; };

layout(push_constant) uniform Push { ec_attention_decode_push p; };

// Values e .. e + 7 of a K or V row (in the cache's dtype, WTYPE); past the row's end (d >= D) they
// are not read and count as 0. aligned: e is a multiple of 8 and D of 8, so whole texels are read.
void load8(utextureBuffer buf, uint e, uint d0, bool aligned, out vec4 lo, out vec4 hi)
{
    if (aligned) {
        if (WTYPE == W_F32) {
            lo = uintBitsToFloat(texelFetch(buf, int(e >> 2)));
            hi = uintBitsToFloat(texelFetch(buf, int((e >> 2) + 1)));
        } else {
            unpack_texel(texelFetch(buf, int(e >> 3)), lo, hi);
        }
        return;
    }
    float v[8];
    [[unroll]] for (uint i = 0; i < 8; i++) v[i] = d0 + i < D ? fetch_elem(buf, e + i) : 0.0;
    lo = vec4(v[0], v[1], v[2], v[3]);
    hi = vec4(v[4], v[5], v[6], v[7]);
}

// q[g][d .. d + 7] for the aligned/unaligned cases (zero past the head's end).
void q8(uint qb, uint d0, out vec4 lo, out vec4 hi)
{
    float v[8];
    [[unroll]] for (uint i = 0; i < 8; i++) v[i] = d0 + i < D ? q[qb + d0 + i] : 0.0;
    lo = vec4(v[0], v[1], v[2], v[3]);
    hi = vec4(v[4], v[5], v[6], v[7]);
}

void lane_keys(uint lane, uint b, uint hk, uint s0, uint s1, bool aligned)
{
    const uint width = gl_WorkGroupSize.x;
    // Each lane runs its own online softmax over keys s0 + lane, s0 + lane + width, ...: its running max,
    // sum and output rows (all D values of the G heads); the lanes are combined once, at the end.
    vec4 alo[G][C8], ahi[G][C8];
    float m[G], l[G];
    [[unroll]] for (uint g = 0; g < G; g++) {
        [[unroll]] for (uint c = 0; c < C8; c++) {
            alo[g][c] = vec4(0.0);
            ahi[g][c] = vec4(0.0);
        }
        m[g] = -3.402823466e38;
        l[g] = 0.0;
    }
    uint kb = p.k_off + (b - p.b0) * p.kv_seq + hk * p.kv_head, vb = p.v_off + (b - p.b0) * p.kv_seq + hk * p.kv_head;
    vec4 qlo[G][C8], qhi[G][C8];  // loaded once: a guarded load inside the key loop costs llvmpipe a gather per key
    [[unroll]] for (uint g = 0; g < G; g++)
        [[unroll]] for (uint c = 0; c < C8; c++) q8(p.q_off + b * p.q_seq + (hk * G + g) * D, c * 8, qlo[g][c], qhi[g][c]);
    for (uint s = s0; s < s1; s += width) {
        bool live = s + lane < s1;
        uint key = min(s + lane, s1 - 1);
        float score[G];
        [[unroll]] for (uint g = 0; g < G; g++) score[g] = 0.0;
        [[unroll]] for (uint c = 0; c < C8; c++) {
            vec4 klo, khi;
            load8(K, kb + key * p.kv_row + c * 8, c * 8, aligned, klo, khi);
            [[unroll]] for (uint g = 0; g < G; g++) score[g] += dot(qlo[g][c], klo) + dot(qhi[g][c], khi);
        }
        // One exp per key and head: whichever of the old max and the new score is smaller is rescaled.
        float corr[G], w[G];
        [[unroll]] for (uint g = 0; g < G; g++) {
            float sc = score[g] * p.scale;
            float e = exp(-abs(sc - m[g]));
            bool grows = sc > m[g];
            corr[g] = live && grows ? e : 1.0;
            w[g] = live ? (grows ? 1.0 : e) : 0.0;
            m[g] = live ? max(m[g], sc) : m[g];
            l[g] = l[g] * corr[g] + w[g];
        }
        [[unroll]] for (uint c = 0; c < C8; c++) {
            vec4 vlo, vhi;
            load8(V, vb + key * p.kv_row + c * 8, c * 8, aligned, vlo, vhi);
            [[unroll]] for (uint g = 0; g < G; g++) {
                alo[g][c] = alo[g][c] * corr[g] + w[g] * vlo;
                ahi[g][c] = ahi[g][c] * corr[g] + w[g] * vhi;
            }
        }
    }

    // Combine the lanes: rescale each to the workgroup's max, sum across the subgroup; lane l then writes
    // values l, l + width, ... of each output row.
    [[unroll]] for (uint g = 0; g < G; g++) {
        uint h = hk * G + g;
        float mx = subgroupMax(m[g]);
        float f = l[g] > 0.0 ? exp(m[g] - mx) : 0.0;
        float total = subgroupAdd(l[g] * f);
        uint base;
        float inv;
        if (p.splits == 1) {
            base = p.o_off + b * p.o_seq + h * D;
            inv = total > 0.0 ? 1.0 / total : 0.0;
        } else {
            uint part = p.o_off + ((b * p.Hq + h) * p.splits + gl_WorkGroupID.x) * (D + 2);
            if (lane == 0) {
                o[part] = mx;
                o[part + 1] = total;
            }
            base = part + 2;
            inv = 1.0;
        }
        float mine[(D + width - 1) / width];
        [[unroll]] for (uint c = 0; c < (D + width - 1) / width; c++) mine[c] = 0.0;
        [[unroll]] for (uint d = 0; d < D; d++) {
            float v = (d % 8 < 4 ? alo[g][d / 8][d % 4] : ahi[g][d / 8][d % 4]) * f;
            float sum = subgroupAdd(v) * inv;
            if (lane == d % width) mine[d / width] = sum;
        }
        [[unroll]] for (uint c = 0; c < (D + width - 1) / width; c++)
            if (c * width + lane < D) o[base + c * width + lane] = mine[c];
    }
}

void main()
{
    const uint width = gl_WorkGroupSize.x, CH = (C8 + width - 1) / width;  // chunks per lane
    uint lane = gl_LocalInvocationID.x;
    uint split = gl_WorkGroupID.x, hk = gl_WorkGroupID.y, b = p.b0 + gl_WorkGroupID.z;
    uint len = uint(max(lens[b], 0));
    uint s0 = split * p.split_len, s1 = min(s0 + p.split_len, len);
    uint align = WTYPE == W_F32 ? 4u : 8u;
    bool aligned = D % 8 == 0 && p.k_off % align == 0 && p.v_off % align == 0 && p.kv_row % align == 0 &&
                   p.kv_seq % align == 0 && p.kv_head % align == 0;
    if (LANE_KEYS != 0) {
        // both cases spelled out with a constant: llvmpipe would run a branch on a run-time value both ways
        if (aligned) lane_keys(lane, b, hk, s0, s1, true);
        else lane_keys(lane, b, hk, s0, s1, false);
        return;
    }

    vec4 qlo[G][CH], qhi[G][CH], alo[G][CH], ahi[G][CH];
    float m[G], l[G];
    [[unroll]] for (uint g = 0; g < G; g++) {
        uint qb = p.q_off + b * p.q_seq + (hk * G + g) * D;
        [[unroll]] for (uint c = 0; c < CH; c++) {
            uint d0 = (c * width + lane) * 8;
            float v[8];
            [[unroll]] for (uint i = 0; i < 8; i++) v[i] = d0 + i < D ? q[qb + d0 + i] * p.scale : 0.0;
            qlo[g][c] = vec4(v[0], v[1], v[2], v[3]);
            qhi[g][c] = vec4(v[4], v[5], v[6], v[7]);
            alo[g][c] = vec4(0.0);
            ahi[g][c] = vec4(0.0);
        }
        m[g] = -3.402823466e38;
        l[g] = 0.0;
    }

    uint kb = p.k_off + (b - p.b0) * p.kv_seq + hk * p.kv_head, vb = p.v_off + (b - p.b0) * p.kv_seq + hk * p.kv_head;  // views start at b0
    for (uint s = s0; s < s1; s++) {
        vec4 klo[CH], khi[CH], vlo[CH], vhi[CH];
        [[unroll]] for (uint c = 0; c < CH; c++) {
            uint d0 = min(c * width + lane, C8 - 1) * 8;  // lanes past the row re-read its last chunk (q is 0 there)
            load8(K, kb + s * p.kv_row + d0, d0, aligned, klo[c], khi[c]);
            load8(V, vb + s * p.kv_row + d0, d0, aligned, vlo[c], vhi[c]);
        }
        [[unroll]] for (uint g = 0; g < G; g++) {
            float part = 0.0;
            [[unroll]] for (uint c = 0; c < CH; c++) part += dot(qlo[g][c], klo[c]) + dot(qhi[g][c], khi[c]);
            float score = workgroup_sum(part);
            float e = exp(-abs(score - m[g]));
            bool grows = score > m[g];
            float corr = grows ? e : 1.0, w = grows ? 1.0 : e;
            m[g] = max(m[g], score);
            l[g] = l[g] * corr + w;
            [[unroll]] for (uint c = 0; c < CH; c++) {
                alo[g][c] = alo[g][c] * corr + w * vlo[c];
                ahi[g][c] = ahi[g][c] * corr + w * vhi[c];
            }
        }
    }

    [[unroll]] for (uint g = 0; g < G; g++) {
        uint h = hk * G + g;
        uint base;
        float inv;
        if (p.splits == 1) {
            base = p.o_off + b * p.o_seq + h * D;
            inv = l[g] > 0.0 ? 1.0 / l[g] : 0.0;
        } else {
            uint part = p.o_off + ((b * p.Hq + h) * p.splits + split) * (D + 2);
            if (lane == 0) {
                o[part] = m[g];
                o[part + 1] = l[g];
            }
            base = part + 2;
            inv = 1.0;
        }
        [[unroll]] for (uint c = 0; c < CH; c++) {
            uint d0 = (c * width + lane) * 8;
            [[unroll]] for (uint i = 0; i < 4; i++) {
                if (d0 + i < D) o[base + d0 + i] = alo[g][c][i] * inv;
                if (d0 + 4 + i < D) o[base + d0 + 4 + i] = ahi[g][c][i] * inv;
            }
        }
    }
}
