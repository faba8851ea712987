"""int8 / int4 block-quantized weights: the quantizer against the formats' definitions, the packed layout's
round trip through the device, and the quantized kernels (matvec_q for decode, matmul_q for prefill and
vision) against NumPy dequantize-then-matmul.

Tolerances: the dequantized weights (float16 scale x small integer) are exact in float32, so the kernels
differ from a float64 reference of the same dequantized weights only by float32 accumulation, as the
float kernels do in test_ops.py."""
import math

import numpy as np
import pytest

import eyecare._core as core
from eyecare import quantize as Q
from eyecare.core import empty, tensor

rng = np.random.default_rng(7)
METHODS = ["int8", "int4"]


def reference_blocks(w: np.ndarray, method: str):
    """The block formats written out from their definition, one block at a time (slow, obvious):
    int8: d = max|w| / 127, q = round(w / d) in -127..127; int4: d = (the weight of largest magnitude) / -8,
    q = round(w / d) in -8..7; d stored as float16 and q rounded with the stored d."""
    n, k = w.shape
    nb = -(-k // 32)
    q = np.zeros((n, nb * 32), np.int64)
    d = np.zeros((n, nb), np.float16)
    for r in range(n):
        for b in range(nb):
            block = np.zeros(32, np.float64)
            part = w[r, b * 32:(b + 1) * 32].astype(np.float64)
            block[:len(part)] = part
            if method == "int8":
                scale = np.float16(np.abs(block).max() / 127.0)
                lo, hi = -127, 127
            else:
                scale = np.float16(block[np.abs(block).argmax()] / -8.0)
                lo, hi = -8, 7
            d[r, b] = scale
            if float(scale) != 0.0:
                q[r, b * 32:(b + 1) * 32] = np.clip(np.rint(block / float(scale)), lo, hi)
    return q, d


def values(q, d, k):
    return (q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1))[:, :k]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3, 32), (5, 7), (4, 70), (2, 96)])
def test_quantizer_follows_the_block_definition(method, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    w[0, :3] = [0.0, 5.0, -5.0]          # ties of magnitude: the first one sets the int4 scale's sign
    w[-1, -1] = 0.0
    packed, scales = Q.quantize(w, method)
    q_ref, d_ref = reference_blocks(w, method)
    assert packed.shape == Q.packed_shape(method, *shape) and packed.dtype == np.uint8
    assert scales.shape == (shape[0], -(-shape[1] // 32)) and scales.dtype == np.float16
    np.testing.assert_array_equal(scales.view(np.uint16), d_ref.view(np.uint16))
    np.testing.assert_array_equal(Q.unpack(packed, method, shape[1]), q_ref[:, :shape[1]])
    np.testing.assert_array_equal(Q.dequantize(packed, scales, method, shape[1]), values(q_ref, d_ref, shape[1]))
    # the padding of the last block holds zeros
    np.testing.assert_array_equal(Q.unpack(packed, method, packed.shape[1] * (2 if method == "int4" else 1))[:, shape[1]:], 0)


def test_int4_nibble_order_and_sign():
    """Weight 2j in the low nibble of byte j, two's complement: -8..7 -> 0x8..0x7."""
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = [-8.0, 7.0, 1.0, -1.0]
    packed, scales = Q.quantize(w, "int4")
    assert float(scales[0, 0]) == 1.0
    assert packed[0, 0] == 0x78 and packed[0, 1] == 0xF1
    assert Q.unpack(packed, "int4", 4).tolist() == [[-8, 7, 1, -1]]


def test_quantizer_handles_bfloat16_bits_zero_blocks_and_rejects_nan():
    from eyecare.core import from_bfloat16, to_bfloat16

    w = rng.standard_normal((6, 64)).astype(np.float32)
    w[2] = 0.0
    bits = to_bfloat16(w)
    p1, s1 = Q.quantize(bits, "int8")
    p2, s2 = Q.quantize(from_bfloat16(bits), "int8")
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)
    assert (s1[2] == 0).all() and (p1[2] == 0).all()
    # a few rows at a time gives the same as all at once
    p3, s3 = Q.quantize(bits, "int8", rows_per_step=1)
    np.testing.assert_array_equal(p1, p3)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(w, "int4")
    with pytest.raises(ValueError, match="int8' or 'int4"):
        Q.quantize(w, "int2")


@pytest.mark.parametrize("method", METHODS)
def test_packed_layout_round_trips_through_the_device(method):
    w = rng.standard_normal((37, 100)).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    t = Q.to_device(packed, scales, method, 100)
    assert t.dtype == method and t.shape == (37, 100)
    assert t.nbytes >= packed.nbytes + scales.nbytes
    p2, s2 = t.packed()
    np.testing.assert_array_equal(p2, packed)
    np.testing.assert_array_equal(s2.view(np.uint16), scales.view(np.uint16))
    with pytest.raises(TypeError, match="packed"):
        t.numpy()
    with pytest.raises(TypeError):
        tensor(w).packed()


def test_quantized_tensor_checks_its_parts():
    packed, scales = Q.quantize(rng.standard_normal((4, 64)).astype(np.float32), "int8")
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed[:, :32], scales, "int8", 64)   # truncated integers
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed, scales[:, :1], "int8", 64)    # too few scales
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed, scales, "int4", 64)           # int8 bytes called int4
    with pytest.raises(ValueError, match="int8' or 'int4"):
        core.quantized_tensor(packed, scales, "int3", 64)


