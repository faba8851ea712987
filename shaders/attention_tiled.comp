#version 450
// Scaled dot-product attention for many queries (prefill, vision) as two small GEMMs per block of keys,
// with an online softmax between them (flash attention), for a CPU device: one subgroup per workgroup.
// A workgroup takes TQ queries of one head; per block of width * TN keys:
//   scores: lane l computes the TQ x TN scores of keys l*TN .. l*TN + TN-1 (its K rows, fetched once,
//           against the queries' q values, which the lanes hold split by columns and share by broadcast);
//   softmax: the block's row maxima and sums across the lanes, the running max, sum and output rescaled;
//   output: lane l accumulates columns l, l + width, ... (4 values each) of the TQ output rows over the
//           block's keys, each key's weight broadcast from the lane that scored it.
// Every fetch serves TQ queries or TN keys, where attention.comp's loop spends a broadcast and an exp per
// query and key. Needs D % 4 == 0 and k/v offsets on 4-value boundaries (ops.c checks); K and V are f32
// or f16 (specialization constant 1).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

EC_ATTENTION_SPEC(EC_SPEC_DECLARE)
const uint D4 = D / 4;
const uint TQ = 8, TN = 4;

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) uniform utextureBuffer K;
layout(binding = 2) uniform utextureBuffer V;
layout(std430, binding = 3) readonly buffer L { int lens[]; };
layout(std430, binding = 4) buffer O { float o[]; };

layout(push_constant) uniform Push { ec_attention_push p; };

// Values e .. e + 3 of K or V, e a multiple of 4: an f32 texel, or half of an f16 texel.
vec4 fetch4(utextureBuffer buf, uint e)
{
    if (WTYPE == W_F32) return uintBitsToFloat(texelFetch(buf, int(e >> 2)));
    uvec4 t = texelFetch(buf, int(e >> 3));
    return (e & 4u) == 0 ? vec4(unpackHalf2x16(t.x), unpackHalf2x16(t.y)) : vec4(unpackHalf2x16(t.z), unpackHalf2x16(t.w));
}

void main()
{
    const uint width = gl_WorkGroupSize.x, CH = (D4 + width - 1) / width, KB = width * TN;
    uint lane = gl_SubgroupInvocationID;
    uint t0 = gl_WorkGroupID.x * TQ, h = gl_WorkGroupID.y, b = p.b0 + gl_WorkGroupID.z;
    uint hk = h / (p.Hq / p.Hkv);
    int len = lens[b];

    vec4 qv[TQ][CH], acc[TQ][CH];
    float m[TQ], l[TQ];
    int last[TQ];  // the last key each query sees
    int wg_last = -1;
    [[unroll]] for (uint i = 0; i < TQ; i++) {
        uint tq = min(t0 + i, p.T - 1);
        last[i] = p.causal != 0 ? len - int(p.T) + int(tq) : len - 1;
        wg_last = max(wg_last, last[i]);
        uint qb = p.q_off + b * p.q_seq + tq * p.q_row + h * D;
        [[unroll]] for (uint c = 0; c < CH; c++) {
            uint d = 4 * min(c * width + lane, D4 - 1);
            qv[i][c] = vec4(q[qb + d], q[qb + d + 1], q[qb + d + 2], q[qb + d + 3]) * p.scale;
            acc[i][c] = vec4(0.0);
        }
        m[i] = -3.402823466e38;
        l[i] = 0.0;
    }

    uint kv_base = (b - p.b0) * p.kv_seq + hk * p.kv_head;  // the K/V views start at sequence b0
    for (int s0 = 0; s0 <= wg_last; s0 += int(KB)) {
        // Scores of this lane's TN keys (rows past the sequence read its last row, then are masked).
        float sc[TQ][TN];
        uint kb[TN];
        [[unroll]] for (uint c = 0; c < TN; c++) {
            kb[c] = p.k_off + kv_base + uint(min(s0 + int(lane * TN + c), len - 1)) * p.kv_row;
            [[unroll]] for (uint i = 0; i < TQ; i++) sc[i][c] = 0.0;
        }
        [[unroll]] for (uint d = 0; d < D4; d++) {
            vec4 kv4[TN];
            [[unroll]] for (uint c = 0; c < TN; c++) kv4[c] = fetch4(K, kb[c] + 4 * d);
            [[unroll]] for (uint i = 0; i < TQ; i++) {
                vec4 qd = subgroupShuffle(qv[i][d / width], d % width);
                [[unroll]] for (uint c = 0; c < TN; c++) sc[i][c] += dot(qd, kv4[c]);
            }
        }
        // Online softmax: masked keys weigh exp(-inf) = 0.
        [[unroll]] for (uint i = 0; i < TQ; i++) {
            float mb = -1.0 / 0.0;
            [[unroll]] for (uint c = 0; c < TN; c++) {
                if (s0 + int(lane * TN + c) > last[i]) sc[i][c] = -1.0 / 0.0;
                mb = max(mb, sc[i][c]);
            }
            float m_new = max(m[i], subgroupMax(mb));
            float corr = exp(m[i] - m_new), ps = 0.0;
            [[unroll]] for (uint c = 0; c < TN; c++) {
                sc[i][c] = exp(sc[i][c] - m_new);
                ps += sc[i][c];
            }
            l[i] = l[i] * corr + subgroupAdd(ps);
            m[i] = m_new;
            [[unroll]] for (uint c = 0; c < CH; c++) acc[i][c] *= corr;
        }
        // Output: every key of the block, its weights from the lane that scored it.
        [[unroll]] for (uint j = 0; j < KB; j++) {
            uint vb = p.v_off + kv_base + uint(min(s0 + int(j), len - 1)) * p.kv_row;
            vec4 vv[CH];
            [[unroll]] for (uint c = 0; c < CH; c++) vv[c] = fetch4(V, vb + 4 * min(c * width + lane, D4 - 1));
            [[unroll]] for (uint i = 0; i < TQ; i++) {
                float w = subgroupShuffle(sc[i][j % TN], j / TN);
                [[unroll]] for (uint c = 0; c < CH; c++) acc[i][c] += w * vv[c];
            }
        }
    }

    [[unroll]] for (uint i = 0; i < TQ; i++) {
        uint t = t0 + i;
        if (t >= p.T) break;
        float inv = l[i] > 0.0 ? 1.0 / l[i] : 0.0;
        uint ob = p.o_off + b * p.o_seq + t * p.o_row + h * D;
        [[unroll]] for (uint c = 0; c < CH; c++) {
            uint d4 = c * width + lane;
            if (d4 < D4) {
                vec4 r = acc[i][c] * inv;
                o[ob + 4 * d4] = r.x;
                o[ob + 4 * d4 + 1] = r.y;
                o[ob + 4 * d4 + 2] = r.z;
                o[ob + 4 * d4 + 3] = r.w;
            }
        }
    }
}
