"""Every speed target of eyecare on the chosen device, each beside its bound measured in the same run,
as one table (`make bench`):

- decode tokens/s at the 1024-wide and Phi-3.5-mini widths, as GB/s of weights read against the read
  bandwidth (targets: >= 25 % and >= 30 % of it);
- decode after a 512- and a 4096-token prompt against decode from an empty cache (>= 85 %, >= 60 %);
- prefill GFLOP/s at both shapes (>= 25 GFLOP/s) and a SigLIP so400m view (>= 25 GFLOP/s), beside the
  FMA peak.

    python benchmarks/all.py            # 512-token prefills, 128 decode steps, 3 vision layers
    python benchmarks/all.py --quick    # 128-token prefills, 32 decode steps

Run it from anywhere once eyecare is installed (`cd /tmp && python /path/to/benchmarks/all.py`)."""
import argparse

import llm
import vision
from eyecare.core import device_info
from peaks import measure_peaks


def verdict(row):
    target = row.get("target")
    if target is None:
        return "", ""
    if row["target_is"] == "fraction":
        got = row["value"] / row["bound"]
        return f">= {target:.0%}", "met" if got >= target else "missed"
    return f">= {target:g} {row['unit']}", "met" if row["value"] >= target else "missed"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter prompts and fewer decode steps")
    ap.add_argument("--vision-layers", type=int, default=3, help="so400m layers run for the vision figure (default 3)")
    args = ap.parse_args()
    info = device_info()
    peaks = measure_peaks()
    print(f"device: {info['name']} ({info['type']}); read bandwidth {peaks['read_gbs']:.1f} GB/s ({peaks['read_how']}); "
          f"FMA peak {peaks['fma_gflops']:.1f} GFLOP/s\n")
    rows = llm.main(["--long"] + (["--quick"] if args.quick else []), peaks=peaks)
    print()
    rows += vision.main(["--layers", str(args.vision_layers)], peak=peaks["fma_gflops"])

    print(f"\n{'figure':40s} {'measured':>20s} {'bound (same run)':>30s} {'of bound':>9s} {'target':>14s}")
    for r in rows:
        measured = f"{r['value']:.2f} {r['unit']}"
        if "tokens_per_s" in r:
            measured = f"{r['tokens_per_s']:.1f} tok/s, " + measured
        bound = f"{r['bound']:.1f} {r['unit']} {r['bound_what']}"
        want, met = verdict(r)
        print(f"{r['what']:40s} {measured:>20s} {bound:>30s} {r['value'] / r['bound']:9.1%} {want:>14s} {met}")


if __name__ == "__main__":
    main()