# M <= 8 runs matvec_q (decode), more runs matmul_q (prefill, vision). K not a multiple of 32 takes the
# kernels' partial-block paths; N not a multiple of 16 (matvec rows per workgroup) or of 64 (GEMM columns
# per workgroup) leaves workgroups partly idle.
SHAPES = [(1, 64, 33), (1, 3072, 70), (2, 7, 5), (4, 100, 17), (8, 1153, 21), (9, 32, 1), (33, 96, 67), (70, 45, 130)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_quantized_matmul_matches_dequantize_then_matmul(method, M, K, N):
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    y = empty((M, N))
    core.op_matmul(tensor(x), Q.to_device(packed, scales, method, K), tensor(b, "bfloat16"), y)
    from eyecare.core import from_bfloat16, to_bfloat16

    want = x.astype(np.float64) @ Q.dequantize(packed, scales, method, K).astype(np.float64).T + from_bfloat16(to_bfloat16(b))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=2e-6 * math.sqrt(K))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("M", [1, 6, 24])
def test_quantized_matmul_accumulates(method, M):
    K, N = 80, 48
    w = rng.standard_normal((N, K)).astype(np.float32)
    x, r = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((M, N)).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    y = tensor(r)
    core.op_matmul(tensor(x), Q.to_device(packed, scales, method, K), None, y, True)
    want = r + x.astype(np.float64) @ Q.dequantize(packed, scales, method, K).astype(np.float64).T
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-4)


def test_quantized_weights_are_refused_where_no_kernel_reads_them():
    packed, scales = Q.quantize(rng.standard_normal((8, 32)).astype(np.float32), "int8")
    wq = Q.to_device(packed, scales, "int8", 32)
    x = tensor(rng.standard_normal((2, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="embedding table must be float32, float16 or bfloat16, not int8"):
        core.op_embedding(tensor(np.array([0, 1], np.int32)), wq, empty((2, 32)))
    bias = Q.to_device(*Q.quantize(rng.standard_normal((1, 32)).astype(np.float32), "int4"), "int4", 32)
    with pytest.raises(ValueError, match="bias must be float32, float16 or bfloat16, not int4"):
        core.op_matmul(x, tensor(rng.standard_normal((32, 32)).astype(np.float32)), bias, empty((2, 32)))
    with pytest.raises(ValueError, match="columns"):
        core.op_matmul(tensor(rng.standard_normal((2, 31)).astype(np.float32)), wq, None, empty((2, 8)))
