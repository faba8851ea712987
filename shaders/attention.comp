#version 450
// Scaled dot-product attention with an online softmax (one pass over the keys), for every query of
// B sequences of T tokens, Hq query heads sharing Hkv key/value heads (grouped-query attention).
// Causal: query t of sequence b sits at position len[b] - T + t and sees keys 0..that position;
// otherwise (vision) every query sees all len[b] keys. Each invocation owns one query row; the
// lanes of a workgroup are consecutive queries of one head, so they all need the same key at the
// same time. K and V come through texel views (a long KV cache may pass 128 MiB).
//
// Fetches whose address differs per lane are what llvmpipe does slowest, so on the fast path the
// lanes fetch a key row together (lane l takes texels l, l + width, ...) and share it by subgroup
// broadcast: D/4 fetches per key become D/(4*width).
// K and V are f32 or f16 (specialization constant 1, the KV cache's dtype); q and the output are f32.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

EC_ATTENTION_SPEC(EC_SPEC_DECLARE)
const uint D4 = (D + 3) / 4;

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
    uint t = gl_GlobalInvocationID.x, h = gl_WorkGroupID.y, b = p.b0 + gl_WorkGroupID.z;
    bool in_range = t < p.T;
    uint tq = min(t, p.T - 1);
    uint hk = h / (p.Hq / p.Hkv);
    int len = lens[b];
    int last = p.causal != 0 ? len - int(p.T) + int(tq) : len - 1;  // last key this query sees
    // The workgroup walks keys up to its furthest query; shorter queries mask the tail.
    uint wg_last_t = min(gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_WorkGroupSize.x - 1, p.T - 1);
    int wg_last = p.causal != 0 ? len - int(p.T) + int(wg_last_t) : len - 1;

    uint qb = p.q_off + b * p.q_seq + tq * p.q_row + h * D;
    uint kv_base = (b - p.b0) * p.kv_seq + hk * p.kv_head;  // the K/V views start at sequence b0
    float m = -3.402823466e38, l = 0.0;
    float o_out[D];

    bool shared_path = D % 4 == 0 && p.k_off % 4 == 0 && p.v_off % 4 == 0 && p.kv_row % 4 == 0 &&
                       p.kv_seq % 4 == 0 && p.kv_head % 4 == 0 && gl_NumSubgroups == 1;
    if (shared_path) {
        // The workgroup width (specialization constant 0) is the subgroup size on this path, and a
        // compile-time constant: with it every array index below is constant once the loops unroll,
        // so the arrays stay in registers instead of per-lane scratch memory.
        const uint width = gl_WorkGroupSize.x, chunks = (D4 + width - 1) / width;
        uint lane = gl_SubgroupInvocationID;
        vec4 qv[D4], acc[D4];
        [[unroll]] for (uint d = 0; d < D4; d++) {
            qv[d] = vec4(q[qb + 4 * d], q[qb + 4 * d + 1], q[qb + 4 * d + 2], q[qb + 4 * d + 3]) * p.scale;
            acc[d] = vec4(0.0);
        }
        for (int s = 0; s <= wg_last; s++) {
            uint kb = p.k_off + kv_base + uint(s) * p.kv_row, vb = kb - p.k_off + p.v_off;
            vec4 kpart[chunks], vpart[chunks];
            [[unroll]] for (uint c = 0; c < chunks; c++) {
                uint d4 = min(c * width + lane, D4 - 1);
                kpart[c] = fetch4(K, kb + 4 * d4);
                vpart[c] = fetch4(V, vb + 4 * d4);
            }
            float score = 0.0;
            [[unroll]] for (uint d = 0; d < D4; d++) score += dot(qv[d], subgroupShuffle(kpart[d / width], d % width));
            // A masked key leaves the state as it is: exp(-inf) = 0 and the correction is 1.
            if (s > last) score = -1.0 / 0.0;
            float m_new = max(m, score);
            float corr = exp(m - m_new), w = exp(score - m_new);
            l = l * corr + w;
            m = m_new;
            [[unroll]] for (uint d = 0; d < D4; d++) acc[d] = acc[d] * corr + w * subgroupShuffle(vpart[d / width], d % width);
        }
        [[unroll]] for (uint d = 0; d < D4; d++)
            [[unroll]] for (uint e = 0; e < 4; e++) o_out[4 * d + e] = acc[d][e];
    } else {
        float qv[D], acc[D];
        [[unroll]] for (uint d = 0; d < D; d++) { qv[d] = q[qb + d] * p.scale; acc[d] = 0.0; }
        for (int s = 0; s <= wg_last; s++) {
            if (s > last) continue;
            uint kb = p.k_off + kv_base + uint(s) * p.kv_row, vb = kb - p.k_off + p.v_off;
            float score = 0.0;
            [[unroll]] for (uint d = 0; d < D; d++) score += qv[d] * fetch_elem(K, kb + d);
            float m_new = max(m, score);
            float corr = exp(m - m_new), w = exp(score - m_new);
            l = l * corr + w;
            m = m_new;
            [[unroll]] for (uint d = 0; d < D; d++) acc[d] = acc[d] * corr + w * fetch_elem(V, vb + d);
        }
        [[unroll]] for (uint d = 0; d < D; d++) o_out[d] = acc[d];
    }
    if (!in_range) return;
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    uint ob = p.o_off + b * p.o_seq + t * p.o_row + h * D;
    [[unroll]] for (uint d = 0; d < D; d++) o[ob + d] = o_out[d] * inv;
}
