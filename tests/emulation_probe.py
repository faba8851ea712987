"""Run by tests/test_emulation.py in a child process, under the EYECARE_EMULATE mode it sets: runs one op of each
path an emulation mode changes, on tensors sized so that small-limits splits them (past 2^20 texels = 16 MiB), checks
every result against NumPy here, and prints one JSON line: the errors, the runtime's counters and the device info.

Standalone so that each mode gets a fresh device context (the mode is read when the context is made)."""
import json

import numpy as np

import eyecare._core as core
from eyecare.core import empty, from_bfloat16, tensor, to_bfloat16

rng = np.random.default_rng(7)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def rel_err(got, want):
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(1e-30, float(np.max(np.abs(want)))))


errors = {}

# matvec (decode) and matmul (prefill) with a bfloat16 weight of 4100 x 2056 (16.1 MiB: past 16 MiB) and a bias.
N, K = 4100, 2056
w = rand(N, K)
wr = from_bfloat16(to_bfloat16(w)).astype(np.float64)
bias = rand(N)
wt, bt = tensor(w, "bfloat16"), tensor(bias)
for name, M in (("matvec", 2), ("matmul", 9)):
    x = rand(M, K)
    y = empty((M, N))
    core.op_matmul(tensor(x), wt, bt, y)
    errors[name] = rel_err(y.numpy(), x.astype(np.float64) @ wr.T + bias)

# A GEMM whose x (2100 x 2056 f32, 16.5 MiB) is itself past the texel reach: x is read through texel views, so
# its rows go in chunks; the last rows of a chunk and the first of the next must both land.
x3 = rand(2100, K)
w3 = rand(24, K)
y3 = empty((2100, 24))
core.op_matmul(tensor(x3), tensor(w3, "bfloat16"), None, y3)
errors["matmul_long_x"] = rel_err(y3.numpy(), x3.astype(np.float64) @ from_bfloat16(to_bfloat16(w3)).astype(np.float64).T)

# An f32 weight whose rows are not whole texels (K = 1027): the unaligned path, split too.
N2, K2 = 4097, 1027
w2, x2 = rand(N2, K2), rand(3, K2)
y2 = empty((3, N2))
core.op_matmul(tensor(x2), tensor(w2), None, y2)
errors["matvec_unaligned"] = rel_err(y2.numpy(), x2.astype(np.float64) @ w2.astype(np.float64).T)

# Embedding gather from an f32 table of 4200 x 1024 (16.4 MiB), ids from every piece.
table = rand(4200, 1024)
ids = np.array([0, 4199, 2100, 4095, 4096, 17], np.int32)
emb = empty((len(ids), 1024))
core.op_embedding(tensor(ids), tensor(table), emb)
errors["embedding"] = rel_err(emb.numpy(), table[ids])

# Decode attention over a cache of 3 sequences x 1100 rows x 1280 floats (16.1 MiB per K and V): split by sequence.
B, T, S, H, Hkv, D = 3, 1, 1100, 20, 10, 128
lens = np.array([5, 1100, 37], np.int32)
q, k, v = rand(B * T, H * D), rand(B * S, Hkv * D), rand(B * S, Hkv * D)
att = empty((B * T, H * D))
core.op_attention(tensor(q), tensor(k), tensor(v), att, tensor(lens), B, T, S, H, Hkv, D, True, D ** -0.5)
want = np.zeros((B * T, H * D))
for b in range(B):
    for h in range(H):
        hk = h // (H // Hkv)
        ks = k[b * S:b * S + lens[b], hk * D:(hk + 1) * D].astype(np.float64)
        vs = v[b * S:b * S + lens[b], hk * D:(hk + 1) * D].astype(np.float64)
        s = ks @ q[b, h * D:(h + 1) * D].astype(np.float64) * D ** -0.5
        p = np.exp(s - s.max())
        want[b, h * D:(h + 1) * D] = p @ vs / p.sum()
errors["attention"] = rel_err(att.numpy(), want)

