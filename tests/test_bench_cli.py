"""The `eyecare bench` command line: run with each kind of model, report, compare, validate, sample, errors."""
import argparse
import json
import textwrap

import pytest

import eyecare
from eyecare.bench import cli, models
from eyecare.bench.cli import main, register
from eyecare.bench.runner import read_predictions

FACTORY = textwrap.dedent("""
    class Model:
        timings = None

        def chat(self, question, images=None):
            self.timings = {"decode_tokens_per_s": 25.0, "total_ms": 4.0}
            if "subretinal" in question:
                raise ValueError("cannot read this image")
            return "No. Normal " + str(len(images))

    def make():
        return Model()

    not_callable = 3
""")


def _one_line_error(capsys, expected):
    """The error starts with one "eyecare bench: error:" line (lists of problems follow it, indented)."""
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("using the synthetic")]
    assert err and err[0].startswith("eyecare bench: error: "), err
    assert all(line.startswith("  ") for line in err[1:]), err
    assert expected in "\n".join(err), err
    return err


def test_run_baseline_on_the_default_sample_set(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", "baseline:yes", "--output", str(out), "--no-progress", "--no-plots"]) == 0
    stdout = capsys.readouterr().out
    assert "32 records: 0 already done, 32 predicted now, 0 model errors" in stdout
    assert "| Closed QA | 16 | 37.50 | 0 |" in stdout
    rows = read_predictions(out / "predictions.jsonl")
    assert len(rows) == 32 and {r["model"] for r in rows} == {"baseline:yes"}
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["records"] == 32 and (out / "report.md").exists() and (out / "report.csv").exists()
    # Rerunning resumes: nothing left to ask.
    assert main(["run", "--model", "baseline:yes", "--output", str(out), "--no-progress", "--no-report"]) == 0
    assert "32 already done, 0 predicted now" in capsys.readouterr().out


def test_filters_factory_model_errors_and_timings(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    code = main(["run", "--model-factory", "mymodels:make", "--tasks", "closed", "--modalities", "oct,Fundus",
                 "--output", str(out), "--no-progress", "--no-plots", "--batch-size", "3"])
    assert code == 0
    rows = read_predictions(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["synthetic-fundus-yesno", "synthetic-fundus-choice",
                                       "synthetic-oct-yesno", "synthetic-oct-choice"]
    assert rows[2]["error"] == "ValueError: cannot read this image"
    assert rows[0]["timings"] == {"decode_tokens_per_s": 25.0, "total_ms": 4.0}
    assert rows[0]["model"] == "mymodels:make"
    report = json.loads((out / "report.json").read_text())
    assert report["performance"]["tokens_per_s"] == 25.0 and report["counts"]["errors"] == 1
    assert "1 model errors" in capsys.readouterr().out
    assert main(["run", "--model", "echo", "--limit", "2", "--output", str(tmp_path / "echo"), "--no-progress",
                 "--no-report"]) == 0
    assert len(read_predictions(tmp_path / "echo" / "predictions.jsonl")) == 2


def test_model_dir_loads_eyecaregpt_lazily(tmp_path, monkeypatch):
    loaded = []

    class FakeEyecareGPT:
        @classmethod
        def from_pretrained(cls, path):
            loaded.append(path)
            return cli_model()

    class cli_model:
        def chat(self, question, images=None):
            return "Yes."

    monkeypatch.setattr(eyecare, "EyecareGPT", FakeEyecareGPT, raising=False)
    ckpt = tmp_path / "EyecareGPT-3.8B"
    ckpt.mkdir()
    assert main(["run", "--model", str(ckpt), "--limit", "3", "--output", str(tmp_path / "o"), "--no-progress",
                 "--no-report"]) == 0
    assert loaded == [str(ckpt)]
    assert read_predictions(tmp_path / "o" / "predictions.jsonl")[0]["model"] == "EyecareGPT-3.8B"


def test_model_errors_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["run", "--output", str(tmp_path / "o"), "--no-progress"]
    monkeypatch.setattr(models, "_eyecare_class", lambda: (object, None))  # as once EyecareGPT exists
    assert main(base) == 1
    err = _one_line_error(capsys, "no model given: pass --model DIR (an EyecareGPT checkpoint folder)")
    assert len(err) == 1
    assert main(base + ["--model", str(tmp_path / "nope")]) == 1
    _one_line_error(capsys, "is neither a checkpoint folder nor a built-in baseline")
    assert main(base + ["--model-factory", "mymodels"]) == 1
    _one_line_error(capsys, "expected module:callable")
    assert main(base + ["--model-factory", "no_such_module_xyz:make"]) == 1
    _one_line_error(capsys, "cannot import no_such_module_xyz")
    assert main(base + ["--model-factory", "mymodels:not_callable"]) == 1
    _one_line_error(capsys, "is not callable")
    assert main(base + ["--model", "echo", "--model-factory", "mymodels:make"]) == 1
    _one_line_error(capsys, "not both")
    assert main(base + ["--model", "echo", "--batch-size", "0"]) == 1
    _one_line_error(capsys, "--batch-size must be >= 1")


def test_no_model_message_when_eyecaregpt_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "_eyecare_class", lambda: (None, ImportError("cannot import name 'EyecareGPT'")))
    assert main(["run", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("eyecare bench: error: no model given and eyecare.EyecareGPT is not available: pass --model DIR, "
                   "--model-factory module:callable, or --model baseline:yes to try the harness")


def test_bad_dataset_missing_images_and_unwritable_output(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "images": ["a.png"], "question": "Is it?", "answer": "yes",
                                "task": "closed", "modality": "oct"}) + "\n" + '{"id": "b"}\n')
    base = ["run", "--model", "baseline:yes", "--data", str(data), "--no-progress"]
    assert main(base + ["--output", str(tmp_path / "o")]) == 1
    err = "\n".join(capsys.readouterr().err.splitlines())
    assert "eyecare bench: error: " in err and "data.jsonl:2: field 'images': is missing" in err

    data.write_text(data.read_text().splitlines()[0] + "\n")
    assert main(base + ["--output", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "1 image file(s) not found")
    assert not (tmp_path / "o").exists(), "nothing may be written before the images are checked"

    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "blocker").write_text("")
    assert main(base + ["--output", str(tmp_path / "blocker" / "run")]) == 1
    _one_line_error(capsys, "cannot write predictions to")
    assert main(base + ["--output", str(tmp_path / "o"), "--tasks", "report"]) == 1
    _one_line_error(capsys, "no records match")


def test_report_compare_validate_and_sample(tmp_path, capsys):
    for name in ("yes", "no"):
        assert main(["run", "--model", f"baseline:{name}", "--tasks", "closed", "--output", str(tmp_path / name),
                     "--no-progress", "--no-report"]) == 0
    assert main(["report", str(tmp_path / "yes"), "--no-plots"]) == 0
    assert main(["report", str(tmp_path / "no" / "predictions.jsonl"), "--output", str(tmp_path / "no-report")]) == 0
    assert (tmp_path / "no-report" / "plots" / "accuracy.png").exists()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "yes"), str(tmp_path / "no-report" / "report.json"),
                 "--output", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Eyecare-Bench comparison: yes vs report")
    assert "| **all** | 16 / 16 | 37.50 → 37.50 (+0.00) |" in text
    assert (tmp_path / "cmp.md").read_text() == text
    assert main(["compare", str(tmp_path / "yes"), str(tmp_path / "missing")]) == 1
    _one_line_error(capsys, "no such report")
    assert main(["report", str(tmp_path / "nothing-here")]) == 1
    _one_line_error(capsys, "no such predictions file")

    assert main(["sample", str(tmp_path / "sample")]) == 0
    assert main(["validate", "--data", str(tmp_path / "sample" / "synthetic_llava.json"), "--tasks", "open"]) == 0
    out = capsys.readouterr().out
    assert "24 records valid, 8 selected, all images present" in out and "open    oct" in out


def test_register_adds_bench_to_a_parent_cli(tmp_path):
    parser = argparse.ArgumentParser(prog="eyecare")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "run", "--model", "baseline:no", "--limit", "4", "--output",
                              str(tmp_path / "o"), "--no-progress", "--no-report"])
    assert args.func(args) == 0
    assert len(read_predictions(tmp_path / "o" / "predictions.jsonl")) == 4
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench"])
    assert exc.value.code == 2


