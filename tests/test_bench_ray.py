"""`bench run --ray` on a real local Ray (2 CPUs, a small object store, no dashboard), two workers each running
the tiny EyecareGPT on lavapipe: the predictions equal a local run's record for record; worker processes
SIGKILLed mid-run leave every record answered exactly once (a record that kills two workers is written as
failed); a killed driver loses only what was in flight and the run resumes (here locally: the file is shared)."""
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray  # the [ray] extra, installed by `make test`

from eyecare.bench.data import load_dataset
from eyecare.bench.errors import BenchError
from eyecare.bench.models import load_model
from eyecare.bench.ray_runner import run_ray
from eyecare.bench.runner import read_predictions, run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "bench" / "synthetic_sample.jsonl"
N = 6


def essence(path):
    """What a run decides, by record: the prompt, the answer, the error (not timings or the model's name)."""
    return sorted((r["id"], r["prompt"], r["prediction"], r["error"]) for r in read_predictions(path))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from eyecare.tiny import make_tiny

    folder = tmp_path_factory.mktemp("ray")
    tiny = make_tiny(folder / "tiny", "phi3")
    # Every fourth record of the sample set: all three tasks, several modalities.
    records = load_dataset(SAMPLE)[::4][:N]
    model, name = load_model(str(tiny))
    reference = run(records, model, folder / "local.jsonl", model_name=name, progress=False)
    assert reference.completed == N and reference.errors == 0
    # The workers (and a driver started as a subprocess) import this checkout's package.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield {"folder": folder, "tiny": Path(tiny), "records": records, "name": name,
               "local": essence(folder / "local.jsonl")}
    finally:
        ray.shutdown()


def assert_clean_workers(result):
    # Each worker ran with the Vulkan validation layer on (EYECARE_VALIDATE=1, inherited) and it said nothing.
    assert [w["validation_messages"] for w in result.workers] == [0] * len(result.workers)
    assert all(w["validation_layer"] for w in result.workers if w["records"])


def test_a_local_run_resumed_on_ray_equals_the_local_run(bench):
    path = bench["folder"] / "resumed-on-ray.jsonl"
    lines = (bench["folder"] / "local.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))                  # a local run stopped after two records
    result = run_ray(bench["records"], path, model=str(bench["tiny"]), model_name=bench["name"], workers=2,
                     gpus_per_worker=0, progress=False)
    assert (result.total, result.resumed, result.completed, result.errors) == (N, 2, N - 2, 0)
    assert essence(path) == bench["local"]
    assert result.worker_deaths == 0 and len(result.workers) == 2
    assert sum(w["records"] for w in result.workers) == N - 2
    assert all("llvmpipe" in w["device"] for w in result.workers if w["records"])
    assert_clean_workers(result)


FAULTY = textwrap.dedent("""
    # The tiny model, with faults on the questions named in faults.json: "always" SIGKILLs its own process (the
    # Ray actor's) every time, "once" the first time only, "hold" says so on the FIFO `ready` and then waits
    # forever on the FIFO `hold`, which nobody writes to.
    import json, os, signal
    from pathlib import Path
    from eyecare import EyecareGPT

    HERE = Path(__file__).resolve().parent

    class Faulty:
        def __init__(self):
            self.model = EyecareGPT.from_pretrained(str(HERE / "tiny"))
            self.faults = json.loads((HERE / "faults.json").read_text())

        def chat(self, question, images=()):
            if question == self.faults.get("always"):
                os.kill(os.getpid(), signal.SIGKILL)
            if question == self.faults.get("once"):
                try:
                    os.close(os.open(HERE / "killed-once", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            if question == self.faults.get("hold"):
                with open(HERE / "ready", "w") as ready:
                    ready.write("holding\\n")
                open(HERE / "hold").read()
            return self.model.chat(question, images=images)

    def make():
        return Faulty()
""")


def faulty_model(folder, bench, **faults):
    (folder / "faulty.py").write_text(FAULTY)
    (folder / "tiny").symlink_to(bench["tiny"])
    (folder / "faults.json").write_text(json.dumps(faults))


def test_killed_workers_lose_nothing_and_a_record_that_kills_two_is_failed(bench, tmp_path, monkeypatch):
    records = bench["records"]
    # `always` is the last record: it is handed out after `once` has run or on the other worker, so the two are
    # never in flight on one worker together, and the deaths are exactly three.
    once, always = records[1], records[-1]
    faulty_model(tmp_path, bench, once=once.prompt, always=always.prompt)
    monkeypatch.chdir(tmp_path)                          # where the workers find faulty.py, as locally
    path = tmp_path / "faults.jsonl"
    result = run_ray(records, path, factory="faulty:make", model_name="faulty:make", workers=2, gpus_per_worker=0,
                     progress=False)
    assert (tmp_path / "killed-once").exists()
    # Three processes were killed: once by `once`, twice by `always`; each was replaced.
    assert result.worker_deaths == 3, result.deaths
    rows = read_predictions(path)
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)       # each record exactly once
    failed = {r["id"]: r for r in rows if r["error"]}
    assert list(failed) == [always.id] and result.errors == 1, (failed, result)
    assert failed[always.id]["error"].startswith("WorkerDied: 2 workers died while answering this record, the last "
                                                 "one answering it alone (worker ")
    assert failed[always.id]["prediction"] == ""
    expected = [row for row in bench["local"] if row[0] != always.id]
    assert [row for row in essence(path) if row[0] != always.id] == expected
    assert_clean_workers(result)


