"""`eyecare data ...`: check a manifest, and build instruction data from it.

  validate  check every row and image of a manifest; print the counts per modality
  build     make the instruction data (rules, and agents with --agents), resumable

Exit codes: 0 success, 1 a problem reported on one line (bad manifest, unreachable endpoint, refused
remote endpoint), 2 bad usage, 130 interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from .errors import DataError


def _taxonomies(args):
    from .taxonomy import load_taxonomies

    return load_taxonomies(args.taxonomy or ())


def cmd_validate(args) -> int:
    from .manifest import load_manifest

    manifest = load_manifest(args.manifest, _taxonomies(args), image_root=args.image_root)
    for line in manifest.problem_lines():
        print(f"bad row: {line}", file=sys.stderr)
    cases = manifest.cases
    images = sum(len(c.images) for c in cases)
    print(f"{args.manifest}: {len(cases)} valid case(s) with {images} image(s), all readable; "
          f"{len(manifest.problems)} bad row(s)")
    by_modality = Counter(c.modality for c in cases)
    reports = Counter(c.modality for c in cases if c.report)
    labelled = Counter(c.modality for c in cases if c.labels)
    print(f"  {'modality':22s} {'cases':>6s} {'labelled':>9s} {'reports':>8s}")
    for modality, n in sorted(by_modality.items()):
        print(f"  {modality:22s} {n:6d} {labelled[modality]:9d} {reports[modality]:8d}")
    patients = {c.patient_key for c in cases}
    print(f"  {len(patients)} patient(s) (a case without patient_id counts as its own)")
    return 1 if manifest.problems else 0


def _agents(args):
    if not args.agents:
        if args.allow_remote or args.prompts:
            raise DataError("--allow-remote and --prompts only apply with --agents")
        return None
    from ..endpoint import open_endpoint
    from .agents import Agents, load_prompts

    if args.retries < 0 or args.attempts < 1 or args.max_tokens < 1:
        raise DataError("--retries must be >= 0, --attempts and --max-tokens >= 1")
    options = {} if args.agents.startswith("local:") else {"max_retries": args.retries}
    endpoint = open_endpoint(args.agents, model=args.agents_model, allow_remote=args.allow_remote, **options)
    return Agents(endpoint, load_prompts(args.prompts), seed=args.seed, open_per_case=args.open_per_case,
                  attempts=args.attempts, max_tokens=args.max_tokens)


def cmd_build(args) -> int:
    from .build import build

    result = build(args.manifest, args.out, taxonomies=_taxonomies(args), agents=_agents(args), seed=args.seed,
                   yes_no_per_case=args.yes_no_per_case, open_per_case=args.open_per_case,
                   test_fraction=args.test_fraction, near_dup=args.near_dup, concurrency=args.concurrency,
                   image_root=args.image_root, overwrite=args.overwrite, progress=not args.no_progress,
                   chart=not args.no_chart)
    print(f"{result.cases} case(s): {result.resumed} already done, {result.generated} made now; "
          f"{result.train} train + {result.test} test items, {result.rejected} rejected, "
          f"{len(result.bad_rows)} bad row(s) skipped")
    print(f"wrote {', '.join(p.name for p in result.paths)} in {result.out_dir}")
    return 1 if result.bad_rows else 0


def _add_common(p) -> None:
    p.add_argument("manifest", metavar="MANIFEST", help="CSV or JSONL, one case a row (see docs/data.md)")
    p.add_argument("--image-root", metavar="DIR", help="folder relative image paths are read from "
                   "(default: the manifest's folder)")
    p.add_argument("--taxonomy", action="append", metavar="FILE|DIR",
                   help="a taxonomy JSON file (or a folder of them) replacing the shipped one of its modality")


def _add_commands(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("validate", help="check every row and image of a manifest",
                       description="Check every row and image of a manifest and print the counts per modality. "
                       "Exit status 1 if any row is bad (each is printed with its line number).")
    _add_common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("build", help="make instruction data from a manifest",
                       description="Make closed QA from the labels (rules) and, with --agents, open QA and report "
                       "generation from the reports (language-model agents), then remove duplicates, split by "
                       "patient and write LLaVA JSON, bench JSONL and a summary into --out. Rerun the same "
                       "command to resume after an interruption. Exit status 1 if any row was bad (the others "
                       "are built).")
    _add_common(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--agents", metavar="URL|local:DIR",
                   help="the model for the agents: an OpenAI-compatible base URL (eyecare serve, vLLM, ...) or "
                   "local:CHECKPOINT_DIR for an EyecareGPT model in this process (default: rules only)")
    p.add_argument("--agents-model", metavar="NAME", help="model name to request (default: the server's first)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow an endpoint that is not on this machine (reports are sent to it)")
    p.add_argument("--prompts", metavar="DIR", help="folder of <agent>.v<N>.json prompt files (default: shipped)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="cases in flight at the endpoint (default 1)")
    p.add_argument("--attempts", type=int, default=3, metavar="N",
                   help="answers asked for until one is schema-valid JSON (default 3)")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a request that failed (429, 5xx, timeout, refused), with exponential backoff "
                   "(default 5)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N", help="tokens per agent answer (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--yes-no-per-case", type=int, default=2, metavar="N",
                   help="yes/no questions per answer per case: N Yes and N No at most (default 2)")
    p.add_argument("--open-per-case", type=int, default=3, metavar="N", help="open questions per report (default 3)")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="share of patients in the test split (default 0.2)")
    p.add_argument("--near-dup", type=float, default=0.9, metavar="T",
                   help="similarity at which two items of the same image are near duplicates; above 1 keeps "
                   "near duplicates, removing exact ones only (default 0.9)")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-chart", action="store_true", help="no summary.png")
    p.set_defaults(func=cmd_build)


def register(subparsers) -> argparse.ArgumentParser:
    """Add `data` to the top-level `eyecare` command."""
    parser = subparsers.add_parser("data", help="build instruction data from a clinic's images, labels and reports",
                                   description="The data engine: manifest -> Eyecare-100K-style instruction data.")
    _add_commands(parser)
    return parser
