"""Bar charts of each metric by modality (matplotlib, PNG).

One chart per metric: modalities along the x axis, one bar per task that has the metric (closed
QA for accuracy; open QA and report generation for the text metrics). matplotlib's object API
(Figure, not pyplot) is used so no GUI backend or global figure state is involved.
"""
from __future__ import annotations

from pathlib import Path

from .errors import OutputError, require
from .report import CLOSED_METRICS, METRIC_TITLES, TASK_TITLES, TEXT_METRICS

_COLORS = {"closed": "#4C72B0", "open": "#55A868", "report": "#C44E52"}


def plot_report(report: dict, out_dir) -> list:
    """Write <metric>.png for every metric with at least one value; return the paths."""
    figure = require("matplotlib.figure", "matplotlib", "Plotting the report")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from None
    paths = []
    for metric in CLOSED_METRICS + TEXT_METRICS:
        tasks = ("closed",) if metric in CLOSED_METRICS else ("open", "report")
        cells = [c for c in report["cells"] if c["task"] in tasks and c.get(metric) is not None]
        if not cells:
            continue
        modalities = list(dict.fromkeys(c["modality"] for c in cells))
        present = [t for t in tasks if any(c["task"] == t for c in cells)]
        fig = figure.Figure(figsize=(max(6.0, 0.9 * len(modalities) + 2), 4.0), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(present)
        for i, task in enumerate(present):
            values = {c["modality"]: c[metric] for c in cells if c["task"] == task}
            xs = [m + (i - (len(present) - 1) / 2) * width for m in range(len(modalities))]
            heights = [values.get(m, 0.0) for m in modalities]
            bars = ax.bar(xs, heights, width=width, label=TASK_TITLES[task], color=_COLORS[task])
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(range(len(modalities)), [m.replace("_", " ") for m in modalities], rotation=30, ha="right")
        ax.set_ylabel(f"{METRIC_TITLES[metric]} (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{METRIC_TITLES[metric]} by modality — {report.get('model') or 'model'}")
        ax.legend(loc="upper right", fontsize=8)
        path = out / f"{metric}.png"
        try:
            fig.savefig(path, dpi=100)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        paths.append(path)
    paths += _judge_charts(report, out, figure)
    return paths


def _judge_charts(report: dict, out: Path, figure) -> list:
    """judge_<judge>_<task>.png: the mean of each judge dimension by modality, one bar per dimension."""
    import re

    paths = []
    for section in report.get("judges") or ():
        for task, overall in section["overall"].items():
            dims = [d for d in overall["scores"] if overall["scores"][d] is not None]
            cells = [c for c in section["cells"] if c["task"] == task]
            if not dims or not cells:
                continue
            modalities = [c["modality"] for c in cells]
            fig = figure.Figure(figsize=(max(6.0, 0.9 * len(modalities) * max(1, len(dims) / 3) + 2), 4.0),
                                layout="constrained")
            ax = fig.subplots()
            width = 0.8 / len(dims)
            for i, d in enumerate(dims):
                xs = [m + (i - (len(dims) - 1) / 2) * width for m in range(len(modalities))]
                bars = ax.bar(xs, [c["scores"].get(d) or 0.0 for c in cells], width=width, label=d)
                ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
            ax.set_xticks(range(len(modalities)), [m.replace("_", " ") for m in modalities], rotation=30, ha="right")
            ax.set_ylabel("mean judge score")
            top = max([c["scores"].get(d) or 0.0 for c in cells for d in dims] + [5.0])
            ax.set_ylim(0, top * 1.15)
            ax.set_title(f"{TASK_TITLES[task]}: LLM judge {section['judge']} — {report.get('model') or 'model'}")
            ax.legend(loc="upper right", fontsize=7)
            slug = re.sub(r"[^A-Za-z0-9._-]+", "-", section["judge"]).strip("-") or "judge"
            path = out / f"judge_{slug}_{task}.png"
            try:
                fig.savefig(path, dpi=100)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
            paths.append(path)
    return paths
