"""`eyecare bench judge`: end to end against a real `eyecare serve` with a tiny model and schema-constrained
output (the scores are meaningless, every piece runs for real); resume after SIGKILL with nothing lost
or repeated; malformed judge output and a failing endpoint recorded as failures and asked again later;
the rubric files; the scores in report.md/csv/json, the charts and `bench compare`."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from statistics import fmean

import jsonschema
import pytest

from eyecare.bench.judge import RubricError, default_rubrics, load_rubric, prediction_hash, read_judgments
from eyecare.cli import main as eyecare
from served import ROOT, start_server, stop_server


def bench_run(out, tasks="open,report", limit=4):
    assert eyecare(["bench", "run", "--model", "baseline:yes", "--tasks", tasks, "--limit", str(limit),
                    "--output", str(out), "--no-progress", "--no-plots"]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


class Judge:
    """A scripted OpenAI-style judge on a loopback port: `answer(n, body)` gives the n-th reply's
    (status, content); requests past `hold_after` wait until `release` is set."""

    def __init__(self, answer, hold_after=None):
        self.answer, self.hold_after = answer, hold_after
        self.bodies, self.lock = [], threading.Lock()
        self.holding, self.release = threading.Event(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.bodies.append(body)
                    n = len(outer.bodies)
                if outer.hold_after is not None and n > outer.hold_after:
                    outer.holding.set()
                    outer.release.wait(120)
                status, content = outer.answer(n, body)
                data = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": content}}]}
                                  if status == 200 else {"error": {"message": content}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client was killed
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def valid_answer(body):
    """Schema-valid scores for whatever rubric the request carries (its dimensions from the schema)."""
    schema = body["response_format"]["json_schema"]["schema"]
    dims = [k for k in schema["required"] if k != "rationale"]
    return json.dumps({"rationale": "ok", **{d: 1 + (len(body["messages"][1]["content"]) + i) % 5
                                             for i, d in enumerate(dims)}})


def test_shipped_rubrics_and_bad_rubric_files(tmp_path):
    rubrics = default_rubrics()
    assert set(rubrics) == {"open", "report"}
    for task, rubric in rubrics.items():
        names = [n for n, _ in rubric.dimensions]
        assert rubric.task == task and rubric.version == "1" and (rubric.scale_min, rubric.scale_max) == (1, 5)
        good = {"rationale": "fine", **{n: 3 for n in names}}
        jsonschema.validate(good, rubric.schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, names[0]: 6}, rubric.schema)
        text = rubric.messages({"prompt": "Q {x}?", "answer": "ref", "prediction": "pred", "modality": "oct"})[1]["content"]
        assert "Q {x}?" in text and "ref" in text and "pred" in text and all(n in text for n in names)
    data = json.loads(open(rubrics["open"].path).read())
    for change, message in [({"format": "x"}, "not a judge rubric"), ({"task": "closed"}, "task must be one of"),
                            ({"schema": {**data["schema"], "required": ["rationale"]}}, "must require every dimension"),
                            ({"scale": {"min": 5, "max": 1}}, "integer min < max")]:
        (tmp_path / "r.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(RubricError, match=message):
            load_rubric(tmp_path / "r.json")


def test_end_to_end_against_eyecare_serve_with_constrained_json(tmp_path):
    from eyecare.endpoint import LocalEndpoint
    from eyecare.model import EyecareGPT
    from eyecare.tiny import make_tiny

    model_dir = str(make_tiny(tmp_path / "judge", "qwen2", dtype="float32"))
    predictions = bench_run(tmp_path / "run")
    # The shipped rubrics with a short rationale (a random model writes garbage until the length limit).
    files = []
    for task, rubric in default_rubrics().items():
        data = json.loads(open(rubric.path).read())
        data["version"] = "1-short"
        data["schema"]["properties"]["rationale"]["maxLength"] = 24
        files += ["--rubric", str(tmp_path / f"{task}.json")]
        (tmp_path / f"{task}.json").write_text(json.dumps(data))
    served = start_server(model_dir)
    try:
        code = eyecare(["bench", "judge", str(tmp_path / "run"), "--judge", served.base_url, "--concurrency", "2",
                        "--max-tokens", "160", "--no-progress", *files])
    finally:
        stop_server(served)
    assert code == 0
    rows = read_judgments(tmp_path / "run" / "judgments.jsonl")
    rubrics = {t: load_rubric(tmp_path / f"{t}.json") for t in ("open", "report")}
    assert rubrics["open"].id == "eyeeval-open-qa/1-short"
    assert sorted(r["id"] for r in rows) == sorted(p["id"] for p in predictions)
    for row in rows:
        rubric = rubrics[row["task"]]
        assert row["judge"] == "judge" and row["rubric"] == rubric.id and row["error"] is None
        assert set(row["scores"]) == {n for n, _ in rubric.dimensions}
        assert all(1 <= v <= 5 for v in row["scores"].values())
    # The server's greedy, schema-constrained judgment is the in-process model's.
    model = EyecareGPT.from_pretrained(model_dir, progress=False)
    local = LocalEndpoint(model_dir, model=model)
    first = next(p for p in predictions if p["task"] == "report")
    reply = local.chat_json(rubrics["report"].messages(first), rubrics["report"].schema, max_tokens=160)
    row = next(r for r in rows if r["id"] == first["id"])
    assert reply.value == {"rationale": row["rationale"], **row["scores"]}
    model.close()
    # The report: mean per dimension per task and modality, n judged and failed, in md, csv, json, charts.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (section,) = report["judges"]
    for task in ("open", "report"):
        task_rows = [r for r in rows if r["task"] == task]
        overall = section["overall"][task]
        assert (overall["n_judged"], overall["n_failed"]) == (len(task_rows), 0)
        for name, _ in rubrics[task].dimensions:
            assert overall["scores"][name] == pytest.approx(fmean(r["scores"][name] for r in task_rows))
    assert "## LLM judge: judge" in (tmp_path / "run" / "report.md").read_text()
    table = list(csv.DictReader(open(tmp_path / "run" / "report.csv")))
    judged = [r for r in table if r["judge"] == "judge" and r["modality"] == "all"]
    assert {r["task"] for r in judged} == {"open", "report"} and all(float(r["judge_accuracy"] or 0) >= 0 for r in judged)
    assert sorted(p.name for p in (tmp_path / "run" / "plots").glob("judge_*.png")) == \
        ["judge_judge_open.png", "judge_judge_report.png"]
    assert eyecare(["bench", "compare", str(tmp_path / "run"), str(tmp_path / "run"), "--output",
                    str(tmp_path / "cmp.md")]) == 0
    assert "## LLM judge: judge" in (tmp_path / "cmp.md").read_text()


def test_sigkill_then_rerun_loses_and_repeats_nothing(tmp_path):
    predictions = bench_run(tmp_path / "run", limit=5)
    judge = Judge(lambda n, body: (200, valid_answer(body)), hold_after=2)
    try:
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.Popen([sys.executable, "-m", "eyecare.cli", "bench", "judge", str(tmp_path / "run"),
                                 "--judge", judge.url, "--judge-model", "m", "--concurrency", "1", "--no-progress",
                                 "--no-report"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert judge.holding.wait(120), proc.stderr.read()  # the third call is in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        path = tmp_path / "run" / "judgments.jsonl"
        assert [r["id"] for r in read_judgments(path)] == [p["id"] for p in predictions[:2]]
        with open(path, "a") as f:
            f.write('{"id": "cut-short-by-a-kill", "rub')  # a write a kill cut short
        judge.hold_after = None
        judge.release.set()
        assert eyecare(["bench", "judge", str(tmp_path / "run"), "--judge", judge.url, "--judge-model", "m",
                        "--no-progress", "--no-plots"]) == 0
    finally:
        judge.close()
    rows = read_judgments(path)
    keys = [(r["id"], r["prediction_sha"]) for r in rows]
    assert sorted(keys) == sorted((p["id"], prediction_hash(p["prediction"])) for p in predictions)
    assert len(judge.bodies) == len(predictions) + 1  # only the call in flight was asked twice
    assert path.read_text().endswith("}\n")


def test_malformed_judge_output_is_retried_then_recorded_as_a_failure(tmp_path):
    predictions = bench_run(tmp_path / "run", tasks="open", limit=2)
    first_prompt = None

    def answer(n, body):
        nonlocal first_prompt
        first_prompt = first_prompt or body["messages"][1]["content"]
        if body["messages"][1]["content"] == first_prompt:  # record 1: never valid
            return 200, "Sure! The answer is great." if len(body["messages"]) == 2 else '{"rationale": "x", "accuracy": 9}'
        # record 2: invalid once, then valid (the retry carries the problem back to the judge)
        return (200, valid_answer(body)) if len(body["messages"]) > 2 else (200, "```json\n{\"rationale\": 1}\n```")
    judge = Judge(answer)
    try:
        code = eyecare(["bench", "judge", str(tmp_path / "run"), "--judge", judge.url, "--judge-model", "m",
                        "--concurrency", "1", "--attempts", "2", "--no-progress", "--no-plots"])
    finally:
        judge.close()
    assert code == 1
    rows = {r["id"]: r for r in read_judgments(tmp_path / "run" / "judgments.jsonl")}
    bad, good = rows[predictions[0]["id"]], rows[predictions[1]["id"]]
    assert bad["scores"] is None and bad["attempts"] == 2 and "does not match the schema" in bad["error"]
    assert bad["raw"] == '{"rationale": "x", "accuracy": 9}'
    assert good["error"] is None and good["attempts"] == 2 and good["scores"]["accuracy"] in range(1, 6)
    assert "'accuracy' is a required property" in judge.bodies[-1]["messages"][-1]["content"]
    overall = json.loads((tmp_path / "run" / "report.json").read_text())["judges"][0]["overall"]["open"]
    assert (overall["n_judged"], overall["n_failed"]) == (1, 1)


def test_a_failing_endpoint_is_recorded_and_a_rerun_asks_again(tmp_path):
    predictions = bench_run(tmp_path / "run", tasks="report", limit=2)
    down = Judge(lambda n, body: (503, "overloaded"))
    try:
        code = eyecare(["bench", "judge", str(tmp_path / "run"), "--judge", down.url, "--judge-model", "m",
                        "--retries", "1", "--no-progress", "--no-plots"])
    finally:
        down.close()
    assert code == 1 and len(down.bodies) == 2 * len(predictions)  # each call tried twice (one retry)
    rows = read_judgments(tmp_path / "run" / "judgments.jsonl")
    assert len(rows) == 2 and all(r["scores"] is None and "HTTP 503: overloaded" in r["error"] for r in rows)
    up = Judge(lambda n, body: (200, valid_answer(body)))
    try:
        assert eyecare(["bench", "judge", str(tmp_path / "run"), "--judge", up.url, "--judge-model", "m",
                        "--no-progress", "--no-plots"]) == 0
    finally:
        up.close()
    assert len(up.bodies) == 2
    overall = json.loads((tmp_path / "run" / "report.json").read_text())["judges"][0]["overall"]["report"]
    assert (overall["n_judged"], overall["n_failed"]) == (2, 0)
