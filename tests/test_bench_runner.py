"""The runner: order, per-record errors, timings, batching, resume after a kill, output errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eyecare.bench.data import load_dataset
from eyecare.bench.errors import OutputError
from eyecare.bench.runner import read_predictions, run

REPO = Path(__file__).resolve().parents[1]


class Scripted:
    """A stand-in model: deterministic replies, optional failures, optional timings."""

    def __init__(self, fail_on=(), timings=False):
        self.calls, self.fail_on, self.with_timings = [], set(fail_on), timings

    def chat(self, question, images=None):
        self.calls.append((question, list(images)))
        if any(word in question for word in self.fail_on):
            raise RuntimeError("device lost")
        if self.with_timings:
            self.timings = {"decode_tokens_per_s": 40.0 + len(self.calls), "total_ms": 12.5, "note": "x",
                            "bad": object()}
        return f"Yes. ({len(question)})"


class Batched(Scripted):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches = []

    def generate(self, requests):
        self.batches.append(len(requests))
        if any(word in r["question"] for r in requests for word in self.fail_on):
            raise RuntimeError("batch failed")
        return [{"text": f"No. {r['question'][-3:]}"} for r in requests]


def _dataset(tmp_path, n=10):
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"not really a png")
        task = ["closed", "open", "report"][i % 3]
        rows.append({"id": f"q{i:02d}", "images": [f"img/{i}.png"], "question": f"Question number {i:02d}?",
                     "answer": "yes" if task == "closed" else f"Answer {i}", "task": task,
                     "modality": ["oct", "fundus"][i % 2]})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(path)


def test_run_writes_one_line_per_record_in_order(tmp_path):
    records = _dataset(tmp_path)
    model = Scripted(fail_on=["03"], timings=True)
    result = run(records, model, tmp_path / "out" / "predictions.jsonl", model_name="scripted", progress=False,
                 batch_size=4)
    assert (result.total, result.resumed, result.completed, result.errors) == (10, 0, 10, 1)
    rows = read_predictions(tmp_path / "out" / "predictions.jsonl")
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert model.calls[0] == ("Question number 00?", [str(tmp_path / "img" / "0.png")])
    failed = rows[3]
    assert failed["error"] == "RuntimeError: device lost" and failed["prediction"] == "" and failed["timings"] is None
    ok = rows[4]
    assert ok["prediction"] == "Yes. (19)" and ok["error"] is None and ok["model"] == "scripted"
    assert ok["timings"] == {"decode_tokens_per_s": 45.0, "total_ms": 12.5, "note": "x"}
    assert ok["latency_ms"] >= 0 and ok["images"] == ["img/4.png"] and ok["answer"] == "Answer 4"
    assert ok["prompt"] == "Question number 04?" and ok["task"] == "open" and ok["modality"] == "oct"
    assert {r["batch_size"] for r in rows} == {1}     # no generate(): asked and written one by one


def test_generate_is_used_for_batches_and_failures_are_pinned_per_record(tmp_path):
    records = _dataset(tmp_path)
    model = Batched(fail_on=["05"])
    result = run(records, model, tmp_path / "p.jsonl", batch_size=4, progress=False)
    rows = read_predictions(tmp_path / "p.jsonl")
    assert model.batches == [4, 4, 2]
    assert result.errors == 1 and rows[5]["error"] == "RuntimeError: device lost"
    # The failing batch was asked again record by record through chat().
    assert rows[4]["prediction"].startswith("Yes.") and rows[4]["batch_size"] == 4
    assert rows[0]["prediction"] == "No. 00?" and rows[9]["prediction"] == "No. 09?"
    assert [r["id"] for r in rows] == [r.id for r in records]


def test_resume_skips_done_records_and_repairs_a_cut_off_line(tmp_path):
    records = _dataset(tmp_path)
    path = tmp_path / "p.jsonl"
    run(records[:4], Scripted(), path, model_name="m", progress=False)
    with open(path, "a") as f:
        f.write('{"id": "q04", "task": "op')          # a write cut short by a kill
    model = Scripted()
    result = run(records, model, path, model_name="m", progress=False)
    assert (result.resumed, result.completed) == (4, 6)
    assert len(model.calls) == 6
    rows = read_predictions(path)
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert path.read_text().endswith("\n")
    again = run(records, Scripted(), path, model_name="m", progress=False)
    assert (again.resumed, again.completed) == (10, 0)


def test_resume_refuses_other_models_and_edited_records(tmp_path):
    records = _dataset(tmp_path)
    path = tmp_path / "p.jsonl"
    run(records[:2], Scripted(), path, model_name="first", progress=False)
    with pytest.raises(OutputError, match="holds predictions of model 'first', not 'second'"):
        run(records, Scripted(), path, model_name="second", progress=False)
    text = (tmp_path / "data.jsonl").read_text().replace("Question number 01?", "Question number 1 (edited)?")
    (tmp_path / "data.jsonl").write_text(text)
    edited = load_dataset(tmp_path / "data.jsonl")
    with pytest.raises(OutputError, match="'q01' was made for a different question"):
        run(edited, Scripted(), path, model_name="first", progress=False)
    result = run(edited, Scripted(), path, model_name="second", progress=False, overwrite=True)
    assert result.completed == 10 and len(read_predictions(path)) == 10


def test_unwritable_output_path_fails_before_any_work(tmp_path):
    records = _dataset(tmp_path, n=2)
    (tmp_path / "a_file").write_text("")
    model = Scripted()
    with pytest.raises(OutputError, match=r"cannot write predictions to .*a_file/run/p.jsonl: Not a directory"):
        run(records, model, tmp_path / "a_file" / "run" / "p.jsonl", progress=False)
    assert model.calls == []
    (tmp_path / "junk.jsonl").write_text("this is not json\n")
    with pytest.raises(OutputError, match="junk.jsonl:1: not a prediction line"):
        run(records, model, tmp_path / "junk.jsonl", progress=False)


PAUSING_MODEL = textwrap.dedent("""
    import os

    class Pausing:
        \"\"\"Answers; with PAUSE_FDS="ready,hold" set, on its 9th question it says so on the `ready` pipe and
        waits forever on the `hold` pipe (nobody writes to it): the test kills it there.\"\"\"
        def __init__(self):
            self.calls = 0

        def chat(self, question, images=None):
            self.calls += 1
            if self.calls == 9 and os.environ.get("PAUSE_FDS"):
                ready, hold = (int(fd) for fd in os.environ["PAUSE_FDS"].split(","))
                os.write(ready, b"8 answered\\n")
                os.read(hold, 1)
            return "Answer to " + question + " with " + str(len(images)) + " image(s)"

    def make():
        return Pausing()
