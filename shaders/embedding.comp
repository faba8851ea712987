#version 450
// out[t, :] = table[ids[t], :]: the token embedding gather, reading the (possibly > 128 MiB) table in
// its stored dtype through a texel view.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Ids { int ids[]; };
layout(binding = 1) uniform utextureBuffer Table;
layout(std430, binding = 2) buffer O { float o[]; };

layout(push_constant) uniform Push { ec_embedding_push p; };

void main()
{
    uint n = p.n_ids * p.dim;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += stride) {
        uint t = i / p.dim, c = i % p.dim;
        // ids are checked on the host; those outside this dispatch's piece of the table are another's
        int id = ids[t] - int(p.id0);
        if (id < 0 || id >= int(p.vocab)) continue;
        o[p.o_off + i] = fetch_elem(Table, p.t_off + uint(id) * p.dim + c);
    }
}