# The same decode attention over an f16 cache (the decoder's default), split-K over the keys with the partial results
# merged by the combine kernel; K and V each 2 x 4200 rows x 1024 f16 values (16.4 MiB: split by sequence).
B2, S2, H2, Hkv2, D2 = 2, 4200, 32, 8, 128
lens2 = np.array([4200, 700], np.int32)
q2 = rand(B2, H2 * D2)
kv2 = rand(B2 * S2, 2 * Hkv2 * D2).astype(np.float16)  # k | v per row, as the decoder's cache holds them
kt, vt = tensor(np.ascontiguousarray(kv2[:, :Hkv2 * D2]), "float16"), tensor(np.ascontiguousarray(kv2[:, Hkv2 * D2:]), "float16")
att2, part2 = empty((B2, H2 * D2)), empty((B2 * H2 * 16, D2 + 2))
core.op_attention(tensor(q2), kt, vt, att2, tensor(lens2), B2, 1, S2, H2, Hkv2, D2, True, D2 ** -0.5, part2, 6, 4200)
want2 = np.zeros((B2, H2 * D2))
for b in range(B2):
    for h in range(H2):
        hk = h // (H2 // Hkv2)
        ks = kv2[b * S2:b * S2 + lens2[b], hk * D2:(hk + 1) * D2].astype(np.float64)
        vs = kv2[b * S2:b * S2 + lens2[b], (Hkv2 + hk) * D2:(Hkv2 + hk + 1) * D2].astype(np.float64)
        s = ks @ q2[b, h * D2:(h + 1) * D2].astype(np.float64) * D2 ** -0.5
        p = np.exp(s - s.max())
        want2[b, h * D2:(h + 1) * D2] = p @ vs / p.sum()
errors["attention_f16_split_k"] = rel_err(att2.numpy(), want2)