""")


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    records = _dataset(tmp_path, n=40)
    (tmp_path / "pausingmodel.py").write_text(PAUSING_MODEL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "eyecare.bench", "run", "--data", str(tmp_path / "data.jsonl"),
               "--model-factory", "pausingmodel:make", "--output", str(out), "--no-progress", "--no-report",
               "--batch-size", "1"]
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    proc = subprocess.Popen(command, cwd=tmp_path, env=dict(env, PAUSE_FDS=f"{ready_w},{hold_r}"),
                            pass_fds=(ready_w, hold_r), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(ready_w)
    os.close(hold_r)
    # Blocks until the run is inside its 9th question (or has died: then the pipe reads empty).
    said = os.read(ready_r, 100)
    os.close(ready_r)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    os.close(hold_w)
    assert said == b"8 answered\n", err
    assert proc.returncode == -signal.SIGKILL
    predictions = out / "predictions.jsonl"
    done_at_kill = predictions.read_bytes().count(b"\n")
    assert done_at_kill == 8, "every finished record is on disk when the process is killed"
    with open(predictions, "ab") as f:            # as if the kill had landed inside a write
        f.write(b'{"id": "q3')

    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert f"{done_at_kill} already done, {40 - done_at_kill} predicted now" in finished.stdout

    sys.path.insert(0, str(tmp_path))
    try:
        import pausingmodel
    finally:
        sys.path.remove(str(tmp_path))
    run(records, pausingmodel.make(), tmp_path / "straight.jsonl", model_name="pausingmodel:make", progress=False)

    def essence(path):
        return [(r["id"], r["prompt"], r["prediction"], r["error"], r["model"]) for r in read_predictions(path)]

    resumed, straight = essence(predictions), essence(tmp_path / "straight.jsonl")
    assert len({row[0] for row in resumed}) == len(resumed) == 40
    assert resumed == straight