def test_default_dataset_is_generated_when_not_in_a_checkout(tmp_path, monkeypatch):
    shipped = cli._repo_sample()
    monkeypatch.setattr(cli, "_repo_sample", lambda: tmp_path / "absent.jsonl")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = cli.default_dataset()
    assert path == tmp_path / "cache" / "eyecare" / "bench-sample" / "synthetic_sample.jsonl"
    assert path.read_text() == shipped.read_text()
    assert (path.parent / "images" / "oct.png").exists()


def test_run_with_a_real_tiny_eyecare_model(tmp_path, capsys):
    # A real checkpoint through --model DIR: the batch goes through EyecareGPT.generate, and each prediction is the
    # answer the same model gives to that record alone; the model's own timings land in every row.
    from eyecare.bench.cli import default_dataset
    from eyecare.bench.data import load_dataset
    from eyecare.model import EyecareGPT
    from eyecare.tiny import make_tiny

    tiny = make_tiny(tmp_path / "tiny", "qwen2")
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny), "--limit", "3", "--batch-size", "2", "--output", str(out),
                 "--no-progress", "--no-plots"]) == 0
    assert "3 records: 0 already done, 3 predicted now, 0 model errors" in capsys.readouterr().out
    rows = read_predictions(out / "predictions.jsonl")
    records = {r.id: r for r in load_dataset(default_dataset())}
    with EyecareGPT.from_pretrained(tiny, progress=False) as model:
        for row in rows:
            record = records[row["id"]]
            assert row["prediction"] == model.chat(record.prompt, images=list(record.images)), row["id"]
            assert row["error"] is None and row["model"] == "tiny"
    assert [r["batch_size"] for r in rows] == [2, 2, 1]
    assert rows[0]["timings"]["requests"] == 2 and rows[2]["timings"]["requests"] == 1
    assert all(r["timings"]["tokens"] > 0 and r["timings"]["prefill_ms"] > 0 for r in rows)
    assert json.loads((out / "report.json").read_text())["counts"]["records"] == 3