def test_a_killed_driver_loses_only_what_was_in_flight_and_the_run_resumes(bench, tmp_path):
    records = bench["records"]
    # The last record holds its worker until the driver is killed. It is handed out only once two answers came
    # back (2 workers x DEPTH 2 calls in flight at first), and the driver writes each answer before it hands
    # out more work: so when it holds, at least two answers are on disk.
    faulty_model(tmp_path, bench, hold=records[-1].prompt)
    os.mkfifo(tmp_path / "ready")
    os.mkfifo(tmp_path / "hold")
    ready = os.open(tmp_path / "ready", os.O_RDWR | os.O_NONBLOCK)   # a reader exists: the writer never blocks
    data = tmp_path / "data.jsonl"
    lines = SAMPLE.read_text().splitlines(keepends=True)[::4][:N]
    data.write_text("".join(lines))
    (tmp_path / "images").symlink_to(SAMPLE.parent / "images")
    out = tmp_path / "run"
    predictions = out / "predictions.jsonl"
    command = [sys.executable, "-m", "eyecare.bench", "run", "--data", str(data), "--model-factory", "faulty:make",
               "--output", str(out), "--no-report", "--no-progress", "--batch-size", "1",
               "--ray", ray.get_runtime_context().gcs_address, "--workers", "2", "--gpus-per-worker", "0"]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Until a worker holds (or the driver ends, which it cannot do while a record is held).
        while driver.poll() is None and not select.select([ready], [], [], 1.0)[0]:
            pass
        assert driver.poll() is None, driver.communicate()[1].decode()[-3000:]
        assert os.read(ready, 100) == b"holding\n"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.communicate()
        os.close(ready)
    assert driver.returncode == -signal.SIGKILL
    kept = read_predictions(predictions)
    assert 2 <= len(kept) < N and records[-1].id not in {r["id"] for r in kept}
    assert len({r["id"] for r in kept}) == len(kept)
    with open(predictions, "ab") as f:                   # as if the kill had landed inside a write
        f.write(b'{"id": "cut')

    # Resume the Ray run locally: the same file, the same writer.
    model, _ = load_model(str(bench["tiny"]))
    resumed = run(load_dataset(data), model, predictions, model_name="faulty:make", progress=False)
    assert (resumed.resumed, resumed.completed) == (len(kept), N - len(kept))
    assert essence(predictions) == bench["local"]


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchError, match=r"Ray worker \d on .* cannot start: ModelLoadError: --model-factory "
                                         r"'nowhere:make': cannot import nowhere"):
        run_ray(bench["records"], tmp_path / "p.jsonl", factory="nowhere:make", workers=1, gpus_per_worker=0,
                progress=False)
    assert read_predictions(tmp_path / "p.jsonl") == []


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers needs --ray"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker needs --ray"),
    (["--ray", "--gpus-per-worker", "2"], "--gpus-per-worker must be between 0 and 1 (got 2): a model runs on one Vulkan device; "
                                          "a fraction lets workers share a GPU"),
    (["--ray", "--workers", "0"], "--workers must be >= 1 (got 0)"),
])
def test_bad_ray_options_are_refused_before_anything_starts(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "eyecare.bench", "run", "--model", "baseline:yes", "--output",
                             str(tmp_path / "out"), *args], capture_output=True, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == f"eyecare bench: error: {message}"
    assert not (tmp_path / "out").exists()


