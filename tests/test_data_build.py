"""eyecare data build and validate: the example end to end (rules only), the split by patient, duplicate
removal, resume after SIGKILL, bad rows with their line numbers, the privacy rule, and `eyecare bench
run` reading the outputs unchanged."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_fakes import FakeServer
from eyecare.bench.data import load_dataset
from eyecare.cli import main
from eyecare.data import build, deduplicate, load_taxonomies
from eyecare.data.errors import DataError
from eyecare.data.split import patients_for_test
from eyecare.data.synthetic import CASES, write_example
from eyecare.jsonl import read_rows

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "data"
TAXONOMIES = load_taxonomies()


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _patients_by_case():
    return {case_id: patient for case_id, _, _, patient, _, _ in CASES}


def test_shipped_example_is_synthetic_and_what_the_generator_writes(tmp_path):
    import matplotlib.image

    write_example(tmp_path)
    assert (tmp_path / "manifest.csv").read_text() == (EXAMPLE / "manifest.csv").read_text()
    for png in sorted((EXAMPLE / "images").glob("*.png")):
        assert np.array_equal(matplotlib.image.imread(png), matplotlib.image.imread(tmp_path / "images" / png.name))
    assert len(list((EXAMPLE / "images").glob("*.png"))) == len(CASES) == 18
    assert "SYNTHETIC" in (EXAMPLE / "README.md").read_text()


def test_rules_only_build_of_the_example_splits_by_patient_and_bench_reads_it(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "build", str(EXAMPLE / "manifest.csv"), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "rules only; nothing is sent" in captured.err
    assert "18 case(s): 0 already done, 18 made now" in captured.out
    train, test = _rows(out / "train.jsonl"), _rows(out / "test.jsonl")
    patients = _patients_by_case()
    train_patients = {patients[r["provenance"]["case"]] for r in train}
    test_patients = {patients[r["provenance"]["case"]] for r in test}
    assert train_patients and test_patients and not train_patients & test_patients
    assert len(train_patients | test_patients) == 9
    assert len(test_patients) == round(0.2 * 9)
    # every labelled case: as many Yes as No, and one multiple-choice question
    items = train + test
    for case_id, *_ in CASES:
        mine = [r for r in items if r["provenance"]["case"] == case_id]
        answers = [r["answer"] for r in mine if r["provenance"]["generator"] == "rule:yes_no"]
        assert answers.count("Yes") == answers.count("No") >= 1
        assert sum(r["provenance"]["generator"] == "rule:choice" for r in mine) == 1
    for row in items:
        assert row["provenance"]["prompt_version"] == "rules.v1" and row["provenance"]["model"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == {"train": len(train), "test": len(test)}
    assert sum(sum(c.values()) for c in summary["counts"].values()) == len(items)
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| oct |" in (out / "summary.md").read_text()

    # both formats load in the bench unchanged, with the same records
    llava = load_dataset(out / "test.json")
    ours = load_dataset(out / "test.jsonl")
    assert [(r.id, r.task, r.modality, r.gold) for r in llava] == [(r.id, r.task, r.modality, r.gold) for r in ours]
    assert all(os.path.isfile(p) for r in ours for p in r.images)
    for data in ("test.json", "train.jsonl"):
        assert main(["bench", "run", "--data", str(out / data), "--model", "baseline:yes", "--output",
                     str(tmp_path / data), "--no-progress", "--no-plots"]) == 0
        predictions = _rows(tmp_path / data / "predictions.jsonl")
        assert len(predictions) == len(load_dataset(out / data))
    # same manifest and seed: the same data; another seed: other questions, but the same patients split
    again = tmp_path / "again"
    assert main(["data", "build", str(EXAMPLE / "manifest.csv"), "--out", str(again), "--no-progress", "--no-chart"]) == 0
    assert (again / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


def test_split_keeps_patients_whole_and_does_not_depend_on_order():
    keys = [f"patient:{i}" for i in range(50)]
    test = patients_for_test(keys, 0.3, seed=1)
    assert len(test) == 15 and test == patients_for_test(list(reversed(keys)), 0.3, seed=1)
    assert test != patients_for_test(keys, 0.3, seed=2)
    assert patients_for_test(keys[:2], 0.01) and len(patients_for_test(keys[:2], 0.99)) == 1
    assert patients_for_test(keys, 0.0) == set() and patients_for_test(keys, 1.0) == set(keys)
    with pytest.raises(ValueError, match="--test-fraction must be between 0 and 1"):
        patients_for_test(keys, 1.5)


def _item(i, question, answer="Yes", task="closed", image="a", options=()):
    return {"id": f"i{i}", "images_key": [image], "task": task, "question": question, "answer": answer,
            "options": list(options)}


def test_dedup_removes_exact_and_near_duplicates_of_the_same_image_only():
    items = [_item(1, "Is there drusen in this OCT scan?"),
             _item(2, "is there DRUSEN in this OCT scan"),                 # exact, once normalized
             _item(3, "Are drusen present in this OCT scan?"),             # near: the same content words
             _item(4, "Are there drusen in this OCT scan?", answer="No"),  # closed, other answer: kept
             _item(5, "Is there drusen in this OCT scan?", image="b"),     # another image: kept
             _item(6, "What is seen?", "Drusen under the fovea.", task="open"),
             _item(7, "What is seen?", "Drusen under the fovea.", task="report"),  # another task: kept
             _item(8, "What is seen?", "A macular hole with an epiretinal membrane.", task="open"),
             _item(9, "What is seen here?", "Drusen under the fovea.", task="open"),         # near: similar text
             _item(10, "Does this OCT scan show RD?", answer="No"),
             _item(11, "Does this OCT scan show ME?", answer="No")]   # one short word apart: not a duplicate
    kept, removed = deduplicate(items, threshold=0.85)
    assert [i["id"] for i in kept] == ["i1", "i4", "i5", "i6", "i7", "i8", "i10", "i11"]
    assert [(i["id"], r.split(" (")[0]) for i, r in removed] == [
        ("i2", "exact duplicate of i1"), ("i3", "near duplicate of i1"), ("i9", "near duplicate of i6")]
    kept, removed = deduplicate(items, threshold=1.5)   # exact only
    assert [i["id"] for i, _ in removed] == ["i2"]


def _copy_example(tmp_path, rows=None):
    folder = tmp_path / "data"
    shutil.copytree(EXAMPLE, folder)
    if rows is not None:
        with open(folder / "manifest.csv", "a", encoding="utf-8") as f:
            f.write("".join(rows))
    return folder / "manifest.csv"


def test_the_same_image_under_another_name_is_a_duplicate(tmp_path):
    manifest = _copy_example(tmp_path, ["syn-19,images/copy-of-01.png,fundus,diabetic retinopathy,,SYN-P01,OD\n"])
    shutil.copy(manifest.parent / "images" / "syn-01.png", manifest.parent / "images" / "copy-of-01.png")
    result = build(manifest, tmp_path / "out", taxonomies=TAXONOMIES, progress=False, chart=False,
                   log=lambda line: None)
    rejected = _rows(tmp_path / "out" / "rejected.jsonl")
    assert rejected and all(r["case"] == "syn-19" and r["reason"].split(" of ")[1].startswith("syn-01-")
                            for r in rejected)
    # syn-19's Yes question is syn-01's (worded alike or otherwise); its No and choice questions may differ
    assert [r["answer"] for r in rejected].count("Yes") == 1
    assert sum(result.summary["rejected"].get(k, 0) for k in ("exact duplicate", "near duplicate")) == len(rejected)


def test_bad_rows_are_reported_with_their_line_and_the_others_are_built(tmp_path, capsys):
    manifest = _copy_example(tmp_path, [
        "bad-1,images/missing.png,oct,macular hole,,P,OD\n",                      # line 20
        "bad-2,images/syn-01.png,x-ray,,,P,OD\n",                                # line 21
        "bad-3,images/syn-01.png,oct,glaucoma,,P,OD\n",                          # line 22
        "bad-4,images/syn-01.png,oct,macular hole,,P,sideways\n",                 # line 23
        "syn-01,images/syn-02.png,fundus,glaucoma,,P,OD\n",                      # line 24
        "bad-6,manifest.csv,fundus,glaucoma,,P,OD\n",                            # line 25
        "good-7,images/syn-02.png,Fundus Photography,Glaucomatous optic disc,\"multi\nline, report\",P9,right\n",
        "bad-8,,oct,,,,\n"])                                                     # line 28
    out = tmp_path / "out"
    assert main(["data", "validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert main(["data", "build", str(manifest), "--out", str(out), "--no-progress", "--no-chart"]) == 1
    captured = capsys.readouterr()
    for line, why in ((20, "image images/missing.png: no such file"), (21, 'modality "x-ray" is not one of'),
                      (22, "label 'glaucoma' is not in the oct taxonomy"), (23, "eye 'sideways' is not OD"),
                      (24, "id 'syn-01' was already used on line 2"), (25, "image manifest.csv: not an image the model"),
                      (28, "no image (column 'image')")):
        assert f"manifest.csv:{line}: {why}" in err, (line, err)
        assert f"manifest.csv:{line}: {why}" in captured.err
    assert "manifest.csv:26" not in err and "19 case(s)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["bad_rows"]) == 7 and summary["cases"] == 19
    items = _rows(out / "train.jsonl") + _rows(out / "test.jsonl")
    assert any(r["provenance"]["case"] == "good-7" and r["provenance"]["manifest_line"] == 26 for r in items)


def test_jsonl_manifest_and_its_bad_lines(tmp_path):
    image = EXAMPLE / "images" / "syn-08.png"
    (tmp_path / "m.jsonl").write_text("\n".join([
        json.dumps({"id": "a", "images": [str(image)], "modality": "OCT", "labels": ["CSC"], "patient_id": 7}),
        "{not json",
        json.dumps({"id": "b", "image": str(image), "modality": "oct", "labels": "macular hole; ERM"}),
        json.dumps({"id": "c", "image": str(image), "modality": "oct", "labels": [1, 2]}),
        json.dumps(["a list"])]) + "\n")
    from eyecare.data.manifest import load_manifest

    manifest = load_manifest(tmp_path / "m.jsonl", TAXONOMIES)
    assert [(c.id, c.labels, c.patient) for c in manifest.cases] == [
        ("a", ("central serous chorioretinopathy",), "7"), ("b", ("macular hole", "epiretinal membrane"), None)]
    assert [line for line, _ in manifest.problems] == [2, 4, 5]
    with pytest.raises(DataError, match="the header has no 'modality' column"):
        (tmp_path / "h.csv").write_text("image,kind\nx.png,oct\n")
        load_manifest(tmp_path / "h.csv", TAXONOMIES)


def test_remote_endpoints_are_refused_without_allow_remote(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "build", str(EXAMPLE / "manifest.csv"), "--out", str(out),
                 "--agents", "http://192.0.2.7:8000/v1"]) == 1
    assert "needs --allow-remote" in capsys.readouterr().err
    assert not out.exists()
    # a loopback server that is not there: one line naming it, not a traceback
    assert main(["data", "build", str(EXAMPLE / "manifest.csv"), "--out", str(out), "--no-progress",
                 "--agents", "http://127.0.0.1:9/v1", "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "eyecare data: error: http://127.0.0.1:9/v1/models failed 1 times" in err and "nothing was made" in err


def _build_command(manifest, out, url):
    return [sys.executable, "-m", "eyecare.cli", "data", "build", str(manifest), "--out", str(out), "--agents", url,
            "--agents-model", "fake", "--open-per-case", "2", "--no-progress", "--no-chart"]


def test_killed_build_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    manifest = EXAMPLE / "manifest.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # Cases with a report make 5 requests (normalizer, writer, 3 verdicts); syn-03 has none. The 12th request
    # is the second of syn-04: the process dies with syn-01..03 recorded and syn-04 half asked.
    killer = FakeServer(kill_at=12)
    try:
        proc = subprocess.Popen(_build_command(manifest, tmp_path / "killed", killer.url), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer.kill_pid = proc.pid
        out, err = proc.communicate(timeout=300)
    finally:
        killer.close()
    assert proc.returncode == -signal.SIGKILL, err
    assert "will send the report text and labels of 17 case(s)" in err and f"server at {killer.url}" in err
    state = tmp_path / "killed" / "items.jsonl"
    assert [r["id"] for r in read_rows(state)] == ["syn-01", "syn-02", "syn-03"]
    with open(state, "ab") as f:      # as if the kill had landed inside a write
        f.write(b'{"id": "syn-04", "items": [')

    server = FakeServer()
    try:
        finished = subprocess.run(_build_command(manifest, tmp_path / "killed", server.url), cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        assert "3 already done, 15 made now" in finished.stdout
        assert server.requests == 15 * 5   # syn-04 .. syn-18, all with reports, asked from the start
        reference = subprocess.run(_build_command(manifest, tmp_path / "whole", server.url), cwd=tmp_path,
                                   env=env, capture_output=True, text=True, timeout=300)
        assert reference.returncode == 0, reference.stderr
    finally:
        server.close()
    ids = [r["id"] for r in read_rows(state)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 18
    for name in ("train.jsonl", "test.jsonl", "train.json", "test.json", "rejected.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    rows = _rows(tmp_path / "whole" / "train.jsonl") + _rows(tmp_path / "whole" / "test.jsonl")
    agent_rows = [r for r in rows if r["provenance"]["generator"].startswith("agent:")]
    assert {r["task"] for r in agent_rows} == {"open", "report"}
    assert all(r["provenance"]["model"] == "fake" and r["provenance"]["verdict"] == "supported" for r in agent_rows)
    # a rerun with everything done asks nothing and changes nothing
    before = (tmp_path / "whole" / "train.jsonl").read_text()
    assert main(["data", "build", str(manifest), "--out", str(tmp_path / "whole"), "--no-progress", "--no-chart",
                 "--agents", "http://127.0.0.1:9/v1", "--agents-model", "fake", "--open-per-case", "2"]) == 0
    assert (tmp_path / "whole" / "train.jsonl").read_text() == before
