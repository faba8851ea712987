// Block-quantized weights (the layout is described in csrc/vk/tensor.h): each row of W is cut into
// blocks of 32 integers with one f16 scale, weight = scale * integer. int8 blocks are two texels (four
// values a word), int4 blocks one texel (eight two's-complement nibbles a word, weight 2j in the low
// nibble of byte j). Kernels read a block's texels once and take it apart eight weights at a time
// (a "group": g = 0..3), in registers; the dequantized values scale * q are exact in f32.
// Include after common.glsl; WTYPE is W_Q8 or W_Q4.
const uint W_Q8 = EC_W_Q8, W_Q4 = EC_W_Q4;
const uint QBLOCK = 32u;

uint q_blocks(uint k) { return (k + QBLOCK - 1u) / QBLOCK; }
uint q_texels_per_block() { return WTYPE == W_Q8 ? 2u : 1u; }

// The texels of block b of row n (blocks_per_row blocks a row, the first row at texel first); q[1] is
// unused for int4.
void q_fetch_block(utextureBuffer w, uint first, uint n, uint b, uint blocks_per_row, out uvec4 q[2])
{
    uint t = first + (n * blocks_per_row + b) * q_texels_per_block();
    q[0] = texelFetch(w, int(t));
    q[1] = WTYPE == W_Q8 ? texelFetch(w, int(t + 1u)) : uvec4(0u);
}

// The f16 scale number e of a scale view.
float q_scale(utextureBuffer s, uint e) { return fetch_elem_as(s, e, W_F16); }

ivec4 q_bytes(uint u)
{
    int v = int(u);
    return ivec4(bitfieldExtract(v, 0, 8), bitfieldExtract(v, 8, 8), bitfieldExtract(v, 16, 8), bitfieldExtract(v, 24, 8));
}

ivec4 q_nibbles(uint u, int first)
{
    int v = int(u);
    return ivec4(bitfieldExtract(v, first, 4), bitfieldExtract(v, first + 4, 4), bitfieldExtract(v, first + 8, 4),
                 bitfieldExtract(v, first + 12, 4));
}

// Integers 8g .. 8g+7 of a block, as floats (not yet scaled).
void q_group(uvec4 q[2], uint g, out vec4 lo, out vec4 hi)
{
    if (WTYPE == W_Q8) {
        uvec4 t = q[g >> 1u];
        uint c = (g & 1u) * 2u;
        lo = vec4(q_bytes(t[c]));
        hi = vec4(q_bytes(t[c + 1u]));
    } else {
        uint u = q[0][g];
        lo = vec4(q_nibbles(u, 0));
        hi = vec4(q_nibbles(u, 16));
    }
}