def short_rubrics(folder):
    """The shipped rubrics with a short rationale (a random model writes garbage until the length limit)."""
    from eyecare.bench.judge import default_rubrics, load_rubric

    rubrics = {}
    for task, rubric in default_rubrics().items():
        data = json.loads(Path(rubric.path).read_text())
        data["version"] = "1-short"
        data["schema"]["properties"]["rationale"]["maxLength"] = 24
        (folder / f"{task}.json").write_text(json.dumps(data))
        rubrics[task] = load_rubric(folder / f"{task}.json")
    return rubrics


def test_judge_on_ray_equals_the_in_process_judge(bench, tmp_path):
    from eyecare.bench.judge import judge_run, read_judgments
    from eyecare.bench.ray_runner import judge_ray
    from eyecare.endpoint import LocalEndpoint

    def decided(path):   # what a judgment decides, by record (not timings)
        return sorted((j["id"], j["prediction_sha"], j["rubric"], j["judge"], j["scores"], j["rationale"], j["error"])
                      for j in read_judgments(path))

    rubrics = short_rubrics(tmp_path)
    # The fixture's answers (to closed questions) judged as open QA and report answers: four judgments.
    predictions = [dict(p, task=("open", "report")[i % 2])
                   for i, p in enumerate(read_predictions(bench["folder"] / "local.jsonl")[:4])]
    judged = predictions
    local = LocalEndpoint(str(bench["tiny"]))                   # greedy and schema-constrained: deterministic
    try:
        here = judge_run(predictions, local, tmp_path / "local.jsonl", rubrics, max_tokens=160, progress=False)
    finally:
        local.model.close()
    assert (here.total, here.asked, here.failed) == (len(judged), len(judged), 0)
    # Ray resumes a local judging stopped after one judgment: the same file, keys and writer.
    path = tmp_path / "ray.jsonl"
    path.write_text((tmp_path / "local.jsonl").read_text().splitlines(keepends=True)[0])
    result = judge_ray(predictions, str(bench["tiny"]), path, rubrics, judge=local.name, max_tokens=160, workers=2,
                       gpus_per_worker=0, progress=False)
    assert (result.total, result.done, result.asked, result.failed) == (len(judged), 1, len(judged) - 1, 0)
    assert decided(path) == decided(tmp_path / "local.jsonl")
    assert result.worker_deaths == 0 and sum(w["records"] for w in result.workers) == len(judged) - 1
    assert all("llvmpipe" in w["device"] for w in result.workers if w["records"])
    assert_clean_workers(result)


@pytest.mark.parametrize("args, message", [
    (["--judge", "http://127.0.0.1:9/v1", "--ray"], "--ray needs an in-process judge (--judge local:DIR): the "
     "endpoint http://127.0.0.1:9/v1 already takes calls in parallel, as many as --concurrency"),
    (["--judge", "local:.", "--workers", "2"], "--workers needs --ray"),
])
def test_bad_judge_ray_options_are_refused(bench, tmp_path, capsys, args, message):
    from eyecare.bench.cli import main

    assert main(["judge", str(bench["folder"] / "local.jsonl"), *args]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"eyecare bench: error: {message}"
    assert not (bench["folder"] / "judgments.jsonl").exists()
