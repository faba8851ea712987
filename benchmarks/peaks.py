"""The yardsticks every benchmark divides by, measured in the same run:
- read bandwidth: a STREAM-style read of a 256 MiB host buffer by as many threads as lavapipe runs
  (eyecare._core.read_bandwidth, one thread per online CPU): the bound of a memory-bound decode step on a
  device whose memory is host memory. On a GPU the bound is the device's own copy rate instead
  (device_copy_gbs: bytes read + written by a copy kernel, halved to bytes read);
- FMA throughput: a register-only kernel of independent multiply-adds (shaders/peak_fma.comp), the best
  of three timings: the bound of prefill and vision (GEMMs).
"""
import os
import time

import numpy as np

import eyecare._core as core
from eyecare.core import device_info, empty, tensor


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
    """Bytes read + written per second by the core's copy kernel."""
    n = mib * 1024 * 1024 // 4
    src, dst = tensor(np.ones(n, np.float32)), empty((n,))
    rows = n // 1024
    sec = timed(lambda: core.op_copy(src, 0, 1024, dst, 0, 1024, rows, 1024), reps)
    return 2 * n * 4 / sec / 1e9


def read_gbs(threads=None, reps=5):
    """Bytes read per second by `threads` host threads (default: one per online CPU, as lavapipe uses)."""
    return core.read_bandwidth(threads=threads or os.cpu_count() or 1, mib=256, reps=reps)


def fma_gflops(invocations=1 << 15, iterations=4000, reps=3, tries=3):
    """The best of `tries` timings of peak_fma.comp (4 vec4 multiply-add chains, `iterations` steps each)."""
    out = empty((invocations,))
    iterations -= iterations % 4  # the kernel takes four steps a loop iteration
    sec = min(timed(lambda: core.op_peak_fma(out, iterations), reps) for _ in range(tries))
    return invocations * iterations * 4 * 4 * 2 / sec / 1e9


def decode_bound_gbs():
    """(GB/s, how): the read bandwidth a decode step can reach on this device."""
    if device_info()["type"] == "cpu":
        threads = os.cpu_count() or 1
        return read_gbs(threads), f"{threads}-thread host read"
    return device_copy_gbs() / 2, "device copy kernel, bytes read"


def measure_peaks():
    bw, how = decode_bound_gbs()
    return {"read_gbs": bw, "read_how": how, "fma_gflops": fma_gflops()}
