"""`eyecare bench ...` and `python -m eyecare.bench ...`: run, score and compare Eyecare-Bench runs.

Sub-commands:
  run       ask a model every record of a dataset (resumable), then write the report
  report    score an existing predictions file (or run folder) again
  compare   put two reports side by side
  validate  check a dataset and its images without running anything
  sample    write the synthetic sample set to a folder
  judge     LLM-judge scores for a run's open QA and report answers (resumable), into its report

Each sub-command stores its handler as `func` in the parsed namespace and returns an exit code:
0 success, 1 a problem reported on one line (bad dataset, missing image, unwritable output, no
model), 2 bad command-line usage (argparse), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional

from .errors import BenchError

PREDICTIONS = "predictions.jsonl"
JUDGMENTS = "judgments.jsonl"


def _judgments_beside(predictions: Path):
    """The run's judgments (eyecare bench judge), if it has any."""
    from .judge import read_judgments

    path = predictions.parent / JUDGMENTS
    return read_judgments(path) if path.is_file() else None


def _repo_sample() -> Path:
    # In a source checkout the shipped sample sits at examples/bench/ beside the package.
    return Path(__file__).resolve().parents[2] / "examples" / "bench" / "synthetic_sample.jsonl"


def default_dataset() -> Path:
    """The synthetic sample set: the shipped copy in a checkout, else one generated into the user cache."""
    shipped = _repo_sample()
    if shipped.is_file():
        return shipped
    from .synthetic import write_sample_set

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eyecare" / "bench-sample"
    jsonl = cache / "synthetic_sample.jsonl"
    if not jsonl.is_file():
        write_sample_set(cache)
    return jsonl


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _load_selection(args):
    from .data import load_dataset, require_images, select

    data = Path(args.data) if args.data else default_dataset()
    if not args.data:
        print(f"using the synthetic sample set {data} (made-up data for trying the harness)", file=sys.stderr)
    records = load_dataset(data, image_root=args.image_root)
    selected = select(records, tasks=args.tasks, modalities=args.modalities, limit=getattr(args, "limit", None))
    require_images(selected)
    return data, records, selected


def cmd_run(args) -> int:
    from .models import load_model
    from .report import build_report, overall_table, write_report
    from .runner import read_predictions, run

    if args.batch_size < 1:
        raise BenchError(f"--batch-size must be >= 1 (got {args.batch_size})")
    data, records, selected = _load_selection(args)
    if not selected:
        raise BenchError(f"{data}: no records match --tasks/--modalities/--limit")
    _check_ray_options(args)
    if args.ray is None:
        model, name = load_model(args.model, args.model_factory)
    else:
        model, name = None, _ray_model_name(args)
    out_dir = Path(args.output) if args.output else Path("bench-results") / _slug(name)
    predictions = out_dir / PREDICTIONS
    if args.ray is None:
        result = run(selected, model, predictions, model_name=name, batch_size=args.batch_size,
                     progress=not args.no_progress, overwrite=args.overwrite)
    else:
        from .ray_runner import run_ray

        result = run_ray(selected, predictions, model=args.model, factory=args.model_factory, model_name=name,
                         batch_size=args.batch_size, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                         address=args.ray or None, progress=not args.no_progress, overwrite=args.overwrite)
        for w in result.workers:
            if w["host"] is None:
                print(f"worker {w['worker']}: " + (f"gone: {w['error']}" if w["error"] else "not started when the "
                                                   "run ended"))
                continue
            print(f"worker {w['worker']} on {w['host']}, {w['device']}: {w['records']} records, "
                  f"{w['records_per_s']:.2f} records/s" + (f", restarted {len(w['pids']) - 1} times"
                                                           if len(w["pids"]) > 1 else "")
                  + (f", gone: {w['error']}" if w["error"] else ""))
    print(f"{result.total} records: {result.resumed} already done, {result.completed} predicted now, "
          f"{result.errors} model errors; predictions in {predictions}")
    if args.no_report:
        return 0
    ids = {r.id for r in selected}
    report = build_report([row for row in read_predictions(predictions) if row["id"] in ids], source=str(predictions),
                          judgments=_judgments_beside(predictions))
    paths = write_report(report, out_dir, plots=not args.no_plots)
    print(overall_table(report))
    print(f"report: {', '.join(str(p) for p in paths[:3])}" + (f" and {len(paths) - 3} charts" if len(paths) > 3 else ""))
    return 0


