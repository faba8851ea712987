"""Each op against NumPy on random inputs, odd sizes and all weight dtypes.

Tolerances: activations are f32 and every op accumulates in f32, so results match a float64 NumPy
reference of the same (dtype-rounded) inputs to ~1e-5 relative; dot products of length K carry
~sqrt(K) * 6e-8 relative error, hence matmul tolerances scale with K. The weight dtype does not loosen
the tolerance, because the reference uses the same rounded weights."""
import math

import numpy as np
import pytest

import eyecare._core as core
from eyecare.core import from_bfloat16, tensor, empty, to_bfloat16, to_numpy

rng = np.random.default_rng(0)
WEIGHT_DTYPES = ["float32", "float16", "bfloat16"]


def rounded(a, dtype):
    """The values a weight of this dtype actually holds."""
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        return from_bfloat16(to_bfloat16(a)).astype(np.float64)
    return a.astype(np.float32).astype(np.float64)


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(got, want, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 7, 1), (1, 64, 33), (3, 1152, 17), (8, 96, 40), (9, 7, 13), (729, 72, 19), (33, 1153, 20)])
def test_matmul(dtype, M, K, N):
    x, w, b = rand(M, K), rand(N, K, scale=0.1), rand(N)
    y = empty((M, N))
    core.op_matmul(tensor(x), tensor(w, dtype), tensor(b, dtype), y)
    want = x.astype(np.float64) @ rounded(w, dtype).T + rounded(b, dtype)
    close(y.numpy(), want, rtol=1e-4, atol=1e-5 * math.sqrt(K))


@pytest.mark.parametrize("M", [1, 5, 64])
def test_matmul_accumulates_into_output(M):
    x, w, r = rand(M, 32), rand(24, 32), rand(M, 24)
    y = tensor(r)
    core.op_matmul(tensor(x), tensor(w, "bfloat16"), None, y, True)
    close(y.numpy(), r + x.astype(np.float64) @ rounded(w, "bfloat16").T, rtol=1e-4, atol=1e-4)


def test_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="columns"):
        core.op_matmul(tensor(rand(2, 8)), tensor(rand(3, 9)), None, empty((2, 3)))
    with pytest.raises(ValueError, match="output"):
        core.op_matmul(tensor(rand(2, 8)), tensor(rand(3, 8)), None, empty((2, 4)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matvec_and_gemm_with_a_weight_over_128_mib(dtype):
    # 36000 x 2048 x 2 bytes = 141 MiB: past lavapipe's 128 MiB storage-buffer range.
    N, K = 36000, 2048
    w16 = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    w = tensor(w16, dtype)
    assert w.nbytes > 128 * 1024 * 1024
    wr = rounded(w16, dtype)
    for M in (1, 9):
        x = rand(M, K)
        y = empty((M, N))
        core.op_matmul(tensor(x), w, None, y)
        close(y.numpy(), x.astype(np.float64) @ wr.T, rtol=1e-4, atol=1e-3)


def test_matmul_output_over_128_mib_is_chunked():
    # 2100 x 16384 f32 outputs = 131 MiB (the logits of a long prompt are like this).
    M, K, N = 2100, 8, 16384
    x, w = rand(M, K), rand(N, K)
    y = empty((M, N))
    core.op_matmul(tensor(x), tensor(w, "bfloat16"), None, y)
    got = y.numpy()
    want = x.astype(np.float64) @ rounded(w, "bfloat16").T
    close(got[::97], want[::97], rtol=1e-4, atol=1e-4)
    close(got[-3:], want[-3:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,nb", [(1, 1), (7, 7), (729 * 1152, 729 * 1152), (4 * 729 * 16, 729 * 16), (10, 1)])
def test_add_with_broadcast_and_scale(n, nb):
    a, b = rand(n), rand(nb)
    out = empty((n,))
    core.op_add(tensor(a), tensor(b), out, 0.25)
    close(out.numpy(), a + 0.25 * np.tile(b, n // nb))


def test_add_rejects_non_dividing_broadcast():
    with pytest.raises(ValueError, match="divide"):
        core.op_add(tensor(rand(10)), tensor(rand(3)), empty((10,)))


def test_add_over_128_mib():
    n = 34_000_000  # 136 MB of f32
    a = np.arange(n, dtype=np.float32)
    out = empty((n,))
    core.op_add(tensor(a), tensor(np.ones(n, np.float32)), out)
    got = out.numpy()
    assert got[0] == 1 and got[-1] == a[-1] + 1 and np.array_equal(got[::1_000_003], a[::1_000_003] + 1)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (729, 1152), (2, 1153)])
def test_layernorm(dtype, rows, cols):
    x, w, b = rand(rows, cols, scale=3) + 1, rand(cols), rand(cols)
    y = empty((rows, cols))
    core.op_layernorm(tensor(x), tensor(w, dtype), tensor(b, dtype), 1e-6, y)
    xd = x.astype(np.float64)
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6) * rounded(w, dtype) + rounded(b, dtype)
    close(y.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 7), (17, 3072), (2, 1153)])
def test_rmsnorm(dtype, rows, cols):
    x, w = rand(rows, cols, scale=2), rand(cols)
    y = empty((rows, cols))
    core.op_rmsnorm(tensor(x), tensor(w, dtype), 1e-5, y)
    xd = x.astype(np.float64)
    want = xd / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-5) * rounded(w, dtype)
    close(y.numpy(), want, rtol=1e-4, atol=1e-5)


