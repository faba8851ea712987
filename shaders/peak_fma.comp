#version 450
// A plain FMA-throughput probe for benchmarks/peaks.py: four independent vec4 multiply-add chains per
// invocation, so the result is bound by arithmetic, not memory; out[i] keeps the work from being
// optimised away. FLOPs = invocations * iterations * 4 chains * 4 components * 2. Four steps per loop
// iteration: llvmpipe pays for each loop iteration (its exec mask) and for each assignment in a loop
// body (a blend with that mask), and more chains than registers spill; measured on lavapipe, 8 chains
// one step a loop reached half of what this shape does.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

layout(std430, binding = 0) buffer O { float o[]; };
layout(push_constant) uniform Push { ec_peak_fma_push p; };

void main()
{
    vec4 a[4];
    for (int j = 0; j < 4; j++) a[j] = vec4(p.seed * float(j + 1) + float(gl_GlobalInvocationID.x) * 1e-7);
    const vec4 m = vec4(0.999999), c = vec4(1e-7);
    for (uint i = 0; i < p.iterations / 4; i++)  // iterations: a multiple of 4 (benchmarks/peaks.py)
        [[unroll]] for (int r = 0; r < 4; r++)
            [[unroll]] for (int j = 0; j < 4; j++) a[j] = fma(a[j], m, c);
    vec4 s = a[0] + a[1] + a[2] + a[3];
    o[gl_GlobalInvocationID.x] = s.x + s.y + s.z + s.w;
}
