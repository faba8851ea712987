"""Scoring a predictions file into a report, writing it as Markdown, CSV and JSON, and comparing two.

Scores are computed from the predictions file alone (each line carries its reference answer and
options), so a run can be re-scored after the metrics change without asking the model again.
A record whose model call failed is scored with an empty prediction: errors cost points, they are
not silently dropped.
"""
from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean, median
from typing import Optional, Sequence

from .data import MODALITIES, TASKS, UNKNOWN_MODALITY
from .errors import OutputError
from .extract import extract_answer, gold_answer
from .metrics import closed_scores, text_scores

SCHEMA = "eyecare-bench-report/1"
ALL = "all"
TASK_TITLES = {"closed": "Closed QA", "open": "Open QA", "report": "Report generation"}
CLOSED_METRICS = ("accuracy",)
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "f1", "term_recall")
METRIC_TITLES = {"accuracy": "accuracy", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3",
                 "bleu4": "BLEU-4", "rouge_l": "ROUGE-L", "f1": "F1", "term_recall": "term recall"}
_LISTED = 20


def _modality_order(modality: str) -> int:
    keys = list(MODALITIES) + [UNKNOWN_MODALITY]
    return keys.index(modality) if modality in keys else len(keys)


def _latency(rows: Sequence[dict]) -> Optional[float]:
    values = [r["latency_ms"] for r in rows if isinstance(r.get("latency_ms"), (int, float))]
    return fmean(values) if values else None


def _percentile(sorted_values: list, q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def _score_group(task: str, rows: Sequence[dict]) -> dict:
    if task == "closed":
        golds = [gold_answer(r["answer"], r.get("options") or ()) for r in rows]
        answers = [extract_answer(r.get("prediction") or "", r.get("options") or ()) for r in rows]
        scores = closed_scores(golds, answers, failed=[bool(r.get("error")) for r in rows])
    else:
        scores = text_scores([r.get("prediction") or "" for r in rows], [r["answer"] for r in rows])
    scores["errors"] = sum(bool(r.get("error")) for r in rows)
    scores["latency_ms"] = _latency(rows)
    return scores


def _performance(rows: Sequence[dict]) -> dict:
    latencies = sorted(r["latency_ms"] for r in rows if isinstance(r.get("latency_ms"), (int, float)))
    perf = {"latency_ms": None, "model_seconds": None, "timings": {}, "tokens_per_s": None}
    if latencies:
        perf["latency_ms"] = {"mean": fmean(latencies), "p50": median(latencies),
                              "p90": _percentile(latencies, 0.9), "max": latencies[-1]}
        perf["model_seconds"] = sum(latencies) / 1000.0
    # Timings are whatever the model reports; average every numeric key over the records that have it.
    values: dict = {}
    for r in rows:
        for key, value in (r.get("timings") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, []).append(value)
    perf["timings"] = {k: fmean(v) for k, v in sorted(values.items())}
    perf["tokens_per_s"] = perf["timings"].get("decode_tokens_per_s")
    return perf


def build_report(rows: Sequence[dict], source: str = "", judgments: Optional[Sequence[dict]] = None) -> dict:
    """Score prediction rows (as read by runner.read_predictions) into the report dict written as report.json.
    `judgments` (the run's judgments.jsonl rows) add the LLM-judge scores (eyecare.bench.judge)."""
    rows = list(rows)
    models = sorted({str(r.get("model")) for r in rows if r.get("model") is not None})
    cells, overall = [], {}
    for task in TASKS:
        task_rows = [r for r in rows if r.get("task") == task]
        if not task_rows:
            continue
        overall[task] = _score_group(task, task_rows)
        for modality in sorted({r.get("modality", UNKNOWN_MODALITY) for r in task_rows}, key=_modality_order):
            group = [r for r in task_rows if r.get("modality", UNKNOWN_MODALITY) == modality]
            cells.append({"task": task, "modality": modality, **_score_group(task, group)})
    unparseable = [
        {"id": r["id"], "modality": r.get("modality"), "prediction": (r.get("prediction") or "")[:300]}
        for r in rows if r.get("task") == "closed" and not r.get("error")
        and extract_answer(r.get("prediction") or "", r.get("options") or ()) is None
    ]
    return {
        "schema": SCHEMA,
        "model": ", ".join(models) or None,
        "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"records": len(rows), "errors": sum(bool(r.get("error")) for r in rows),
                   "by_task": {t: s["n"] for t, s in overall.items()}},
        "overall": overall,
        "cells": cells,
        "performance": _performance(rows),
        "unparseable": unparseable,
        "errors": [{"id": r["id"], "error": r["error"]} for r in rows if r.get("error")],
        "judges": _judges(judgments, rows),
    }


