"""What a build writes besides its state file (items.jsonl), all regenerated from that state on every run:

    train.json, test.json      LLaVA conversation JSON (the Eyecare-100K format eyecare.bench reads)
    train.jsonl, test.jsonl    eyecare's bench JSONL
    rejected.jsonl             every item left out, with why (verifier verdict, duplicate of ...)
    summary.json, summary.md   counts per modality x task, rejection reasons, bad rows, settings
    summary.png                a chart of the same (needs matplotlib: pip install 'eyecare[data]')

Image paths are written relative to the output folder, which is where eyecare.bench resolves them.
Every item carries its provenance: the source case, rule or agent, model, prompt version, verdict.
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from .errors import DataError
from .rules import LETTERS

TASK_ORDER = ("closed", "open", "report")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


_RELATIVE: dict = {}


def _refs(item: dict, out_dir: Path) -> list:
    # os.path.relpath is slow next to everything else written per item; each image is written many times.
    key = str(out_dir)
    return [_RELATIVE.get((key, p)) or _RELATIVE.setdefault((key, p), os.path.relpath(p, out_dir))
            for p in item["images"]]


def bench_row(item: dict, out_dir: Path) -> dict:
    row = {"id": item["id"], "images": _refs(item, out_dir), "question": item["question"], "answer": item["answer"],
           "task": item["task"], "modality": item["modality"]}
    if item["options"]:
        row["options"] = item["options"]
    row["provenance"] = item["provenance"]
    return row


def llava_entry(item: dict, out_dir: Path) -> dict:
    refs = _refs(item, out_dir)
    question = item["question"]
    if item["options"]:
        question += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item["options"]))
        question += "\nAnswer with the letter of the correct option."
    entry = {"id": item["id"], "image": refs[0] if len(refs) == 1 else refs,
             "conversations": [{"from": "human", "value": "<image>\n" * len(refs) + question},
                               {"from": "gpt", "value": item["answer"]}],
             "task": item["task"], "modality": item["modality"]}
    if item["options"]:
        entry["options"] = item["options"]
    entry["provenance"] = item["provenance"]
    return entry


def write_split(out_dir: Path, name: str, items: list) -> list:
    jsonl = out_dir / f"{name}.jsonl"
    llava = out_dir / f"{name}.json"
    _write(jsonl, "".join(json.dumps(bench_row(i, out_dir), ensure_ascii=False) + "\n" for i in items))
    # One entry a line: a JSON array that is still readable and diffable, and fast to write.
    entries = [json.dumps(llava_entry(i, out_dir), ensure_ascii=False) for i in items]
    _write(llava, "[\n" + ",\n".join(entries) + "\n]\n" if entries else "[]\n")
    return [jsonl, llava]


def write_rejected(out_dir: Path, rejected: list) -> Path:
    path = out_dir / "rejected.jsonl"
    rows = [{"id": item["id"], "case": item["provenance"]["case"], "task": item["task"], "question": item["question"],
             "answer": item["answer"], "reason": reason, "provenance": item["provenance"]} for item, reason in rejected]
    _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def reason_category(reason: str) -> str:
    """The bucket a rejection is counted in: the verifier's verdict, or the kind of duplicate."""
    if reason.startswith("verifier: "):
        return reason.split(":", 2)[0] + ": " + reason.split(":", 2)[1].strip()
    for prefix in ("exact duplicate", "near duplicate"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":", 1)[0]


def summarize(train: list, test: list, rejected: list, *, cases: int, bad_rows: list, agent_errors: list,
              settings: dict, patients: dict) -> dict:
    counts: dict = {}
    for item in train + test:
        counts.setdefault(item["modality"], Counter())[item["task"]] += 1
    return {
        "cases": cases,
        "bad_rows": bad_rows,
        "items": {"train": len(train), "test": len(test)},
        "patients": patients,
        "counts": {m: {t: c[t] for t in TASK_ORDER} for m, c in sorted(counts.items())},
        "by_generator": dict(sorted(Counter(i["provenance"]["generator"] for i in train + test).items())),
        "rejected": dict(Counter(reason_category(r) for _, r in rejected).most_common()),
        "rejections": [{"id": i["id"], "reason": r} for i, r in rejected[:50]],
        "agent_errors": dict(Counter(e["stage"] for e in agent_errors).most_common()),
        "agent_error_examples": agent_errors[:20],
        "settings": settings,
    }