def gelu_erf(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (729, 4304)])
def test_activations(kind, shape):
    x = rand(*shape, scale=4)
    x.flat[0] = 30.0  # far tails must not overflow
    if x.size > 1:
        x.flat[1] = -30.0
    y = empty(shape)
    core.op_activation(kind, tensor(x), y)
    xd = x.astype(np.float64)
    if kind == "gelu":
        sample = slice(None, 5000)
        want = gelu_erf(xd.reshape(-1)[sample])
        close(y.numpy().reshape(-1)[sample], want, rtol=1e-5, atol=2e-6)
        return
    if kind == "gelu_tanh":
        want = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
    else:
        want = xd / (1 + np.exp(-xd))
    close(y.numpy(), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_silu_mul(fused):
    M, F = 6, 37
    g, u = rand(M, F, scale=3), rand(M, F)
    y = empty((M, F))
    if fused:
        core.op_silu_mul(tensor(np.concatenate([g, u], axis=1)), None, y)
    else:
        core.op_silu_mul(tensor(g), tensor(u), y)
    gd = g.astype(np.float64)
    close(y.numpy(), gd / (1 + np.exp(-gd)) * u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (4, 32064), (2, 1153)])
def test_softmax(rows, cols):
    x = rand(rows, cols, scale=5)
    y = empty((rows, cols))
    core.op_softmax(tensor(x), y, 0.5)
    e = np.exp(0.5 * x.astype(np.float64) - (0.5 * x).max(-1, keepdims=True))
    close(y.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-7)


