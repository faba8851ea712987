#version 450
// A plain FMA-throughput probe for benchmarks/ops.py: eight independent vec4 multiply-add chains per
// invocation, so the result is bound by arithmetic, not memory. out[i] keeps the work from being
// optimised away. FLOPs = invocations * iterations * 8 chains * 4 lanes * 2.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) buffer O { float o[]; };
layout(push_constant) uniform Push { ec_peak_fma_push p; };

void main()
{
    vec4 a[8];
    for (int j = 0; j < 8; j++) a[j] = vec4(p.seed * float(j + 1) + float(gl_GlobalInvocationID.x) * 1e-7);
    const vec4 m = vec4(0.999999), c = vec4(1e-7);
    for (uint i = 0; i < p.iterations; i++)
        for (int j = 0; j < 8; j++) a[j] = fma(a[j], m, c);
    vec4 s = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    o[gl_GlobalInvocationID.x] = s.x + s.y + s.z + s.w;
}
