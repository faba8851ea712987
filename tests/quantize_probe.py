"""Run by tests/test_quantize.py in a child process under an EYECARE_EMULATE mode (as tests/emulation_probe.py is):
the quantized kernels (matvec_q, matmul_q) on int8 and int4 weights sized past small-limits' texel reach of 16 MiB,
checked against NumPy here; prints one JSON line with the errors, the runtime's counters and the validation count."""
import json

import numpy as np

import eyecare._core as core
from eyecare import quantize as Q
from eyecare.core import empty, tensor

rng = np.random.default_rng(11)
errors = {}
# Random packed integers and scales (any bytes are valid blocks), 16.8 MB of integers each: past 2^20 texels.
for method, (N, K) in (("int8", (8200, 2048)), ("int4", (4100, 8190))):
    packed = rng.integers(0, 256, Q.packed_shape(method, N, K), dtype=np.uint8)
    if K % 32:
        packed[:, -((-K) % 32) // (2 if method == "int4" else 1):] = 0   # the padding of the last block is zero
    scales = (rng.standard_normal(Q.scales_shape(N, K)) * 0.01).astype(np.float16)
    w = Q.dequantize(packed, scales, method, K)
    wt = Q.to_device(packed, scales, method, K)
    bias = rng.standard_normal(N).astype(np.float32)
    for kind, M in (("matvec", 3), ("matmul", 9)):
        x = rng.standard_normal((M, K)).astype(np.float32)
        y = empty((M, N))
        core.op_matmul(tensor(x), wt, tensor(bias), y)
        want = x @ w.T + bias
        errors[f"{kind}_{method}"] = float(np.max(np.abs(y.numpy() - want)) / np.max(np.abs(want)))
print(json.dumps({"errors": errors, "counters": core.counters(), "validation_messages": core.validation_messages()}))
