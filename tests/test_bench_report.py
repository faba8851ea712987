"""Reports: per task x modality scores, counts, unparseable answers, speed, files, comparison."""
import csv
import json

import pytest

from eyecare.bench.errors import OutputError
from eyecare.bench.report import build_report, compare_reports, load_report, render_markdown, write_report


def _row(rid, task, modality, answer, prediction, options=(), error=None, latency=10.0, timings=None):
    return {"id": rid, "task": task, "modality": modality, "prompt": "q", "images": [], "options": list(options),
            "answer": answer, "prediction": prediction, "error": error, "latency_ms": latency,
            "batch_size": 1, "timings": timings, "model": "stand-in"}


OPTS = ["Glaucoma", "Cataract"]
ROWS = [
    _row("c1", "closed", "oct", "yes", "Yes, subretinal fluid.", latency=10.0,
         timings={"decode_tokens_per_s": 30.0, "total_ms": 9.0}),
    _row("c2", "closed", "oct", "no", "I cannot tell.", latency=20.0, timings={"decode_tokens_per_s": 50.0}),
    _row("c3", "closed", "fundus", "B", "The answer is B.", options=OPTS, latency=30.0),
    _row("c4", "closed", "fundus", "A", "", options=OPTS, error="RuntimeError: boom", latency=40.0),
    _row("o1", "open", "oct", "Subretinal fluid under the fovea.", "Subretinal fluid under the fovea.", latency=50.0),
    _row("r1", "report", "fundus", "Drusen at the macula.", "Normal appearance.", latency=60.0),
]


def test_build_report_scores_each_cell_and_overall():
    report = build_report(ROWS, source="p.jsonl")
    assert report["model"] == "stand-in" and report["source"] == "p.jsonl"
    assert report["counts"] == {"records": 6, "errors": 1, "by_task": {"closed": 4, "open": 1, "report": 1}}
    closed = report["overall"]["closed"]
    assert (closed["n"], closed["correct"], closed["accuracy"], closed["unparseable"], closed["errors"]) == (
        4, 2, 50.0, 1, 1)
    cells = {(c["task"], c["modality"]): c for c in report["cells"]}
    assert list(cells) == [("closed", "fundus"), ("closed", "oct"), ("open", "oct"), ("report", "fundus")]
    assert cells[("closed", "oct")]["accuracy"] == 50.0 and cells[("closed", "oct")]["latency_ms"] == 15.0
    assert cells[("open", "oct")]["bleu4"] == pytest.approx(100.0) and cells[("open", "oct")]["f1"] == 100.0
    assert cells[("report", "fundus")]["term_recall"] == 0.0 and cells[("report", "fundus")]["rouge_l"] == 0.0
    # Unparseable lists replies the extractor could not read; model errors are listed apart.
    assert [u["id"] for u in report["unparseable"]] == ["c2"]
    assert report["errors"] == [{"id": "c4", "error": "RuntimeError: boom"}]
    perf = report["performance"]
    assert perf["latency_ms"]["mean"] == 35.0 and perf["latency_ms"]["p50"] == 35.0
    assert perf["latency_ms"]["p90"] == 60.0 and perf["model_seconds"] == pytest.approx(0.21)
    assert perf["tokens_per_s"] == 40.0 and perf["timings"] == {"decode_tokens_per_s": 40.0, "total_ms": 9.0}


def test_markdown_csv_json_and_charts(tmp_path):
    report = build_report(ROWS, source="p.jsonl")
    paths = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names[:3] == ["accuracy.png", "bleu1.png", "bleu2.png"]
    assert {"report.md", "report.csv", "report.json", "rouge_l.png", "f1.png", "term_recall.png"} <= set(names)
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "out" / "plots" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "# Eyecare-Bench report: stand-in" in md
    assert "## Closed QA by modality" in md and "## Report generation by modality" in md
    assert "| oct | 2 | 50.00 | 1 | 0 | 15.00 |" in md
    assert "Decode speed reported by the model: 40.0 tokens/s." in md
    assert "`c2` (oct): \"I cannot tell.\"" in md and "`c4`: RuntimeError: boom" in md
    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["modality"]) for r in rows][-3:] == [("closed", "all"), ("open", "all"), ("report", "all")]
    assert (rows[0]["modality"], rows[0]["accuracy"], rows[0]["unparseable"], rows[0]["errors"]) == (
        "fundus", "50.0", "0", "1")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["overall"]["closed"]["accuracy"] == 50.0
    assert load_report(tmp_path / "out")["counts"]["records"] == 6


def test_report_without_speed_or_text_tasks():
    rows = [_row("c1", "closed", "ct", "yes", "Yes", latency=None)]
    report = build_report(rows)
    assert report["performance"]["latency_ms"] is None and report["performance"]["tokens_per_s"] is None
    md = render_markdown(report)
    assert "Open QA" not in md.split("## Overall")[1].split("##")[0]


def test_compare_puts_two_runs_side_by_side(tmp_path):
    a = build_report(ROWS, source="a.jsonl")
    better = [dict(r, prediction=r["answer"], error=None) for r in ROWS]
    b = build_report(better, source="b.jsonl")
    text = compare_reports(a, b, ["base", "new"])
    assert text.startswith("# Eyecare-Bench comparison: base vs new")
    assert "| **all** | 4 / 4 | 50.00 → 100.00 (+50.00) | 1 → 0 (-1) |" in text
    assert "| fundus | 1 / 1 | 0.00 → 100.00 (+100.00)" in text
    assert "## Report generation" in text and "decode tokens/s" in text
    fewer = build_report(ROWS[:3], source="c.jsonl")
    assert "different numbers of records" in compare_reports(a, fewer)


def test_load_report_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(OutputError, match="not an eyecare bench report"):
        load_report(tmp_path / "x.json")
    with pytest.raises(OutputError, match="no such report"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write the report"):
        write_report(build_report(ROWS), tmp_path / "file" / "sub", plots=False)
