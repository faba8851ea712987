#version 450
// RoPE and the KV-cache append in one pass over a sequence's new rows of the fused qkv projection
// (T rows of q | k | v, Hq + 2 Hkv heads of D values): q heads are rotated into q_out (f32), k heads
// rotated and v heads copied into the cache (k heads then v heads, kv_head values apart: the row's tail
// for a token-major cache, a head's whole block for the decoder's head-major one) in the cache's dtype (specialization constant 1: f32, or f16 rounded to nearest). One invocation writes the
// adjacent values 2j and 2j + 1 of one head (one 32-bit word of an f16 cache) and reads the qkv
// projection only, so no invocation reads what another writes. Rotate-half form: value e < rot/2
// pairs with e + rot/2; the table row holds cos | sin of the rot/2 frequencies (see rope.comp).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer QKV { float x[]; };
layout(std430, binding = 1) readonly buffer CS { float cs[]; };
layout(std430, binding = 2) buffer QO { float qo[]; };
layout(std430, binding = 3) buffer KV { uint kv[]; };

layout(push_constant) uniform Push { ec_rope_kv_push p; };

// Value e of head h of row r after RoPE (v heads, and values past rot, unrotated).
float rotated(uint r, uint h, uint e, bool rotate)
{
    uint base = p.src_off + r * p.src_row + h * p.head_dim;
    float v = x[base + e];
    if (!rotate || e >= p.rot_dim) return v;
    uint half_rot = p.rot_dim / 2, i = e % half_rot;
    float c = cs[p.cs_off + r * p.rot_dim + i], s = cs[p.cs_off + r * p.rot_dim + half_rot + i];
    return e < half_rot ? v * c - x[base + e + half_rot] * s : v * c + x[base + e - half_rot] * s;
}

void main()
{
    uint heads = p.Hq + 2 * p.Hkv, pairs = p.head_dim / 2;
    uint n = p.T * heads * pairs;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint j = i % pairs, h = (i / pairs) % heads, r = i / (pairs * heads);
        uint e = 2 * j;
        bool rotate = h < p.Hq + p.Hkv;
        float a = rotated(r, h, e, rotate), b = rotated(r, h, e + 1, rotate);
        if (h < p.Hq) {
            uint o = p.q_off + r * p.q_row + h * p.head_dim + e;
            qo[o] = a;
            qo[o + 1] = b;
        } else {
            uint o = p.kv_off + r * p.kv_row + (h - p.Hq) * p.kv_head + e;  // in cache values
            if (WTYPE == W_F16) {
                kv[o / 2] = packHalf2x16(vec2(a, b));
            } else {
                kv[o] = floatBitsToUint(a);
                kv[o + 1] = floatBitsToUint(b);
            }
        }
    }
}
