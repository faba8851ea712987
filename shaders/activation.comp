#version 450
// Pointwise activations on a [rows, cols] region: MODE 0 gelu (tanh approximation, SigLIP), 1 gelu
// (exact erf, the projector), 2 silu, 3 silu(gate) * up (the Phi-3/Qwen2 MLP; gate and up are
// column ranges of one or two tensors, so Phi-3's fused gate_up needs no split).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

EC_ACTIVATION_SPEC(EC_SPEC_DECLARE)

layout(std430, binding = 0) readonly buffer In0 { float in0[]; };
layout(std430, binding = 1) readonly buffer In1 { float in1[]; };
layout(std430, binding = 2) buffer Out { float o[]; };

layout(push_constant) uniform Push { ec_activation_push p; };

// erf to about 1e-7 absolute (Abramowitz & Stegun 7.1.26 is too coarse for parity with torch, so
// this uses the complementary-error-function expansion from Numerical Recipes' erfc, 1.2e-7).
float erf_approx(float xv)
{
    float z = abs(xv);
    float t = 1.0 / (1.0 + 0.5 * z);
    float r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
              t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
              t * (-0.82215223 + t * 0.17087277)))))))));
    return xv >= 0.0 ? 1.0 - r : r - 1.0;
}

float act(float v)
{
    if (MODE == 0) {
        float u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    }
    if (MODE == 1) return 0.5 * v * (1.0 + erf_approx(v * 0.7071067811865476));
    return v / (1.0 + exp(-v));
}

void main()
{
    uint n = p.rows * p.cols;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint r = i / p.cols, c = i % p.cols;
        float v = act(in0[p.in0_off + r * p.in0_stride + c]);
        if (MODE == 3) v *= in1[p.in1_off + r * p.in1_stride + c];
        o[p.o_off + i] = v;
    }
}
