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
