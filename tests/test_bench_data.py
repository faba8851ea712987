"""Dataset loading (our JSONL schema and LLaVA conversations), validation errors, selection, the sample set."""
import json
from pathlib import Path

import numpy as np
import pytest

from eyecare.bench.data import (MODALITIES, TASKS, check_images, load_dataset, normalize_modality, require_images,
                                select)
from eyecare.bench.errors import DatasetError
from eyecare.bench.synthetic import write_sample_set

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "bench"


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _rec(i, **kw):
    row = {"id": f"r{i}", "images": [f"img/{i}.png"], "question": "Is there subretinal fluid?",
           "answer": "yes", "task": "closed", "modality": "oct"}
    row.update(kw)
    return row


def test_load_schema_resolves_images_and_normalizes_names(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [
        _rec(1, task="Closed QA", modality="OCT"),
        _rec(2, question="Which diagnosis?", options=["Glaucoma", "Cataract"], answer="cataract",
             modality="Slit-lamp"),
        _rec(3, task="report_generation", modality="fundus photography", answer="Drusen at the macula.",
             question="Write the report.", images=[str(tmp_path / "abs.png"), "b.png"]),
    ])
    r1, r2, r3 = load_dataset(path)
    assert (r1.task, r1.modality, r1.gold) == ("closed", "oct", "yes")
    assert r1.images == (str(tmp_path / "img" / "1.png"),)
    assert r1.image_refs == ("img/1.png",) and r1.where == "data.jsonl:1"
    assert (r2.modality, r2.options, r2.gold) == ("slit_lamp", ("Glaucoma", "Cataract"), "B")
    assert r2.prompt == "Which diagnosis?\nA. Glaucoma\nB. Cataract\nAnswer with the letter of the correct option."
    assert (r3.task, r3.modality, r3.gold) == ("report", "fundus", None)
    assert r3.images == (str(tmp_path / "abs.png"), str(tmp_path / "b.png"))
    other_root = load_dataset(path, image_root=tmp_path / "elsewhere")[0]
    assert other_root.images == (str(tmp_path / "elsewhere" / "img" / "1.png"),)


def test_bad_lines_are_all_reported_with_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [
        _rec(1),
        "{not json",
        _rec(3, task="opne"),
        {k: v for k, v in _rec(4).items() if k != "question"},
        _rec(5, modality="x-ray"),
        _rec(6, answer="perhaps"),
        _rec(7, task="open", options=["a", "b"]),
        _rec(8, images="img/8.png"),
        _rec(1),
        _rec(10, options=["only one"], answer="A"),
        "[1, 2]",
    ])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    for expected in [
        "bad.jsonl:2: invalid JSON",
        "bad.jsonl:3: field 'task': must be one of closed, open, report (got \"opne\")",
        "bad.jsonl:4: field 'question': is missing",
        "bad.jsonl:5: field 'modality': must be one of fundus, ffa",
        "bad.jsonl:6: field 'answer': of a closed question must be yes or no",
        "bad.jsonl:7: field 'options': only closed questions take options",
        "bad.jsonl:8: field 'images': must be a list of non-empty strings",
        "bad.jsonl:9: field 'id': duplicates id 'r1' of bad.jsonl:1",
        "bad.jsonl:10: field 'options': must list 2 to 8 options",
        "bad.jsonl:11: must be a JSON object",
    ]:
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert message.startswith(f"{path}: 10 problem(s)")


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="contains no records"):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "broken.json").write_text('[\n {"id": 1},\n {"id": 2,,}\n]')
    with pytest.raises(DatasetError, match=r"broken.json:3: invalid JSON"):
        load_dataset(tmp_path / "broken.json")


def test_missing_images_listed_before_a_run(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [_rec(1), _rec(2), _rec(3, images=["img/1.png", "img/gone.png"])])
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.png").write_bytes(b"png")
    records = load_dataset(path)
    missing = check_images(records)
    assert [(r.id, ref) for r, ref, _ in missing] == [("r2", "img/2.png"), ("r3", "img/gone.png")]
    with pytest.raises(DatasetError) as info:
        require_images(records)
    message = str(info.value)
    assert message.startswith("2 image file(s) not found:")
    assert f"data.jsonl:2 (id r2): img/2.png -> {tmp_path / 'img' / '2.png'}" in message
    require_images(records[:1])