def _judges(judgments, rows) -> list:
    if not judgments:
        return []
    from .judge import summarize

    return summarize(judgments, rows)


def judge_dimensions(report: dict) -> list:
    """Every judge dimension in the report, in first-seen order."""
    dims = []
    for section in report.get("judges") or ():
        for cell in list(section["overall"].values()) + section["cells"]:
            dims += [d for d in cell["scores"] if d not in dims]
    return dims


def _judge_tables(report: dict) -> list:
    parts = []
    for section in report.get("judges") or ():
        rubrics = "; ".join(f"{TASK_TITLES.get(t, t)}: {', '.join(v)}" for t, v in sorted(section["rubrics"].items()))
        parts += ["", f"## LLM judge: {section['judge']}", "",
                  f"Mean score per dimension (rubric {rubrics}); n judged, and judgments that failed "
                  "(no valid answer from the judge: asked again by the next `bench judge`)."]
        for task, overall in section["overall"].items():
            dims = list(overall["scores"])
            cells = [c for c in section["cells"] if c["task"] == task] + [{"modality": f"**{ALL}**", **overall}]
            parts += ["", f"### {TASK_TITLES.get(task, task)}", "",
                      _table(["modality", "n judged", "failed"] + dims,
                             [[c["modality"], c["n_judged"], c["n_failed"]] + [c["scores"].get(d) for d in dims]
                              for c in cells])]
    return parts


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], body: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _task_table(report: dict, task: str) -> str:
    metrics = CLOSED_METRICS + ("unparseable",) if task == "closed" else TEXT_METRICS
    header = ["modality", "n"] + [METRIC_TITLES.get(m, m) for m in metrics] + ["errors", "latency ms"]
    rows = [c for c in report["cells"] if c["task"] == task]
    rows.append({"modality": f"**{ALL}**", **report["overall"][task]})
    return _table(header, [[c["modality"], c["n"]] + [c.get(m) for m in metrics] + [c["errors"], c["latency_ms"]]
                           for c in rows])


def overall_table(report: dict) -> str:
    """One row per task: the headline numbers."""
    header = ["task", "n", "accuracy", "unparseable", "BLEU-1", "BLEU-4", "ROUGE-L", "F1", "term recall", "errors"]
    body = []
    for task, s in report["overall"].items():
        body.append([TASK_TITLES[task], s["n"], s.get("accuracy"), s.get("unparseable"), s.get("bleu1"),
                     s.get("bleu4"), s.get("rouge_l"), s.get("f1"), s.get("term_recall"), s["errors"]])
    return _table(header, body)