def rope_reference(x, cos, sin, heads, dim, rot):
    out = x.astype(np.float64).copy()
    T = x.shape[0]
    for h in range(heads):
        seg = out[:, h * dim:h * dim + rot]
        x1, x2 = seg[:, :rot // 2].copy(), seg[:, rot // 2:].copy()
        c, s = np.concatenate([cos, cos], 1)[:T], np.concatenate([sin, sin], 1)[:T]
        rotated = np.concatenate([-x2, x1], 1)
        out[:, h * dim:h * dim + rot] = seg * c + rotated * s
    return out


@pytest.mark.parametrize("heads,dim,rot", [(1, 2, 2), (3, 8, 8), (4, 72, 72), (2, 96, 64)])
def test_rope(heads, dim, rot):
    T = 11
    x = rand(T, heads * dim)
    inv = 1.0 / (10000 ** (np.arange(0, rot, 2) / rot))
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(ang) * 1.19, np.sin(ang) * 1.19  # LongRoPE's attention scale multiplies both
    table = np.concatenate([cos, sin], 1).astype(np.float32)
    t = tensor(x)
    core.op_rope(t, tensor(table), heads, dim, rot)
    close(t.numpy(), rope_reference(x, cos.astype(np.float32), sin.astype(np.float32), heads, dim, rot), rtol=1e-5, atol=1e-5)


def test_rope_on_a_column_range_of_fused_qkv():
    T, H, D = 5, 2, 8
    qkv = rand(T, 3 * H * D)
    ang = np.arange(T)[:, None] * (1.0 / (10000 ** (np.arange(0, D, 2) / D)))[None]
    table = np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    t = tensor(qkv)
    core.op_rope(t, tensor(table), H, D, D, H * D)  # rotate k only
    want = qkv.astype(np.float64).copy()
    want[:, H * D:2 * H * D] = rope_reference(qkv[:, H * D:2 * H * D], table[:, :D // 2], table[:, D // 2:], H, D, D)
    close(t.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("T,H,Hkv,D,rot", [(1, 4, 4, 16, 16), (3, 14, 2, 8, 8), (5, 2, 1, 96, 64)])
def test_rope_kv_rotates_q_and_appends_k_v_to_the_cache(kv_dtype, T, H, Hkv, D, rot):
    # One sequence's T new rows of q | k | v: q rotated into q_out, k rotated and v copied into cache rows
    # 4 .. 4 + T (rows before and after untouched), in the cache's dtype.
    qkv = rand(T, (H + 2 * Hkv) * D)
    ang = (4 + np.arange(T))[:, None] * (1.0 / (10000 ** (np.arange(0, rot, 2) / rot)))[None]
    table = np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    cache0 = rand(12, 2 * Hkv * D).astype(kv_dtype)
    q, cache = empty((T, H * D)), tensor(cache0, kv_dtype)
    core.op_rope_kv(tensor(qkv), tensor(table), H, Hkv, D, rot, q, cache, 4)
    cos, sin = table[:, :rot // 2], table[:, rot // 2:]
    close(q.numpy(), rope_reference(qkv[:, :H * D], cos, sin, H, D, rot), rtol=1e-5, atol=1e-5)
    k = rope_reference(qkv[:, H * D:(H + Hkv) * D], cos, sin, Hkv, D, rot)
    want = cache0.astype(np.float64)
    want[4:4 + T] = np.concatenate([k, qkv[:, (H + Hkv) * D:]], 1)
    got = cache.numpy().astype(np.float64)
    if kv_dtype == "float16":  # rounded once, from the f32 result: at most half an f16 ulp from the exact value
        close(got, want, rtol=2 ** -11, atol=1e-6)
    else:
        close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:4], cache0[:4])
    np.testing.assert_array_equal(got[4 + T:], cache0[4 + T:])


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("T,H,Hkv,D,rot", [(1, 4, 4, 16, 16), (3, 14, 2, 8, 8)])
def test_rope_kv_appends_to_a_head_major_cache(kv_dtype, T, H, Hkv, D, rot):
    # The decoder's cache layout, [2 Hkv, rows, D]: head j's new rows 4 .. 4 + T land in its own block (k heads,
    # then v heads); every other value stays.
    rows = 12
    qkv = rand(T, (H + 2 * Hkv) * D)
    ang = (4 + np.arange(T))[:, None] * (1.0 / (10000 ** (np.arange(0, rot, 2) / rot)))[None]
    table = np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    cache0 = rand(2 * Hkv, rows, D).astype(kv_dtype)
    q, cache = empty((T, H * D)), tensor(cache0, kv_dtype)
    core.op_rope_kv(tensor(qkv), tensor(table), H, Hkv, D, rot, q, cache, 4, True)
    cos, sin = table[:, :rot // 2], table[:, rot // 2:]
    k = rope_reference(qkv[:, H * D:(H + Hkv) * D], cos, sin, Hkv, D, rot)
    new = np.concatenate([k, qkv[:, (H + Hkv) * D:]], 1).reshape(T, 2 * Hkv, D).transpose(1, 0, 2)
    want = cache0.astype(np.float64)
    want[:, 4:4 + T] = new
    got = cache.numpy().astype(np.float64)
    close(got, want, rtol=2 ** -11 if kv_dtype == "float16" else 1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, :4], cache0[:, :4])
    np.testing.assert_array_equal(got[:, 4 + T:], cache0[:, 4 + T:])


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("M,K,N,bias", [(1, 64, 40, False), (3, 96, 33, True), (1, 37, 20, True), (12, 64, 24, False)])
def test_rmsnorm_matmul(dtype, M, K, N, bias):
    # Decode (M <= 8): the norm inside the mat-vec; aligned and unaligned K; M = 12: rmsnorm then the GEMM.
    x, g, w, b, y0 = rand(M, K, scale=2), rand(K), rand(N, K, scale=0.1), rand(N), rand(M, N)
    y = tensor(y0)
    core.op_rmsnorm_matmul(tensor(x), tensor(g, dtype), 1e-5, empty((M, K)), tensor(w, dtype), tensor(b, dtype) if bias else None,
                           y, True)
    xd = x.astype(np.float64)
    h = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-5) * rounded(g, dtype)
    want = y0 + h @ rounded(w, dtype).T + (rounded(b, dtype) if bias else 0)
    close(y.numpy(), want, rtol=1e-4, atol=1e-5 * math.sqrt(K))


@pytest.mark.parametrize("M,F,N", [(1, 48, 40), (2, 13, 24), (12, 48, 8)])
def test_silu_mul_matmul(M, F, N):
    gu, w = rand(M, 2 * F, scale=2), rand(N, F, scale=0.1)
    y = empty((M, N))
    core.op_silu_mul_matmul(tensor(gu), empty((M, F)), tensor(w, "bfloat16"), y)
    g, u = gu[:, :F].astype(np.float64), gu[:, F:].astype(np.float64)
    close(y.numpy(), (g / (1 + np.exp(-g)) * u) @ rounded(w, "bfloat16").T, rtol=1e-4, atol=1e-5 * math.sqrt(F))


def attention_reference(q, k, v, lens, B, T, S, H, Hkv, D, causal, scale):
    out = np.zeros((B * T, H * D))
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            qs = q[b * T:(b + 1) * T, h * D:(h + 1) * D].astype(np.float64)
            ks = k[b * S:b * S + lens[b], hk * D:(hk + 1) * D].astype(np.float64)
            vs = v[b * S:b * S + lens[b], hk * D:(hk + 1) * D].astype(np.float64)
            s = qs @ ks.T * scale
            if causal:
                pos = lens[b] - T + np.arange(T)
                s = np.where(np.arange(lens[b])[None, :] <= pos[:, None], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b * T:(b + 1) * T, h * D:(h + 1) * D] = (p / p.sum(-1, keepdims=True)) @ vs
    return out


@pytest.mark.parametrize("B,T,S,H,Hkv,D,causal,lens", [
    (1, 1, 1, 1, 1, 4, True, [1]),
    (1, 7, 7, 2, 2, 8, True, [7]),
    (2, 1, 20, 14, 2, 16, True, [13, 20]),       # decode of two sequences, 7 query heads per KV head
    (1, 5, 40, 4, 1, 128, True, [25]),           # prefill of 5 tokens after 20 cached
    (3, 33, 33, 3, 3, 72, False, [33, 33, 33]),  # vision: non-causal, head dim 72
    (1, 9, 9, 2, 1, 6, False, [9]),              # head dim not a multiple of 4
])
def test_attention(B, T, S, H, Hkv, D, causal, lens):
    q, k, v = rand(B * T, H * D), rand(B * S, Hkv * D), rand(B * S, Hkv * D)
    out = empty((B * T, H * D))
    scale = D ** -0.5
    core.op_attention(tensor(q), tensor(k), tensor(v), out, tensor(np.array(lens, np.int32)), B, T, S, H, Hkv, D, causal, scale)
    close(out.numpy(), attention_reference(q, k, v, lens, B, T, S, H, Hkv, D, causal, scale), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("B,S,H,Hkv,D,lens,splits", [
    (1, 40, 4, 4, 16, [40], 1),             # one key range per KV head: the output written directly
    (2, 50, 14, 2, 8, [13, 50], 4),         # 7 query heads per KV head, 4 key ranges, one range empty for b=0
    (1, 300, 2, 2, 96, [300], 0),           # Phi-3's head dim, ranges chosen by the op
    (2, 70, 8, 1, 128, [1, 70], 5),         # Qwen2's head dim, a sequence of one key
    (1, 9, 3, 3, 6, [9], 2),                # head dim not a multiple of 8: the element-wise path
])
def test_attention_decode_split_k(kv_dtype, B, S, H, Hkv, D, lens, splits):
    # One query token per sequence (decode): the split-K kernel and, with several ranges, the combine
    # kernel; K and V in the KV cache's dtype (the reference holds the same rounded values).
    q, k, v = rand(B, H * D), rand(B * S, Hkv * D), rand(B * S, Hkv * D)
    out = empty((B, H * D))
    partials = empty((B * H * 8, D + 2))
    scale = D ** -0.5
    core.op_attention(tensor(q), tensor(k, kv_dtype), tensor(v, kv_dtype), out, tensor(np.array(lens, np.int32)), B, 1, S,
                      H, Hkv, D, True, scale, partials, splits, max(lens))
    want = attention_reference(q, rounded(k, kv_dtype), rounded(v, kv_dtype), lens, B, 1, S, H, Hkv, D, True, scale)
    close(out.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("B,T,S,H,Hkv,D,lens", [
    (2, 1, 50, 14, 2, 8, [13, 50]),    # decode, 7 query heads per KV head
    (1, 1, 300, 4, 4, 64, [300]),      # decode, one query head per KV head (keys across lanes on a CPU)
    (2, 5, 40, 4, 1, 128, [25, 40]),   # prefill after cached keys (the tiled kernel on a CPU)
    (1, 9, 9, 2, 1, 6, [9]),           # head dim not a multiple of 4: the general kernel
])
def test_attention_reads_a_head_major_cache(kv_dtype, B, T, S, H, Hkv, D, lens):
    # The decoder's cache layout: per sequence, each KV head's keys contiguous ([B, Hkv, S, D]); the same
    # keys as test_attention's token-major rows.
    q, k, v = rand(B * T, H * D), rand(B * S, Hkv * D), rand(B * S, Hkv * D)
    head_major = lambda a: np.ascontiguousarray(a.reshape(B, S, Hkv, D).transpose(0, 2, 1, 3))
    out = empty((B * T, H * D))
    partials = empty((B * H * 8, D + 2))
    scale = D ** -0.5
    core.op_attention(tensor(q), tensor(head_major(k), kv_dtype), tensor(head_major(v), kv_dtype), out,
                      tensor(np.array(lens, np.int32)), B, T, S, H, Hkv, D, True, scale, partials, 3 if T == 1 else 0, max(lens), True)
    want = attention_reference(q, rounded(k, kv_dtype), rounded(v, kv_dtype), lens, B, T, S, H, Hkv, D, True, scale)
    close(out.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("S,H,Hkv,D", [
    (3000, 14, 2, 128),  # Qwen2's query group and head dim: over 60 loop iterations a key in the GPU layout
    (70000, 1, 1, 8),    # past 65536 keys: more than one key range even on a CPU device
])
def test_attention_decode_over_long_key_ranges(S, H, Hkv, D):
    # llvmpipe ends a shader invocation's loops, silently, after 65535 iterations in all; one key range asked
    # for (splits=1) over this many keys must still attend over every key (the op adds ranges where needed).
    q, k, v = rand(1, H * D), rand(S, Hkv * D), rand(S, Hkv * D)
    out = empty((1, H * D))
    partials = empty((H * 64, D + 2))  # room for the ranges the emulated GPU layout needs on lavapipe
    scale = D ** -0.5
    core.op_attention(tensor(q), tensor(k, "float16"), tensor(v, "float16"), out, tensor(np.array([S], np.int32)), 1, 1, S,
                      H, Hkv, D, True, scale, partials, 1, S)
    want = attention_reference(q, rounded(k, "float16"), rounded(v, "float16"), [S], 1, 1, S, H, Hkv, D, True, scale)
    close(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_attention_decode_refuses_more_ranges_than_the_partials_hold():
    S, D = 70000, 8
    q, k = rand(1, D), tensor(rand(S, D), "float16")
    with pytest.raises(ValueError, match="key ranges"):
        core.op_attention(tensor(q), k, k, empty((1, D)), tensor(np.array([S], np.int32)), 1, 1, S, 1, 1, D, True, 1.0,
                          None, 0, S)


@pytest.mark.parametrize("B,T,S,H,Hkv,D,lens", [(1, 5, 40, 4, 1, 128, [25]), (2, 3, 12, 14, 2, 8, [7, 12]), (1, 4, 9, 2, 2, 6, [9])])
def test_attention_prefill_reads_an_f16_cache(B, T, S, H, Hkv, D, lens):
    q, k, v = rand(B * T, H * D), rand(B * S, Hkv * D), rand(B * S, Hkv * D)
    out = empty((B * T, H * D))
    scale = D ** -0.5
    core.op_attention(tensor(q), tensor(k, "float16"), tensor(v, "float16"), out, tensor(np.array(lens, np.int32)), B, T, S,
                      H, Hkv, D, True, scale)
    want = attention_reference(q, rounded(k, "float16"), rounded(v, "float16"), lens, B, T, S, H, Hkv, D, True, scale)
    close(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_copy_to_f16_rounds_like_numpy():
    # A block of an f32 tensor (column range, row stride) into a column range of an f16 tensor: the KV append.
    src = rand(6, 20, scale=100.0)
    src[0, 2:6] = [65504.0, 3e-7, -0.0, 2049.0]  # largest f16, an f16 subnormal, a sign, a tie rounded to even
    dst = tensor(np.zeros((5, 24), np.float16))
    core.op_copy_to_f16(tensor(src), 2, 20, dst, 4, 24, 5, 14)
    want = np.zeros((5, 24), np.float16)
    want[:, 4:18] = src[:5, 2:16].astype(np.float16)
    np.testing.assert_array_equal(dst.numpy().view(np.uint16), want.view(np.uint16))
    with pytest.raises(ValueError, match="even"):
        core.op_copy_to_f16(tensor(src), 0, 20, dst, 3, 24, 2, 4)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_embedding(dtype):
    V, D = 50, 24
    table = rand(V, D)
    ids = np.array([0, 49, 7, 7, 3], np.int32)
    out = empty((5, D))
    core.op_embedding(tensor(ids), tensor(table, dtype), out)
    close(out.numpy(), rounded(table, dtype)[ids], rtol=0, atol=0)


def test_embedding_table_over_128_mib():
    V, D = 70000, 1024  # bf16: 137 MiB
    table = rand(V, D)
    ids = np.array([0, 69999, 35000, 12345], np.int32)
    out = empty((4, D))
    core.op_embedding(tensor(ids), tensor(table, "bfloat16"), out)
    close(out.numpy(), rounded(table, "bfloat16")[ids], rtol=0, atol=0)


def test_concat_and_copy():
    parts = [rand(729, 1152), rand(729, 1152), rand(729, 7)]
    out = empty((729, 2311))
    core.op_concat([tensor(p) for p in parts], out)
    close(out.numpy(), np.concatenate(parts, 1), rtol=0, atol=0)
    src, dst = rand(4, 10), np.zeros((6, 12), np.float32)
    t = tensor(dst)
    core.op_copy(tensor(src), 2, 10, t, 13, 12, 3, 5)  # rows 0..2, cols 2..6 -> rows 1..3, cols 1..5
    want = dst.copy()
    want[1:4, 1:6] = src[0:3, 2:7]
    close(t.numpy(), want, rtol=0, atol=0)


@pytest.mark.parametrize("h,w,oh,ow", [(27, 27, 14, 14), (27, 27, 9, 9), (5, 7, 2, 3), (1, 1, 1, 1), (27, 27, 27, 27)])
def test_pool2d_matches_torch(h, w, oh, ow):
    torch = pytest.importorskip("torch")
    B, C = 3, 5
    x = rand(B, h * w, C)
    y = empty((B, oh * ow, C))
    core.op_pool2d(tensor(x), B, h, w, oh, ow, y)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).reshape(B, h, w, C).permute(0, 3, 1, 2), (oh, ow))
    close(y.numpy(), ref.permute(0, 2, 3, 1).reshape(B, oh * ow, C).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (2, 152064), (5, 1153)])
def test_argmax(rows, cols):
    x = rand(rows, cols)
    if cols > 3:
        x[0, 1] = x[0, 3] = x.max() + 1  # ties: the first index, as torch.argmax
    out = empty((rows,), "int32")
    core.op_argmax(tensor(x), out)
    assert out.numpy().tolist() == np.argmax(x, -1).tolist()


@pytest.mark.parametrize("S", [28, 34])  # 34: a remainder the convolution drops, as 384 px / 14 in SigLIP
def test_patchify_matches_conv2d(S):
    torch = pytest.importorskip("torch")
    B, C, P = 2, 3, 14
    px, w = rand(B, C, S, S), rand(6, C, P, P)
    patches = empty((B * (S // P) ** 2, C * P * P))
    core.op_patchify(tensor(px), P, patches)
    y = empty((B * (S // P) ** 2, 6))
    core.op_matmul(patches, tensor(w.reshape(6, -1)), None, y)
    ref = torch.nn.functional.conv2d(torch.from_numpy(px), torch.from_numpy(w), stride=P).flatten(2).transpose(1, 2)
    close(y.numpy(), ref.reshape(-1, 6).numpy(), rtol=1e-4, atol=1e-4)


def test_zero_and_bfloat16_round_trip():
    t = tensor(rand(3, 5))
    core.op_zero(t)
    assert not t.numpy().any()
    vals = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0], np.float32)
    b = tensor(vals, "bfloat16")
    assert b.dtype == "bfloat16" and b.shape == (5,)
    close(to_numpy(b), rounded(vals, "bfloat16"), rtol=0, atol=0)


def test_batched_ops_run_in_one_submit():
    x = tensor(rand(4, 8))
    y, z = empty((4, 8)), empty((4, 8))
    core.begin()
    core.op_activation("silu", x, y)
    core.op_add(y, x, z)
    core.submit()
    xd = x.numpy().astype(np.float64)
    close(z.numpy(), xd / (1 + np.exp(-xd)) + xd)


def test_freed_tensor_raises():
    t = tensor(rand(3))
    t.free()
    assert t.freed
    with pytest.raises(ValueError, match="freed"):
        t.numpy()
