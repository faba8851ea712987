"""eyecare.data rules and taxonomies: yes/no balance, distractors from the same taxonomy and never a
synonym of the answer, determinism, and the taxonomy's own checks."""
import json
from collections import Counter

import pytest

from eyecare.data.errors import DataError
from eyecare.data.manifest import Case
from eyecare.data.rules import LETTERS, rule_items
from eyecare.data.taxonomy import load_taxonomies, read_taxonomy, spelling_key

TAXONOMIES = load_taxonomies()


def _case(case_id, modality, labels):
    return Case(id=case_id, line=2, modality=modality, images=("/x.png",), image_refs=("x.png",), labels=tuple(labels))


def test_shipped_taxonomies_cover_the_eight_modalities_and_map_synonyms():
    assert sorted(TAXONOMIES) == sorted(["fundus", "ffa", "icga", "oct", "ubm", "slit_lamp",
                                         "fluorescein_staining", "ct"])
    oct_ = TAXONOMIES["oct"]
    assert oct_.canonical("FTMH") == oct_.canonical("Macular-Hole") == "macular hole"
    assert TAXONOMIES["fundus"].canonical("dr") == "diabetic retinopathy"
    assert oct_.canonical("glaucoma") is None
    for taxonomy in TAXONOMIES.values():
        assert len(taxonomy.categories) >= 5   # enough for a 4-option question on any case


def test_yes_no_questions_are_balanced_per_case_and_answer_from_the_labels():
    taxonomy = TAXONOMIES["oct"]
    for labels in (["macular hole"], ["macular hole", "epiretinal membrane"],
                   ["macular hole", "epiretinal membrane", "macular edema"]):
        items = [i for i in rule_items(_case("c1", "oct", labels), taxonomy, seed=3, yes_no_per_case=2)
                 if i["kind"] == "yes_no"]
        answers = Counter(i["answer"] for i in items)
        assert answers["Yes"] == answers["No"] == min(len(labels), 2)
        for item in items:
            assert (item["about"] in labels) == (item["answer"] == "Yes")
            assert item["about"] in item["question"] or item["about"].startswith("normal")
    assert rule_items(_case("c2", "oct", []), taxonomy) == []   # no labels, nothing is known


def test_multiple_choice_distractors_come_from_the_same_taxonomy_and_are_never_a_synonym():
    path_items = []
    for n in range(60):
        case = _case(f"c{n}", "fundus", ["diabetic retinopathy", "glaucoma"][: 1 + n % 2])
        items = [i for i in rule_items(case, TAXONOMIES["fundus"], seed=n) if i["kind"] == "choice"]
        assert len(items) == 1
        item = items[0]
        options = item["options"]
        assert len(options) == 4 and len(set(options)) == 4
        assert options[LETTERS.index(item["answer"])] == "diabetic retinopathy"
        for option in options:
            assert option in TAXONOMIES["fundus"].categories
            if option != "diabetic retinopathy":
                assert option not in case.labels
                # no spelling of the answer's category (name or synonym) is offered as a distractor
                assert TAXONOMIES["fundus"].canonical(option) != "diabetic retinopathy"
        path_items.append(item["answer"])
    assert set(path_items) == set("ABCD")   # the answer's position varies


def test_rules_are_deterministic_per_seed_and_case():
    taxonomy = TAXONOMIES["slit_lamp"]
    case = _case("case-7", "slit_lamp", ["cataract", "keratitis"])
    first = rule_items(case, taxonomy, seed=11)
    assert rule_items(case, taxonomy, seed=11) == first
    others = [rule_items(case, taxonomy, seed=s) for s in range(12, 20)]
    assert any(o != first for o in others)
    # a case's questions do not depend on which other cases exist or their order
    assert rule_items(_case("case-7", "slit_lamp", ["cataract", "keratitis"]), taxonomy, seed=11) == first


def test_a_small_taxonomy_gives_fewer_options_and_fewer_no_questions(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"modality": "UBM", "categories": [
        {"name": "angle closure", "synonyms": ["closed angle"]}, {"name": "iris cyst"}]}))
    taxonomy = read_taxonomy(path)
    items = rule_items(_case("c", "ubm", ["angle closure"]), taxonomy, seed=0)
    assert [(i["kind"], i["answer"]) for i in items if i["kind"] == "yes_no"] in \
        ([("yes_no", "Yes"), ("yes_no", "No")],)
    choice = [i for i in items if i["kind"] == "choice"][0]
    assert sorted(choice["options"]) == ["angle closure", "iris cyst"]
    assert taxonomy.image_noun == "ubm image"


def test_taxonomy_errors_name_the_file_and_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modality": "oct", "categories": [
        {"name": "macular hole", "synonyms": ["MH"]}, {"name": "mh.", "synonyms": []}]}))
    with pytest.raises(DataError, match=r"bad.json: 'mh.' names both 'macular hole' and 'mh.'"):
        read_taxonomy(bad)
    bad.write_text(json.dumps({"modality": "x-ray", "categories": []}))
    with pytest.raises(DataError, match="'modality' must be one of fundus"):
        read_taxonomy(bad)
    bad.write_text("{")
    with pytest.raises(DataError, match="bad.json:1: not JSON"):
        read_taxonomy(bad)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "oct.json").write_text(json.dumps({"modality": "optical coherence tomography", "categories": [
        {"name": "a"}, {"name": "b", "synonyms": ["bee"]}]}))
    replaced = load_taxonomies([folder])
    assert replaced["oct"].categories == ("a", "b") and replaced["fundus"] == TAXONOMIES["fundus"]
    assert spelling_key("Bee!") == "bee" and replaced["oct"].canonical("BEE") == "b"