def _ray_model_name(args) -> str:
    """Check --model / --model-factory as load_model would, without loading: the workers load the model."""
    from .errors import ModelLoadError
    from .models import BUILTIN, model_name

    if args.model and args.model_factory:
        raise ModelLoadError("give --model or --model-factory, not both")
    if not args.model and not args.model_factory:
        raise ModelLoadError("no model given: pass --model DIR (an EyecareGPT checkpoint folder), "
                             "--model-factory module:callable, or --model baseline:yes to try the harness")
    if args.model and args.model not in BUILTIN:
        if not Path(args.model).is_dir():
            raise ModelLoadError(f"--model {args.model!r} is neither a checkpoint folder nor a built-in baseline "
                                 f"({', '.join(BUILTIN)})")
        args.model = str(Path(args.model).resolve())    # the workers may start in another folder
    return model_name(args.model, args.model_factory)


def cmd_report(args) -> int:
    from .report import build_report, overall_table, write_report
    from .runner import read_predictions

    source = Path(args.predictions)
    path = source / PREDICTIONS if source.is_dir() else source
    if not path.is_file():
        raise BenchError(f"{path}: no such predictions file")
    rows = read_predictions(path)
    if not rows:
        raise BenchError(f"{path}: holds no predictions")
    report = build_report(rows, source=str(path), judgments=_judgments_beside(path))
    paths = write_report(report, Path(args.output) if args.output else path.parent, plots=not args.no_plots)
    print(overall_table(report))
    print(f"report: {', '.join(str(p) for p in paths[:3])}" + (f" and {len(paths) - 3} charts" if len(paths) > 3 else ""))
    return 0


def cmd_compare(args) -> int:
    from .report import compare_reports, load_report

    names = args.names or [Path(args.a).stem if not Path(args.a).is_dir() else Path(args.a).name,
                           Path(args.b).stem if not Path(args.b).is_dir() else Path(args.b).name]
    if names[0] == names[1]:
        names = [f"A ({names[0]})", f"B ({names[1]})"]
    text = compare_reports(load_report(args.a), load_report(args.b), names)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(text, end="")
    return 0


def cmd_validate(args) -> int:
    from collections import Counter

    data, records, selected = _load_selection(args)
    counts = Counter((r.task, r.modality) for r in selected)
    print(f"{data}: {len(records)} records valid, {len(selected)} selected, all images present")
    for (task, modality), n in sorted(counts.items()):
        print(f"  {task:7s} {modality:22s} {n}")
    return 0


def cmd_sample(args) -> int:
    from .synthetic import write_sample_set

    try:
        path = write_sample_set(args.folder)
    except OSError as exc:
        raise BenchError(f"cannot write the sample set to {args.folder}: {exc.strerror or exc}") from None
    print(f"wrote the synthetic sample set: {path}")
    return 0


