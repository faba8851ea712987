#version 450
// Index of the largest value of each row (the first one on ties, as torch.argmax), one workgroup per
// row: greedy decoding reads back 4 bytes instead of the whole vocabulary of logits.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer O { int o[]; };

layout(push_constant) uniform Push { ec_argmax_push p; };

shared uint wg_index[64];

void main()
{
    uint lane = gl_LocalInvocationID.x, width = gl_WorkGroupSize.x;
    for (uint row = gl_WorkGroupID.x; row < p.rows; row += gl_NumWorkGroups.x) {
        uint base = p.x_off + row * p.cols;
        // Lanes without a column hold -inf and no index: a row of -inf values (all masked) still yields its
        // first index, as torch.argmax does, never the empty lanes' placeholder.
        float best = -1.0 / 0.0;
        uint best_i = 0xffffffffu;
        for (uint c = lane; c < p.cols; c += width) {
            float v = x[base + c];
            if (v > best || best_i == 0xffffffffu) { best = v; best_i = c; }
        }
        float m = workgroup_max(best);
        uint cand = best == m && best_i != 0xffffffffu ? best_i : 0xffffffffu;
        uint idx = subgroupMin(cand);
        if (gl_NumSubgroups > 1) {
            barrier();
            if (subgroupElect()) wg_index[gl_SubgroupID] = idx;
            barrier();
            idx = wg_index[0];
            for (uint i = 1; i < gl_NumSubgroups; i++) idx = min(idx, wg_index[i]);
            barrier();
        }
        if (lane == 0) o[p.o_off + row] = int(idx);
    }
}