def test_llava_conversations_map_to_records():
    records = load_dataset(SAMPLE / "synthetic_llava.json")
    assert len(records) == 24                       # 8 entries x 3 question/answer turns
    fundus = [r for r in records if r.id.startswith("synthetic-llava-fundus#")]
    assert [r.id for r in fundus] == ["synthetic-llava-fundus#1", "synthetic-llava-fundus#2", "synthetic-llava-fundus#3"]
    yes_no, choice, open_qa = fundus
    assert "<image>" not in yes_no.question and yes_no.question.startswith("Are there hard exudates")
    assert (yes_no.task, yes_no.gold, yes_no.modality) == ("closed", "yes", "fundus")
    assert choice.task == "closed" and len(choice.options) == 4 and choice.gold == "B"
    assert choice.prompt == choice.question         # options already in the question: not repeated
    assert open_qa.task == "open" and open_qa.options == ()
    assert {r.modality for r in records} == set(MODALITIES)
    assert yes_no.where == "synthetic_llava.json:2"
    assert yes_no.images == (str(SAMPLE / "images" / "fundus.png"),)


def test_llava_explicit_keys_lists_of_images_and_jsonl(tmp_path):
    entries = [
        {"id": 7, "image": ["a.png", "b.png"], "task": "report", "modality": "UBM",
         "conversations": [{"from": "human", "value": "<image>\n<image>\nDescribe."},
                           {"from": "gpt", "value": "Angle closure."}]},
        {"image": "scan_oct_12.png",
         "conversations": [{"from": "user", "value": "What is seen?"},
                           {"from": "assistant", "value": "Subretinal fluid."}]},
        {"id": "x", "conversations": [{"from": "human", "value": "Write the report for this image."},
                                      {"from": "gpt", "value": "Normal."}]},
    ]
    path = _write_jsonl(tmp_path / "llava.jsonl", entries)
    a, b, c = load_dataset(path)
    assert (a.id, a.task, a.modality, len(a.images), a.question) == ("7", "report", "ubm", 2, "Describe.")
    assert (b.id, b.task, b.modality) == ("entry-2", "open", "oct")
    assert (c.task, c.modality, c.images) == ("report", "unknown", ())


def test_llava_bad_entries(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([
        {"id": "a", "image": "x.png"},
        {"id": "b", "conversations": [{"from": "robot", "value": "hi"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "q?"}]},
        {"id": "d", "task": "banana", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ], indent=1))
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "bad.json:2: field 'conversations': must be a non-empty list" in message
    assert "field 'conversations[0]': must be" in message
    assert "has no human turn followed by a gpt turn" in message
    assert "field 'task': must be one of closed, open, report (got \"banana\")" in message


def test_select_filters_and_limit(tmp_path):
    records = load_dataset(SAMPLE / "synthetic_sample.jsonl")
    assert len(select(records)) == 32
    closed = select(records, tasks="closed")
    assert len(closed) == 16 and {r.task for r in closed} == {"closed"}
    some = select(records, tasks=["open,report"], modalities=["OCT", "slit lamp"])
    assert len(some) == 4 and {r.modality for r in some} == {"oct", "slit_lamp"}
    assert [r.id for r in select(records, limit=3)] == [r.id for r in records[:3]]
    with pytest.raises(DatasetError, match="unknown task"):
        select(records, tasks="opn")
    with pytest.raises(DatasetError, match="unknown modality"):
        select(records, modalities="xray")
    assert normalize_modality("Indocyanine green angiography") == "icga"


def test_shipped_sample_covers_every_task_and_modality():
    records = load_dataset(SAMPLE / "synthetic_sample.jsonl")
    assert {(r.task, r.modality) for r in records} == {(t, m) for t in TASKS for m in MODALITIES}
    assert all(r.id.startswith("synthetic-") for r in records)
    assert {r.gold for r in records if r.task == "closed" and not r.options} == {"yes", "no"}
    assert not check_images(records)
    assert "SYNTHETIC" in (SAMPLE / "README.md").read_text()


def test_shipped_sample_is_what_the_generator_writes(tmp_path):
    import matplotlib.image

    write_sample_set(tmp_path)
    for name in ("synthetic_sample.jsonl", "synthetic_llava.json"):
        assert (tmp_path / name).read_text() == (SAMPLE / name).read_text(), name
    for png in sorted((SAMPLE / "images").glob("*.png")):
        assert np.array_equal(matplotlib.image.imread(png), matplotlib.image.imread(tmp_path / "images" / png.name))
    assert len(list((tmp_path / "images").glob("*.png"))) == len(MODALITIES)