def cmd_judge(args) -> int:
    from .judge import judge_run, open_judge, rubrics_with
    from .report import build_report, write_report
    from .runner import read_predictions

    if args.concurrency < 1 or args.attempts < 1 or args.max_tokens < 1 or args.retries < 0:
        raise BenchError("--concurrency, --attempts and --max-tokens must be >= 1, --retries >= 0")
    run_dir = Path(args.run)
    predictions = run_dir / PREDICTIONS if run_dir.is_dir() else run_dir
    if not predictions.is_file():
        raise BenchError(f"{predictions}: no such predictions file (give a `bench run` folder)")
    _check_ray_options(args)
    if args.ray is not None and not args.judge.startswith("local:"):
        raise BenchError(f"--ray needs an in-process judge (--judge local:DIR): the endpoint {args.judge} already "
                         "takes calls in parallel, as many as --concurrency")
    rows = read_predictions(predictions)
    rubrics = rubrics_with(args.rubric)
    endpoint = open_judge(args.judge, judge_model=args.judge_model, api_key_env=args.api_key_env,
                          retries=args.retries, timeout=args.timeout)
    from ..endpoint import EndpointError

    try:
        judge_name = endpoint.name
    except EndpointError as exc:
        raise BenchError(f"cannot ask the judge for its model name (give --judge-model): {exc}") from None
    where = getattr(endpoint, "base_url", None) or args.judge
    print(f"judge {judge_name!r} at {where}; rubrics "
          + ", ".join(f"{t}: {r.id}" for t, r in rubrics.items()), file=sys.stderr)
    if args.ray is None:
        result = judge_run(rows, endpoint, predictions.parent / JUDGMENTS, rubrics, concurrency=args.concurrency,
                           attempts=args.attempts, max_tokens=args.max_tokens, progress=not args.no_progress)
    else:
        from .ray_runner import judge_ray

        result = judge_ray(rows, endpoint.directory, predictions.parent / JUDGMENTS, rubrics, judge=judge_name,
                           attempts=args.attempts, max_tokens=args.max_tokens, workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, address=args.ray or None,
                           progress=not args.no_progress)
        for w in (w for w in result.workers if w["host"] is not None):
            print(f"worker {w['worker']} on {w['host']}, {w['device']}: {w['records']} judgments, "
                  f"{w['records_per_s']:.2f}/s" + (f", gone: {w['error']}" if w["error"] else ""))
    print(f"{result.total} answers to judge: {result.done} already judged, {result.asked} asked now, "
          f"{result.failed} failed (recorded; rerun to ask them again); judgments in {result.path}")
    if not args.no_report:
        report = build_report(rows, source=str(predictions), judgments=_judgments_beside(predictions))
        paths = write_report(report, predictions.parent, plots=not args.no_plots)
        print(f"report: {', '.join(str(p) for p in paths[:3])}")
    return 1 if result.failed else 0


def _guard(handler):
    """Turn the errors a user can fix into one line on stderr and an exit code."""
    def wrapped(args) -> int:
        try:
            return handler(args)
        except BenchError as exc:
            print(f"eyecare bench: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("eyecare bench: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
    return wrapped


def _add_data_options(p) -> None:
    p.add_argument("--data", metavar="PATH",
                   help="dataset: our JSONL schema or LLaVA conversation JSON (default: the synthetic sample set)")
    p.add_argument("--image-root", metavar="DIR", help="folder that relative image paths are resolved against "
                   "(default: the dataset file's folder)")
    p.add_argument("--tasks", action="append", metavar="LIST", help="only these tasks: closed, open, report "
                   "(comma-separated or repeated)")
    p.add_argument("--modalities", action="append", metavar="LIST",
                   help="only these modalities, e.g. oct,fundus (comma-separated or repeated)")


def _add_ray_options(p, ray_help: str, copies: str) -> None:
    """--ray, --workers and --gpus-per-worker, shared by `bench run` and `bench judge`."""
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help=ray_help)
    p.add_argument("--workers", type=int, metavar="N", help=f"with --ray: {copies}, each a Ray actor (default: "
                   "as many as the cluster's GPUs allow, 1 without GPUs)")
    p.add_argument("--gpus-per-worker", type=float, metavar="G", help="with --ray: GPUs per worker, at most 1; a "
                   "fraction shares a GPU (default 1 on a cluster with GPUs; 0 runs on the CPU through lavapipe)")


