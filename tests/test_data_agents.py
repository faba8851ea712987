"""eyecare.data agents with an in-process fake endpoint: what each agent is asked, the verifier's
accept/reject bookkeeping (verdict and reason recorded, counted in the summary), answers that never
become valid JSON, and the prompt files."""
import json
import shutil
from pathlib import Path

import pytest

from data_fakes import FakeEndpoint
from eyecare.data import Agents, build, load_prompts, load_taxonomies
from eyecare.data.errors import DataError
from eyecare.data.manifest import Case

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "data"
TAXONOMIES = load_taxonomies()
REPORT = ("SYNTHETIC. Patient Jane Roe. OCT left eye: full thickness defect of the fovea. "
          "Impression: macular hole.")


def _case(report=REPORT, labels=("macular hole",)):
    return Case(id="c1", line=2, modality="oct", images=("/x.png",), image_refs=("x.png",), labels=labels,
                report=report)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_shipped_prompts_are_versioned_and_each_has_a_schema():
    prompts = load_prompts()
    assert {a: p.tag for a, p in prompts.items()} == {"report_normalizer": "report_normalizer.v1",
                                                      "qa_writer": "qa_writer.v1", "verifier": "verifier.v1"}
    assert set(prompts["verifier"].schema["properties"]["verdict"]["enum"]) == {"supported", "unsupported",
                                                                                "contradicted"}


def test_a_case_goes_through_normalizer_writer_and_verifier():
    endpoint = FakeEndpoint()
    result = Agents(endpoint, load_prompts(), open_per_case=2).run(_case(), TAXONOMIES["oct"])
    asked = [next(iter(schema["properties"])) for _, schema in endpoint.calls]
    assert asked == ["findings", "questions", "verdict", "verdict", "verdict"]
    assert "Jane Roe" in endpoint.calls[0][0][-1]["content"]          # the normalizer sees the raw report
    assert "OCT scan" in endpoint.calls[0][0][-1]["content"]
    assert [i["kind"] for i in result.items] == ["open", "open", "report"]
    report = result.items[2]
    assert report["answer"] == ("Findings: Patient Jane Roe. OCT left eye: full thickness defect of the fovea.\n"
                                "Impression: macular hole.")
    for item in result.items:
        assert item["verdict"] == "supported" and item["reason"] == "the report says so"
        assert item["model"] == "fake-model" and item["verifier"] == "verifier.v1"
    assert result.rejected == [] and result.errors == []
    # no report: the agents are not asked anything
    endpoint.calls.clear()
    assert Agents(endpoint, load_prompts()).run(_case(report=""), TAXONOMIES["oct"]).items == []
    assert endpoint.calls == []


def test_verifier_rejections_are_kept_with_verdict_and_reason_and_counted(tmp_path):
    def writer(messages):
        return json.dumps({"questions": [{"question": "What is seen?", "answer": "A hole, UNSUPPORTED by the report."},
                                         {"question": "Which eye?", "answer": "The CONTRADICTED right eye."},
                                         {"question": "What is the impression?", "answer": "A macular hole."}]})

    folder = tmp_path / "data"
    shutil.copytree(EXAMPLE, folder)
    endpoint = FakeEndpoint({"questions": writer})
    result = build(folder / "manifest.csv", tmp_path / "out", taxonomies=TAXONOMIES,
                   agents=Agents(endpoint, load_prompts()), open_per_case=3, progress=False, chart=False,
                   log=lambda line: None)
    rejected = _rows(tmp_path / "out" / "rejected.jsonl")
    reported = 17   # cases with a report
    by_verdict = {}
    for row in rejected:
        by_verdict.setdefault(row["provenance"]["verdict"], []).append(row)
    assert len(by_verdict["unsupported"]) == len(by_verdict["contradicted"]) == reported
    for row in by_verdict["unsupported"]:
        assert row["reason"] == "verifier: unsupported: the item says unsupported"
        assert row["provenance"]["generator"] == "agent:qa_writer" and row["provenance"]["model"] == "fake-model"
    assert result.summary["rejected"]["verifier: unsupported"] == reported
    assert result.summary["rejected"]["verifier: contradicted"] == reported
    kept = _rows(tmp_path / "out" / "train.jsonl") + _rows(tmp_path / "out" / "test.jsonl")
    opened = [r for r in kept if r["task"] == "open"]
    assert len(opened) == reported and all(r["answer"] == "A macular hole." for r in opened)
    assert all(r["provenance"]["verdict"] == "supported" for r in kept if r["task"] != "closed")
    assert sum(r["task"] == "report" for r in kept) == reported
    assert "| verifier: unsupported | 17 |" in (tmp_path / "out" / "summary.md").read_text()