def render_markdown(report: dict) -> str:
    parts = [f"# Eyecare-Bench report: {report['model'] or 'unknown model'}", "",
             f"Predictions: `{report['source']}`; {report['counts']['records']} records, "
             f"{report['counts']['errors']} model errors; scored {report['created']}.",
             "Scores are percentages. Accuracy counts unparseable replies as wrong; term recall averages over "
             "the records whose reference names at least one ophthalmic term.", "",
             "## Overall", "", overall_table(report)]
    for task in report["overall"]:
        parts += ["", f"## {TASK_TITLES[task]} by modality", "", _task_table(report, task)]
    perf = report["performance"]
    parts += ["", "## Speed", ""]
    if perf["latency_ms"]:
        lat = perf["latency_ms"]
        parts.append(f"Latency per record (wall clock): mean {_fmt(lat['mean'], 1)} ms, p50 {_fmt(lat['p50'], 1)} ms, "
                     f"p90 {_fmt(lat['p90'], 1)} ms, max {_fmt(lat['max'], 1)} ms; "
                     f"{_fmt(perf['model_seconds'], 1)} s in the model in all.")
    if perf["tokens_per_s"] is not None:
        parts.append(f"Decode speed reported by the model: {_fmt(perf['tokens_per_s'], 1)} tokens/s.")
    if perf["timings"]:
        parts += ["", _table(["model timing (mean)", "value"], sorted(perf["timings"].items()))]
    if report["unparseable"]:
        parts += ["", f"## Unparseable closed answers ({len(report['unparseable'])})", ""]
        parts += [f"- `{u['id']}` ({u['modality']}): {json.dumps(u['prediction'][:120], ensure_ascii=False)}"
                  for u in report["unparseable"][:_LISTED]]
    parts += _judge_tables(report)
    if report["errors"]:
        parts += ["", f"## Model errors ({len(report['errors'])})", ""]
        parts += [f"- `{e['id']}`: {e['error'][:200]}" for e in report["errors"][:_LISTED]]
    return "\n".join(parts) + "\n"


CSV_COLUMNS = ("task", "modality", "n", "errors", "accuracy", "correct", "unparseable") + TEXT_METRICS + (
    "term_recall_n", "latency_ms")


def csv_columns(report: dict) -> tuple:
    """CSV_COLUMNS, plus the judge's columns when the report has judge scores."""
    dims = judge_dimensions(report)
    return CSV_COLUMNS + (("judge", "judge_n", "judge_failed") + tuple(f"judge_{d}" for d in dims) if dims else ())


def csv_rows(report: dict) -> list:
    rows = [dict(c) for c in report["cells"]]
    rows += [{"task": task, "modality": ALL, **scores} for task, scores in report["overall"].items()]
    for section in report.get("judges") or ():  # one row per judged task and modality
        cells = section["cells"] + [{"task": t, "modality": ALL, **c} for t, c in section["overall"].items()]
        rows += [{"task": c["task"], "modality": c["modality"], "judge": section["judge"], "judge_n": c["n_judged"],
                  "judge_failed": c["n_failed"], **{f"judge_{d}": v for d, v in c["scores"].items()}} for c in cells]
    columns = csv_columns(report)
    return [{k: row.get(k) for k in columns} for row in rows]