def _check_ray_options(args) -> None:
    if args.ray is None:
        for option in ("workers", "gpus_per_worker"):
            if getattr(args, option) is not None:
                raise BenchError(f"--{option.replace('_', '-')} needs --ray")


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a model on a dataset and write predictions and the report",
                       description="Ask the model every selected record, appending each prediction to "
                       "OUTPUT/predictions.jsonl as it is made; rerun the same command to resume. Then "
                       "write OUTPUT/report.{md,csv,json} and OUTPUT/plots/*.png.")
    _add_data_options(p)
    p.add_argument("--model", metavar="DIR|BASELINE",
                   help="an EyecareGPT checkpoint folder, or a built-in baseline (not a real model): "
                   "echo, baseline:yes, baseline:no")
    p.add_argument("--model-factory", metavar="MODULE:CALLABLE",
                   help="any model: CALLABLE() must return an object with chat(question, images=[paths])")
    p.add_argument("--output", metavar="DIR", help="run folder (default: bench-results/<model name>)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N selected records")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="records per model.generate() call when the model has one (default 8)")
    p.add_argument("--overwrite", action="store_true", help="discard existing predictions instead of resuming")
    _add_ray_options(p, "answer on a Ray cluster: 'auto', ray://HOST:PORT or HOST:PORT of a running cluster, or no "
                     "ADDRESS to start a local Ray on this machine (needs eyecare[ray]; see docs/bench.md)", "model copies")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="only write predictions")
    p.add_argument("--no-plots", action="store_true", help="write the report without charts")
    p.set_defaults(func=_guard(cmd_run))

    p = sub.add_parser("report", help="score a predictions file again",
                       description="Score a predictions file (or the one in a run folder) and write "
                       "report.{md,csv,json} and plots/*.png next to it or into --output.")
    p.add_argument("predictions", metavar="PREDICTIONS", help="predictions.jsonl or a run folder")
    p.add_argument("--output", metavar="DIR", help="where to write the report (default: beside the predictions)")
    p.add_argument("--no-plots", action="store_true", help="write the report without charts")
    p.set_defaults(func=_guard(cmd_report))

    p = sub.add_parser("compare", help="put two runs side by side",
                       description="Print (and with --output, save) a Markdown table of every metric of "
                       "two reports as 'A → B (B − A)'.")
    p.add_argument("a", metavar="A", help="report.json or a run folder")
    p.add_argument("b", metavar="B", help="report.json or a run folder")
    p.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), help="column names (default: file names)")
    p.add_argument("--output", metavar="FILE", help="also write the comparison to FILE")
    p.set_defaults(func=_guard(cmd_compare))

    p = sub.add_parser("validate", help="check a dataset and its images",
                       description="Load and validate a dataset, check that every image exists, and "
                       "print the record counts per task and modality.")
    _add_data_options(p)
    p.set_defaults(func=_guard(cmd_validate))

    p = sub.add_parser("judge", help="LLM-judge scores for a run's open QA and report answers",
                       description="Grade each open QA and report prediction of RUN against its reference with "
                       "an LLM judge and a versioned rubric, appending each judgment to RUN/judgments.jsonl as it "
                       "arrives (rerun to resume: only what is missing is asked), then add the scores to RUN's "
                       "report. Exit status 1 when some judgments failed (they are recorded and asked again next time).")
    p.add_argument("run", metavar="RUN", help="a `bench run` folder (or its predictions.jsonl)")
    p.add_argument("--judge", required=True, metavar="URL|local:DIR",
                   help="an OpenAI-compatible endpoint (https://api.openai.com/v1, http://127.0.0.1:8000/v1 of "
                   "`eyecare serve`, vLLM...) or local:DIR, an EyecareGPT checkpoint run in this process")
    p.add_argument("--judge-model", metavar="NAME", help="the model to ask (default: the endpoint's first)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; unset: none sent)")
    p.add_argument("--rubric", action="append", metavar="FILE",
                   help="a rubric file replacing the shipped one for its task (repeat for both tasks)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="judge calls in flight (default 4)")
    _add_ray_options(p, "with --judge local:DIR: judge on a Ray cluster, one judge model per worker (ADDRESS as "
                     "for `bench run --ray`; needs eyecare[ray]; see docs/bench.md)", "judge model copies")
    p.add_argument("--attempts", type=int, default=3, metavar="N",
                   help="answers asked per judgment until one is valid JSON (default 3)")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a call on 429/5xx/timeouts, with exponential backoff (default 5)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds per HTTP call (default 300)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N", help="judge answer length (default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="only write judgments")
    p.add_argument("--no-plots", action="store_true", help="write the report without charts")
    p.set_defaults(func=_guard(cmd_judge))

    p = sub.add_parser("sample", help="write the synthetic sample set",
                       description="Write the synthetic sample set (made-up images and questions for "
                       "every task and modality) into FOLDER.")
    p.add_argument("folder", metavar="FOLDER")
    p.set_defaults(func=_guard(cmd_sample))


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` command to the top-level `eyecare` CLI's subparsers.

    The top-level CLI then runs the chosen sub-command with `sys.exit(args.func(args))`.
    """
    parser = subparsers.add_parser("bench", help="score a model on Eyecare-Bench",
                                   description="Score a vision-language model on Eyecare-Bench.")
    _add_commands(parser)
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="eyecare bench", description="Score a vision-language model on Eyecare-Bench.")
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)
