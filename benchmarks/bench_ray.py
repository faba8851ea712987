"""`eyecare bench run` throughput, locally and on a local Ray with 1 and 2 workers: records/s on the tiny random
EyecareGPT (the synthetic sample set's 32 records, one image each, greedy answers of up to 512 tokens).

The bound printed beside each figure is measured in the same run: what the machine's cores can give. The local
run is timed with the CPU time it used; it kept `busy` of the cores' time busy, so if every core were busy all the
time it would reach local / busy records/s. Workers on the same machine share those cores, so no number of them
can beat that bound; on a cluster each machine adds its own.

    pip install 'eyecare[ray]'
    python benchmarks/bench_ray.py                 # 32 records, workers 1 and 2
    python benchmarks/bench_ray.py --records 16 --workers 1 2 4
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32, help="records of the synthetic sample set (default 32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    args = parser.parse_args()

    import ray

    from eyecare.bench.cli import default_dataset
    from eyecare.bench.data import load_dataset
    from eyecare.bench.models import load_model
    from eyecare.bench.ray_runner import run_ray
    from eyecare.bench.runner import run
    from eyecare.tiny import make_tiny

    cores = os.cpu_count() or 1
    records = load_dataset(default_dataset())[: args.records]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny(Path(tmp) / "tiny", "phi3")
        model, name = load_model(str(tiny))
        wall, cpu = time.perf_counter(), cpu_seconds()
        run(records, model, Path(tmp) / "local.jsonl", model_name=name, progress=False)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        local = len(records) / wall
        busy = min(cpu / (wall * cores), 1.0)
        bound = local / busy
        print(f"{len(records)} records, tiny {name} model, {cores} cores, Vulkan device: lavapipe unless a GPU is found")
        print(f"local, one process      {local:6.2f} records/s   (cores busy {busy:5.1%}; bound {bound:.2f} records/s)")

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
        try:
            for workers in args.workers:
                if workers > cores:
                    print(f"ray, {workers} workers: skipped, needs {workers} CPUs for {workers} actors, have {cores}")
                    continue
                result = run_ray(records, Path(tmp) / f"ray{workers}.jsonl", model=str(tiny), model_name=name,
                                 workers=workers, gpus_per_worker=0, progress=False)
                per_worker = ", ".join(f"{w['records_per_s']:.2f}" for w in result.workers)
                print(f"ray, {workers} worker{'s' if workers > 1 else ' '}       {result.records_per_s:6.2f} records/s "
                      f"  ({result.records_per_s / bound:5.1%} of the bound; per worker {per_worker})")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
