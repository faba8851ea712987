"""The device's measured peaks, the yardsticks every benchmark divides by:
- copy bandwidth: a device kernel copying a 96 MiB buffer (bytes read + bytes written per second),
  and the host's own memcpy through NumPy for comparison (a single-threaded copy, which reads less than the cores together can);
- FMA throughput: a register-only kernel of independent fused multiply-adds (shaders/peak_fma.comp).
"""
import time

import numpy as np

import eyecare._core as core
from eyecare.core import empty, tensor


def timed(run, reps):
    """Seconds per repetition of `run` (which records ops), all reps recorded in one batch."""
    run()
    core.submit()
    start = time.perf_counter()
    core.begin()
    for _ in range(reps):
        run()
    core.submit()
    return (time.perf_counter() - start) / reps


def device_copy_gbs(mib=96, reps=5):
    n = mib * 1024 * 1024 // 4
    src, dst = tensor(np.ones(n, np.float32)), empty((n,))
    rows = n // 1024
    sec = timed(lambda: core.op_copy(src, 0, 1024, dst, 0, 1024, rows, 1024), reps)
    return 2 * n * 4 / sec / 1e9


def host_copy_gbs(mib=512, reps=5):
    a = np.ones(mib * 1024 * 1024 // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    start = time.perf_counter()
    for _ in range(reps):
        np.copyto(b, a)
    return 2 * a.nbytes * reps / (time.perf_counter() - start) / 1e9


def fma_gflops(invocations=1 << 15, iterations=4000, reps=3):
    out = empty((invocations,))
    sec = timed(lambda: core.op_peak_fma(out, iterations), reps)
    return invocations * iterations * 8 * 4 * 2 / sec / 1e9


def measure_peaks():
    return {"device_copy_gbs": device_copy_gbs(), "host_copy_gbs": host_copy_gbs(), "fma_gflops": fma_gflops()}
