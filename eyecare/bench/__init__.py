"""Eyecare-Bench: score a vision-language model on ophthalmic closed QA, open QA and report generation.

The harness works with any model object that has `chat(question, images=[paths]) -> str` (and,
optionally, `generate(requests)` for batches and a `timings` dict), so EyecareGPT and other models
are scored the same way. Typical use::

    from eyecare.bench import load_dataset, select, require_images, run, read_predictions, build_report, write_report
    records = select(load_dataset("bench.jsonl"), tasks="closed", limit=100)
    require_images(records)
    run(records, model, "out/predictions.jsonl", model_name="my-model")
    write_report(build_report(read_predictions("out/predictions.jsonl")), "out")

or from the shell: `eyecare bench run --model DIR --data bench.jsonl --output out`.

Importing this package needs only the core dependencies. The metric and plotting libraries
(rouge-score, sacrebleu, matplotlib) are imported when a score or a chart is computed, and their
absence is reported as "pip install 'eyecare[bench]'".
"""
from .data import MODALITIES, TASKS, Record, check_images, load_dataset, require_images, select
from .errors import BenchError, DatasetError, MissingDependency, ModelLoadError, OutputError
from .extract import extract_answer, extract_choice, extract_yes_no, gold_answer
from .metrics import bleu, closed_scores, rouge_l, term_recall, text_scores, token_f1
from .models import BaselineModel, EchoModel, load_model
from .report import build_report, compare_reports, load_report, render_markdown, write_report
from .runner import RunResult, read_predictions, run
from .terms import default_terms, find_concepts
from .synthetic import write_sample_set

__all__ = [
    "MODALITIES", "TASKS", "Record", "check_images", "load_dataset", "require_images", "select",
    "BenchError", "DatasetError", "MissingDependency", "ModelLoadError", "OutputError",
    "extract_answer", "extract_choice", "extract_yes_no", "gold_answer",
    "bleu", "closed_scores", "rouge_l", "term_recall", "text_scores", "token_f1",
    "BaselineModel", "EchoModel", "load_model",
    "build_report", "compare_reports", "load_report", "render_markdown", "write_report",
    "RunResult", "read_predictions", "run",
    "default_terms", "find_concepts",
    "write_sample_set",
]