def write_report(report: dict, out_dir, plots: bool = True) -> list:
    """Write report.md, report.csv, report.json (and plots/*.png) into `out_dir`; return the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
        with open(out / "report.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=csv_columns(report))
            writer.writeheader()
            writer.writerows(csv_rows(report))
    except OSError as exc:
        raise OutputError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    paths = [out / "report.md", out / "report.csv", out / "report.json"]
    if plots:
        from .plots import plot_report

        paths += plot_report(report, out / "plots")
    return paths


def load_report(path) -> dict:
    """Read a report.json (or the report.json inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{path}: no such report") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path}: cannot read report ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise OutputError(f"{path}: not an eyecare bench report (schema {SCHEMA})")
    return report


def _delta(a, b) -> str:
    if a is None and b is None:
        return "–"
    if a is None or b is None:
        return f"{_fmt(a)} → {_fmt(b)}"
    if isinstance(a, int) and isinstance(b, int):
        return f"{a} → {b} ({b - a:+d})"
    return f"{a:.2f} → {b:.2f} ({b - a:+.2f})"


def compare_reports(a: dict, b: dict, names: Sequence[str] = ("A", "B")) -> str:
    """Markdown putting two reports side by side: each metric as "A → B (B − A)" per task and modality."""
    parts = [f"# Eyecare-Bench comparison: {names[0]} vs {names[1]}", "",
             f"- {names[0]}: {a.get('model')} ({a['counts']['records']} records, {a['source']})",
             f"- {names[1]}: {b.get('model')} ({b['counts']['records']} records, {b['source']})"]
    if a["counts"]["by_task"] != b["counts"]["by_task"]:
        parts.append("- Note: the runs scored different numbers of records per task; compare with care.")
    cells_a = {(c["task"], c["modality"]): c for c in a["cells"]}
    cells_b = {(c["task"], c["modality"]): c for c in b["cells"]}
    for task in TASKS:
        if task not in a["overall"] and task not in b["overall"]:
            continue
        metrics = CLOSED_METRICS + ("unparseable",) if task == "closed" else TEXT_METRICS
        keys = sorted({m for (t, m) in list(cells_a) + list(cells_b) if t == task}, key=_modality_order)
        body = []
        for modality in keys + [ALL]:
            ca = a["overall"].get(task, {}) if modality == ALL else cells_a.get((task, modality), {})
            cb = b["overall"].get(task, {}) if modality == ALL else cells_b.get((task, modality), {})
            label = f"**{ALL}**" if modality == ALL else modality
            body.append([label, f"{_fmt(ca.get('n'))} / {_fmt(cb.get('n'))}"]
                        + [_delta(ca.get(m), cb.get(m)) for m in metrics])
        header = ["modality", "n"] + [METRIC_TITLES.get(m, m) for m in metrics]
        parts += ["", f"## {TASK_TITLES[task]}", "", _table(header, body)]
    ta, tb = a["performance"].get("tokens_per_s"), b["performance"].get("tokens_per_s")
    la, lb = (a["performance"].get("latency_ms") or {}).get("mean"), (b["performance"].get("latency_ms") or {}).get("mean")
    parts += _compare_judges(a, b)
    parts += ["", "## Speed", "", _table(["", names[0], names[1]],
                                         [["mean latency ms", la, lb], ["decode tokens/s", ta, tb]])]
    return "\n".join(parts) + "\n"


def _compare_judges(a: dict, b: dict) -> list:
    """Judge scores side by side, for each judge (and rubric) that scored both runs."""
    parts = []
    sections_b = {s["judge"]: s for s in b.get("judges") or ()}
    for sa in a.get("judges") or ():
        sb = sections_b.get(sa["judge"])
        if sb is None:
            continue
        note = "" if sa["rubrics"] == sb["rubrics"] else " (different rubric versions: compare with care)"
        parts += ["", f"## LLM judge: {sa['judge']}{note}"]
        for task in ("open", "report"):
            if task not in sa["overall"] or task not in sb["overall"]:
                continue
            dims = [d for d in sa["overall"][task]["scores"] if d in sb["overall"][task]["scores"]]
            ca = {c["modality"]: c for c in sa["cells"] if c["task"] == task}
            cb = {c["modality"]: c for c in sb["cells"] if c["task"] == task}
            body = []
            for modality in sorted(set(ca) | set(cb), key=_modality_order) + [ALL]:
                xa = sa["overall"][task] if modality == ALL else ca.get(modality, {"scores": {}})
                xb = sb["overall"][task] if modality == ALL else cb.get(modality, {"scores": {}})
                label = f"**{ALL}**" if modality == ALL else modality
                body.append([label, f"{_fmt(xa.get('n_judged'))} / {_fmt(xb.get('n_judged'))}"]
                            + [_delta(xa["scores"].get(d), xb["scores"].get(d)) for d in dims])
            parts += ["", f"### {TASK_TITLES[task]}", "", _table(["modality", "n judged"] + dims, body)]
    return parts
