"""`eyecare data build` end to end with its agents served by a tiny random EyecareGPT in this process
(local:DIR), decoding constrained to each agent's JSON schema: the answers are meaningless but every one
is schema-valid, and the outputs go through the bench unchanged. The shipped prompts' schemas are
checked to compile for the model's structured output; the build uses the same prompts with shorter
string limits, so that a random model's longest possible answer stays small and the test fast."""
import json
import shutil
from pathlib import Path

from eyecare.bench.data import load_dataset
from eyecare.cli import main
from eyecare.data.agents import load_prompts
from eyecare.tiny import make_tiny

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "data"
VERDICTS = {"supported", "unsupported", "contradicted"}


def _tighten(node):
    if isinstance(node, dict):
        if node.get("type") == "string" and "maxLength" in node:
            node["maxLength"] = 24
        if node.get("type") == "array":
            node["maxItems"] = 1
        for value in node.values():
            _tighten(value)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_build_with_agents_on_a_tiny_local_model(tmp_path, capsys):
    from eyecare.language import LanguageModel
    from eyecare.structured import compile_constraint

    model_dir = make_tiny(tmp_path / "tiny", "phi3")
    lm = LanguageModel.from_pretrained(model_dir)
    for prompt in load_prompts().values():
        assert compile_constraint(lm, json_schema=prompt.schema) is not None
    del lm

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for path in (REPO / "eyecare" / "data" / "prompts").glob("*.json"):
        data = json.loads(path.read_text())
        _tighten(data["schema"])
        (prompts / path.name).write_text(json.dumps(data))
    lines = (EXAMPLE / "manifest.csv").read_text().splitlines(keepends=True)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("".join(lines[:5]))                  # syn-01 .. syn-04; syn-03 has no report
    shutil.copytree(EXAMPLE / "images", tmp_path / "images")
    out = tmp_path / "out"
    assert main(["data", "build", str(manifest), "--out", str(out), "--agents", f"local:{model_dir}",
                 "--prompts", str(prompts), "--open-per-case", "1", "--no-progress", "--no-chart"]) == 0
    captured = capsys.readouterr()
    assert f"to the model in {model_dir}, run inside this process (nothing leaves this machine)" in captured.err
    state = {row["id"]: row for row in _rows(out / "items.jsonl")}
    assert sorted(state) == ["syn-01", "syn-02", "syn-03", "syn-04"]
    for case_id, row in state.items():
        assert row["errors"] == [], row["errors"]             # every answer was schema-valid JSON
        agent_items = [i for i in row["items"] + row["rejected"] if i["generator"].startswith("agent:")]
        assert sorted(i["kind"] for i in agent_items) == ([] if case_id == "syn-03" else ["open", "report"])
        for item in agent_items:
            assert item["verdict"] in VERDICTS and (item in row["items"]) == (item["verdict"] == "supported")
            assert 1 <= len(item["reason"]) <= 24 and item["model"] == "tiny" and item["verifier"] == "verifier.v1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent_errors"] == {}
    written = _rows(out / "train.jsonl") + _rows(out / "test.jsonl")
    assert len(written) == summary["items"]["train"] + summary["items"]["test"]
    assert load_dataset(out / "train.json") and load_dataset(out / "train.jsonl")