def test_answers_that_never_become_valid_json_are_recorded_not_dropped(tmp_path):
    endpoint = FakeEndpoint({"verdict": lambda messages: "I think it is fine."})
    result = Agents(endpoint, load_prompts(), attempts=2, open_per_case=1).run(_case(), TAXONOMIES["oct"])
    assert result.items == [] and len(result.rejected) == 2
    for item in result.rejected:
        assert item["verdict"] == "no verdict"
        assert item["reason"].startswith("the verifier gave no valid verdict: no valid JSON after 2 attempts")
    assert len(endpoint.calls) == 2 + 2 * 2    # each verdict asked twice

    endpoint = FakeEndpoint({"findings": lambda messages: json.dumps({"findings": "x"})})   # no impression
    result = Agents(endpoint, load_prompts(), attempts=3).run(_case(), TAXONOMIES["oct"])
    assert result.items == [] and result.rejected == []
    assert result.errors == [{"stage": "report_normalizer.v1", "error": result.errors[0]["error"]}]
    assert "'impression' is a required property" in result.errors[0]["error"]
    assert len(endpoint.calls) == 3


def test_agent_errors_leave_the_rule_items_and_are_summarized(tmp_path):
    endpoint = FakeEndpoint({"questions": lambda messages: "not json"})
    result = build(EXAMPLE / "manifest.csv", tmp_path / "out", taxonomies=TAXONOMIES,
                   agents=Agents(endpoint, load_prompts(), attempts=1), progress=False, chart=False,
                   log=lambda line: None)
    assert result.summary["agent_errors"] == {"qa_writer.v1": 17}
    assert set(result.summary["by_generator"]) == {"rule:yes_no", "rule:choice", "agent:report_normalizer"}


def test_whitespace_answers_are_rejected_as_empty():
    endpoint = FakeEndpoint({"questions": lambda m: json.dumps({"questions": [{"question": " ", "answer": "x"}]})})
    result = Agents(endpoint, load_prompts()).run(_case(), TAXONOMIES["oct"])
    assert [(i["kind"], i["verdict"]) for i in result.rejected] == [("open", "empty")]


def test_bad_prompt_files_are_reported(tmp_path):
    for name in ("report_normalizer", "qa_writer", "verifier"):
        shutil.copy(REPO / "eyecare" / "data" / "prompts" / f"{name}.v1.json", tmp_path)
    mine = json.loads((tmp_path / "qa_writer.v1.json").read_text())
    mine.update(version=2, user="Findings of a {modality_noun}:\n{findings}\n\nImpression: {impression}\n"
                "Labels: {labels}\nWrite {count} questions.")
    (tmp_path / "qa_writer.v2.json").write_text(json.dumps(mine))
    prompts = load_prompts(tmp_path)
    assert prompts["qa_writer"].tag == "qa_writer.v2"
    endpoint = FakeEndpoint()
    Agents(endpoint, prompts, open_per_case=1).run(_case(), TAXONOMIES["oct"])
    assert endpoint.calls[1][0][-1]["content"].endswith("Write 1 questions.")
    (tmp_path / "verifier.v3.json").write_text(json.dumps({"agent": "verifier", "version": 3, "user": "x",
                                                           "schema": {"type": "nonsense"}}))
    with pytest.raises(DataError, match="verifier.v3.json: 'schema' is not a valid JSON Schema"):
        load_prompts(tmp_path)
    (tmp_path / "verifier.v3.json").unlink()
    (tmp_path / "verifier.v1.json").unlink()
    with pytest.raises(DataError, match="no prompt file for verifier"):
        load_prompts(tmp_path)


def test_concurrent_cases_give_the_same_outputs_as_one_at_a_time(tmp_path):
    outputs = []
    for concurrency in (1, 4):
        out = tmp_path / f"c{concurrency}"
        endpoint = FakeEndpoint()
        build(EXAMPLE / "manifest.csv", out, taxonomies=TAXONOMIES, agents=Agents(endpoint, load_prompts()),
              concurrency=concurrency, progress=False, chart=False, log=lambda line: None)
        assert len(endpoint.calls) == 17 * (1 + 1 + 2 + 1)   # normalizer, writer, 2 open + 1 report verdicts
        outputs.append([(out / name).read_text() for name in ("train.json", "test.jsonl", "rejected.jsonl")])
    assert outputs[0] == outputs[1]
