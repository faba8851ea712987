#version 450
// The second half of split-K decode attention: for each (sequence, query head), merges the splits'
// partial states {m_s, l_s, acc_s[D]} (attention_decode) into softmax-weighted output:
// out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s, M = max_s m_s. An empty split has
// m_s = -FLT_MAX, l_s = 0, acc_s = 0 and weighs nothing.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_ATTENTION_COMBINE_SPEC(EC_SPEC_DECLARE)

layout(std430, binding = 0) readonly buffer P { float part[]; };
layout(std430, binding = 1) buffer O { float o[]; };

layout(push_constant) uniform Push { ec_attention_combine_push p; };

void main()
{
    uint h = gl_WorkGroupID.x, b = gl_WorkGroupID.y;
    uint base = p.part_off + (b * p.Hq + h) * p.splits * (D + 2);
    float M = -3.402823466e38;
    for (uint s = 0; s < p.splits; s++) M = max(M, part[base + s * (D + 2)]);
    float total = 0.0;
    for (uint s = 0; s < p.splits; s++) total += exp(part[base + s * (D + 2)] - M) * part[base + s * (D + 2) + 1];
    float inv = total > 0.0 ? 1.0 / total : 0.0;
    uint ob = p.o_off + b * p.o_seq + h * D;
    for (uint d = gl_LocalInvocationID.x; d < D; d += gl_WorkGroupSize.x) {
        float acc = 0.0;
        for (uint s = 0; s < p.splits; s++) acc += exp(part[base + s * (D + 2)] - M) * part[base + s * (D + 2) + 2 + d];
        o[ob + d] = acc * inv;
    }
}