def render_markdown(summary: dict) -> str:
    s = summary
    lines = ["# eyecare data build", "",
             f"{s['cases']} cases read, {len(s['bad_rows'])} bad rows skipped; "
             f"{s['items']['train']} train and {s['items']['test']} test items "
             f"({s['patients']['train']} and {s['patients']['test']} patients, none on both sides).", "",
             "## Items per modality and task", "", "| modality | " + " | ".join(TASK_ORDER) + " | total |",
             "|---|" + "---:|" * (len(TASK_ORDER) + 1)]
    for modality, c in s["counts"].items():
        lines.append(f"| {modality} | " + " | ".join(str(c[t]) for t in TASK_ORDER) + f" | {sum(c.values())} |")
    lines += ["", "## By generator", "", "| generator | items |", "|---|---:|"]
    lines += [f"| {g} | {n} |" for g, n in s["by_generator"].items()]
    lines += ["", "## Rejected", ""]
    if s["rejected"]:
        lines += ["| reason | items |", "|---|---:|"] + [f"| {r} | {n} |" for r, n in s["rejected"].items()]
        lines += ["", "First rejections (all of them are in rejected.jsonl):", ""]
        lines += [f"- `{r['id']}`: {r['reason']}" for r in s["rejections"][:20]]
    else:
        lines.append("Nothing was rejected.")
    if s["agent_errors"]:
        lines += ["", "## Agent answers that never became valid JSON", "", "| stage | cases |", "|---|---:|"]
        lines += [f"| {k} | {n} |" for k, n in s["agent_errors"].items()]
    if s["bad_rows"]:
        lines += ["", "## Bad manifest rows (skipped)", ""] + [f"- {b}" for b in s["bad_rows"]]
    lines += ["", "## Settings", "", "```json", json.dumps(s["settings"], indent=1), "```", ""]
    return "\n".join(lines)


def write_summary(out_dir: Path, summary: dict, chart: bool = True) -> list:
    paths = [out_dir / "summary.json", out_dir / "summary.md"]
    _write(paths[0], json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    _write(paths[1], render_markdown(summary))
    if chart:
        path = plot_summary(summary, out_dir / "summary.png")
        if path is not None:
            paths.append(path)
    return paths


def plot_summary(summary: dict, path: Path):
    """Items per modality (bars stacked by task) beside the rejection reasons; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    colors = {"closed": "#4C72B0", "open": "#55A868", "report": "#C44E52"}
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    modalities = list(summary["counts"])
    bottom = [0] * len(modalities)
    for task in TASK_ORDER:
        heights = [summary["counts"][m][task] for m in modalities]
        left.bar(range(len(modalities)), heights, bottom=bottom, color=colors[task], label=task)
        bottom = [b + h for b, h in zip(bottom, heights)]
    left.set_xticks(range(len(modalities)), [m.replace("_", " ") for m in modalities], rotation=30, ha="right")
    left.set_ylabel("items (train + test)")
    left.set_title("Items per modality and task")
    left.legend()
    reasons = summary["rejected"]
    if reasons:
        names = list(reasons)[::-1]
        right.barh(range(len(names)), [reasons[n] for n in names], color="#8172B2")
        right.set_yticks(range(len(names)), names)
        right.set_xlabel("items")
    else:
        right.text(0.5, 0.5, "nothing rejected", ha="center", va="center")
        right.set_xticks([])
        right.set_yticks([])
    right.set_title("Rejected, by reason")
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