# Prefill attention (9 queries per sequence, causal) over that f16 cache: the tiled kernel on a CPU device.
T3 = 9
q3 = rand(B2 * T3, H2 * D2)
att3 = empty((B2 * T3, H2 * D2))
core.op_attention(tensor(q3), kt, vt, att3, tensor(lens2), B2, T3, S2, H2, Hkv2, D2, True, D2 ** -0.5)
want3 = np.zeros((B2 * T3, H2 * D2))
for b in range(B2):
    for h in range(H2):
        hk = h // (H2 // Hkv2)
        ks = kv2[b * S2:b * S2 + lens2[b], hk * D2:(hk + 1) * D2].astype(np.float64)
        vs = kv2[b * S2:b * S2 + lens2[b], (Hkv2 + hk) * D2:(Hkv2 + hk + 1) * D2].astype(np.float64)
        s = q3[b * T3:(b + 1) * T3, h * D2:(h + 1) * D2].astype(np.float64) @ ks.T * D2 ** -0.5
        pos = lens2[b] - T3 + np.arange(T3)
        s = np.where(np.arange(lens2[b])[None, :] <= pos[:, None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        want3[b * T3:(b + 1) * T3, h * D2:(h + 1) * D2] = p @ vs / p.sum(-1, keepdims=True)
errors["attention_prefill_f16"] = rel_err(att3.numpy(), want3)

# Decode's fused mat-vecs with the split weight above: RMSNorm inside the projection, silu(gate) * up inside down's.
xn = rand(2, K)
gn = rand(K)
yn = empty((2, N))
core.op_rmsnorm_matmul(tensor(xn), tensor(gn), 1e-6, empty((2, K)), wt, bt, yn)
xnd = xn.astype(np.float64)
hn = xnd / np.sqrt((xnd ** 2).mean(-1, keepdims=True) + 1e-6) * gn
errors["rmsnorm_matvec"] = rel_err(yn.numpy(), hn @ wr.T + bias)
gu = rand(2, 2 * K)
ys2 = empty((2, N))
core.op_silu_mul_matmul(tensor(gu), empty((2, K)), wt, ys2)
gd, ud = gu[:, :K].astype(np.float64), gu[:, K:].astype(np.float64)
errors["silu_mul_matvec"] = rel_err(ys2.numpy(), (gd / (1 + np.exp(-gd)) * ud) @ wr.T)

# RoPE with the append into an f16 cache (rows 3 and 4 of 6).
qkv4 = rand(2, (4 + 2 * 2) * 16)
ang = (3 + np.arange(2))[:, None] * (1.0 / (10000 ** (np.arange(0, 16, 2) / 16)))[None]
tab = np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
q4, cache4 = empty((2, 64)), tensor(np.zeros((6, 64), np.float16), "float16")
core.op_rope_kv(tensor(qkv4), tensor(tab), 4, 2, 16, 16, q4, cache4, 3)
x4 = qkv4.astype(np.float64).reshape(2, 8, 16)
c4, s4 = np.concatenate([np.cos(ang)] * 2, 1)[:, None], np.concatenate([np.sin(ang)] * 2, 1)[:, None]
r4 = x4 * c4 + np.concatenate([-x4[..., 8:], x4[..., :8]], -1) * s4
errors["rope_kv"] = max(rel_err(q4.numpy(), r4[:, :4].reshape(2, 64)),
                        rel_err(cache4.numpy()[3:5].astype(np.float64),
                                np.concatenate([r4[:, 4:6].reshape(2, 32), qkv4[:, 96:]], 1).astype(np.float16)))

# Reductions (several subgroups per workgroup under gpu-workgroups): rmsnorm, layernorm, softmax, argmax, with rows
# longer and shorter than a workgroup; one argmax row all -inf (masked), which must give index 0 as torch does.
xr = rand(5, 1000)
g = rand(1000)
yr = empty((5, 1000))
core.op_rmsnorm(tensor(xr), tensor(g), 1e-6, yr)
xd = xr.astype(np.float64)
errors["rmsnorm"] = rel_err(yr.numpy(), xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6) * g)
core.op_layernorm(tensor(xr), tensor(g), tensor(g), 1e-6, yr)
mu = xd.mean(-1, keepdims=True)
errors["layernorm"] = rel_err(yr.numpy(), (xd - mu) / np.sqrt(((xd - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * g + g)
xs = rand(3, 77)
ys = empty((3, 77))
core.op_softmax(tensor(xs), ys, 0.5)
e = np.exp(0.5 * xs.astype(np.float64) - 0.5 * xs.max(-1, keepdims=True))
errors["softmax"] = rel_err(ys.numpy(), e / e.sum(-1, keepdims=True))
xa = rand(4, 3000)
xa[2, :] = -np.inf
xa[3, 10:] = -np.inf
am = empty((4,), "int32")
core.op_argmax(tensor(xa), am)
errors["argmax"] = float(np.sum(am.numpy() != np.argmax(xa, -1)))
# Logits of 30 rows over a 150000-token vocabulary (17.2 MiB): past small-limits' storage range, in row chunks.
xl = rand(30, 150000)
aml = empty((30,), "int32")
core.op_argmax(tensor(xl), aml)
errors["argmax_chunked"] = float(np.sum(aml.numpy() != np.argmax(xl, -1)))

# A batch of dependent ops (each reads what the one before wrote), with a fill in the middle: the barriers, and
# under split-submits a batch submitted in pieces.
a, one = tensor(np.zeros(4096, np.float32)), tensor(np.ones(4096, np.float32))
before = core.counters()["submits"]
core.begin()
for i in range(12):
    core.op_add(a, one, a)
    if i == 5:
        core.op_zero(a)
core.submit()
errors["chain"] = rel_err(a.numpy(), np.full(4096, 6.0))
batch_submits = core.counters()["submits"] - before

print(json.dumps({"errors": errors, "counters": core.counters(), "batch_submits": batch_submits,
                  "device": core.device_info(), "validation_messages": core.validation_messages()}))
