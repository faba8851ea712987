"""Throughput of the hot ops on the chosen device (EYECARE_DEVICE), next to the device's measured peaks
(benchmarks/peaks.py), measured in the same run.

    python benchmarks/ops.py            # GEMMs, mat-vecs and the peaks
    python benchmarks/ops.py --quick    # fewer repetitions

GEMM figures are GFLOP/s (2*M*N*K per product) and a fraction of the FMA peak; mat-vec figures are
GB/s of weights read and a fraction of the read bandwidth (the bound a decode step can reach)."""
import argparse

import numpy as np

import eyecare._core as core
from eyecare.core import device_info, empty, tensor
from peaks import measure_peaks, timed

rng = np.random.default_rng(0)


def gemm(M, K, N, dtype, reps):
    x = tensor(rng.standard_normal((M, K), dtype=np.float32))
    w = tensor(rng.standard_normal((N, K), dtype=np.float32) * 0.02, dtype)
    y = empty((M, N))
    sec = timed(lambda: core.op_matmul(x, w, None, y), reps)
    return 2 * M * N * K / sec / 1e9, sec


def matvec(N, K, dtype, reps, M=1):
    x = tensor(rng.standard_normal((M, K), dtype=np.float32))
    w = tensor(rng.standard_normal((N, K), dtype=np.float32) * 0.02, dtype)
    y = empty((M, N))
    sec = timed(lambda: core.op_matmul(x, w, None, y), reps)
    return w.nbytes / sec / 1e9, sec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 2 if args.quick else 5
    info = device_info()
    print(f"device: {info['name']} ({info['type']}, subgroup {info['subgroup_size']})")
    peaks = measure_peaks()
    print(f"peak: FMA {peaks['fma_gflops']:.1f} GFLOP/s | read {peaks['read_gbs']:.1f} GB/s ({peaks['read_how']})")
    bw = peaks["read_gbs"]
    print(f"{'op':44s} {'time':>10s} {'rate':>14s} {'of peak':>8s}")
    for M, K, N, dtype in [(729, 1152, 4304, "bfloat16"), (512, 3072, 8192, "bfloat16"), (729, 1152, 1152, "float16"),
                           (512, 3072, 3072, "float32")]:
        rate, sec = gemm(M, K, N, dtype, reps)
        print(f"{f'GEMM {M}x{K}x{N} {dtype}':44s} {sec * 1e3:8.1f}ms {rate:8.1f} GFLOP/s {rate / peaks['fma_gflops']:7.1%}")
    for N, K, dtype in [(8192, 3072, "bfloat16"), (8192, 3072, "float16"), (3072, 8192, "bfloat16"),
                        (32064, 3072, "bfloat16"), (3072, 1024, "bfloat16"), (1024, 2816, "bfloat16")]:
        rate, sec = matvec(N, K, dtype, reps * 4)
        print(f"{f'mat-vec {N}x{K} {dtype} (weights)':44s} {sec * 1e3:8.2f}ms {rate:9.1f} GB/s {rate / bw:8.1%}")


if __name__ == "__main__":
    main()
