#version 450
// Scaled dot-product attention with an online softmax (one pass over the keys), for every query of
// B sequences of T tokens, Hq query heads sharing Hkv key/value heads (grouped-query attention).
// Causal: query t of sequence b sits at position len[b] - T + t and sees keys 0..that position;
// otherwise (vision) every query sees all len[b] keys. Each invocation owns one query row; the
// lanes of a workgroup are consecutive queries of one head, so they read the same key at the same
// time (uniform loads). K and V come through texel views: a long KV cache may pass 128 MiB.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(constant_id = 2) const uint D = 64;       // head dimension (any: 72 for SigLIP, 128 for Qwen2)

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) uniform usamplerBuffer K;
layout(binding = 2) uniform usamplerBuffer V;
layout(std430, binding = 3) readonly buffer L { int lens[]; };
layout(std430, binding = 4) buffer O { float o[]; };

layout(push_constant) uniform P {
    uint T, Hq, Hkv, causal;
    uint q_off, q_row, q_seq;      // q element (b,t,h,d) = q_off + b*q_seq + t*q_row + h*D + d
    uint k_off, v_off, kv_row, kv_seq;  // k/v element (b,s,h,d) = k_off + b*kv_seq + s*kv_row + h*D + d
    uint o_off, o_row, o_seq;
    float scale;
} p;

void main()
{
    uint t = gl_GlobalInvocationID.x, h = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    bool in_range = t < p.T;
    uint tq = min(t, p.T - 1);
    uint hk = h / (p.Hq / p.Hkv);
    int len = lens[b];
    int last = p.causal != 0 ? len - int(p.T) + int(tq) : len - 1;  // last key this query sees
    // The workgroup walks keys up to its furthest query; shorter queries mask the tail.
    uint wg_last_t = min(gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_WorkGroupSize.x - 1, p.T - 1);
    int wg_last = p.causal != 0 ? len - int(p.T) + int(wg_last_t) : len - 1;

    float qv[D], acc[D];
    uint qb = p.q_off + b * p.q_seq + tq * p.q_row + h * D;
    for (uint d = 0; d < D; d++) { qv[d] = q[qb + d] * p.scale; acc[d] = 0.0; }

    float m = -3.402823466e38, l = 0.0;
    bool vec_ok = (D % 4 == 0) && (p.k_off % 4 == 0) && (p.v_off % 4 == 0) && (p.kv_row % 4 == 0) && (p.kv_seq % 4 == 0);
    for (int s = 0; s <= wg_last; s++) {
        uint kb = p.k_off + b * p.kv_seq + uint(s) * p.kv_row + hk * D;
        uint vb = kb - p.k_off + p.v_off;
        float score = 0.0;
        if (vec_ok) {
            for (uint d = 0; d < D; d += 4) {
                vec4 kv = uintBitsToFloat(texelFetch(K, int((kb + d) >> 2)));
                score += qv[d] * kv.x + qv[d + 1] * kv.y + qv[d + 2] * kv.z + qv[d + 3] * kv.w;
            }
        } else {
            for (uint d = 0; d < D; d++) score += qv[d] * fetch_f32(K, kb + d);
        }
        if (s > last) continue;
        float m_new = max(m, score);
        float corr = exp(m - m_new), w = exp(score - m_new);
        l = l * corr + w;
        m = m_new;
        if (vec_ok) {
            for (uint d = 0; d < D; d += 4) {
                vec4 vv = uintBitsToFloat(texelFetch(V, int((vb + d) >> 2)));
                acc[d] = acc[d] * corr + w * vv.x;
                acc[d + 1] = acc[d + 1] * corr + w * vv.y;
                acc[d + 2] = acc[d + 2] * corr + w * vv.z;
                acc[d + 3] = acc[d + 3] * corr + w * vv.w;
            }
        } else {
            for (uint d = 0; d < D; d++) acc[d] = acc[d] * corr + w * fetch_f32(V, vb + d);
        }
    }
    if (!in_range) return;
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    uint ob = p.o_off + b * p.o_seq + t * p.o_row + h * D;
    for (uint d = 0; d < D; d++) o[ob + d] = acc[d] * inv;
}
