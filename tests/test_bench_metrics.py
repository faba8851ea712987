"""Metric values on hand-checked cases, and agreement with the libraries' own implementations."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from eyecare.bench.data import MODALITIES
from eyecare.bench.metrics import bleu, closed_scores, rouge_l, text_scores, token_f1
from eyecare.bench.terms import default_terms, find_concepts, parse_terms, term_recall
from eyecare.bench.text import tokenize

REPO = Path(__file__).resolve().parents[1]


def test_tokenize_lowercases_drops_punctuation_and_keeps_any_script():
    assert tokenize("Age-related Macular Degeneration (AMD), C/D 0.5!") == [
        "age", "related", "macular", "degeneration", "amd", "c", "d", "0", "5"]
    assert tokenize("Makulaödem, ÖDEM") == ["makulaödem", "ödem"]
    assert tokenize("视网膜脱离 OCT") == ["视", "网", "膜", "脱", "离", "oct"]
    assert tokenize("") == [] and tokenize(None) == []


# ---- token F1 (SQuAD definition) ----

def test_token_f1_hand_checked():
    # pred tokens {optic, disc, pale} ("the" dropped); ref {optic, disc, pale, swollen}: P=1, R=3/4.
    assert token_f1("The optic disc pale", "optic disc pale swollen") == pytest.approx(2 * 0.75 / 1.75)
    # pred {optic, disc, is, pale}, ref {optic, disc, pale}: P=3/4, R=1.
    assert token_f1("the optic disc is pale", "optic disc pale") == pytest.approx(2 * 0.75 / 1.75)
    # Counts clip: "drusen drusen" against one "drusen": common 1, P=1/2, R=1.
    assert token_f1("drusen drusen", "drusen") == pytest.approx(2 / 3)
    assert token_f1("Macula NORMAL.", "macula normal") == 1.0
    assert token_f1("glaucoma", "cataract") == 0.0


def test_token_f1_empty_and_unicode():
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0          # only articles: both empty after normalization
    assert token_f1("", "macular edema") == 0.0
    assert token_f1("macular edema", "") == 0.0
    # Each CJK character is a token: pred 5 characters, reference 3 of them: P=3/5, R=1.
    assert token_f1("视网膜脱离", "视网膜") == pytest.approx(0.75)
    assert token_f1("Ödem der Makula", "ödem makula") == pytest.approx(0.8)


# ---- ROUGE-L (rouge-score) ----

def test_rouge_l_hand_checked():
    # LCS of "optic disc pale" = 3 tokens out of 5 each: P = R = F = 0.6.
    assert rouge_l("the optic disc is pale", "optic disc pale and swollen") == pytest.approx(0.6)
    # LCS "a c e" = 3: P = 3/4, R = 3/5.
    assert rouge_l("a c e x", "a b c d e") == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert rouge_l("Drusen at the macula.", "drusen at the MACULA") == 1.0


def test_rouge_l_empty_and_unicode():
    assert rouge_l("", "") == 0.0
    assert rouge_l("", "macular edema") == 0.0
    assert rouge_l("macular edema", "") == 0.0
    # rouge-score's own tokenizer would drop "ö"; ours keeps the word: LCS 2, P=2/3, R=1.
    assert rouge_l("Ödem der Makula", "ödem makula") == pytest.approx(0.8)
    assert rouge_l("视网膜脱离", "视网膜") == pytest.approx(0.75)


def test_rouge_l_matches_rouge_score_on_plain_text():
    from rouge_score import rouge_scorer

    library = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [
        ("the macula shows scattered drusen", "scattered soft drusen are seen at the macula"),
        ("optic disc cupping with rim thinning", "enlarged cup to disc ratio and thinning of the rim"),
        ("no abnormality", "no abnormality detected in either eye"),
        ("subretinal fluid under the fovea", "a dome shaped pocket of subretinal fluid under the fovea"),
    ]
    for pred, ref in pairs:
        assert rouge_l(pred, ref) == pytest.approx(library.score(ref, pred)["rougeL"].fmeasure)


# ---- BLEU (sacrebleu) ----

def test_bleu_hand_checked():
    # 4 tokens each, BP = 1; unigrams 3/4 match; bigrams 1/3 ("the macula"): BLEU-2 = sqrt(3/4 * 1/3) = 1/2.
    scores = bleu(["The macula is normal"], ["the macula looks normal"])
    assert scores["bleu1"] == pytest.approx(75.0)
    assert scores["bleu2"] == pytest.approx(50.0)
    # All unigrams match but 2 tokens against 5: BP = exp(1 - 5/2).
    assert bleu(["macula normal"], ["the macula is normal today"])["bleu1"] == pytest.approx(100 * math.exp(-1.5))
    assert bleu(["drusen at the macula"] * 2, ["drusen at the macula"] * 2) == {
        "bleu1": pytest.approx(100.0), "bleu2": pytest.approx(100.0), "bleu3": pytest.approx(100.0),
        "bleu4": pytest.approx(100.0)}


def test_bleu_empty_inputs():
    assert bleu([], []) == {"bleu1": None, "bleu2": None, "bleu3": None, "bleu4": None}
    assert bleu([""], ["macular edema"])["bleu1"] == 0.0
    with pytest.raises(ValueError):
        bleu(["a"], [])


def test_bleu_matches_nltk_corpus_bleu():
    from nltk.translate.bleu_score import corpus_bleu

    hyps = ["the optic disc is pale with a large cup and thin rim",
            "scattered hard exudates and dot blot hemorrhages around the macula",
            "subretinal fluid is seen under the fovea with a thick choroid"]
    refs = ["the optic disc is pale with an enlarged cup and a thin neuroretinal rim",
            "hard exudates and dot blot hemorrhages are scattered around the macula",
            "a dome of subretinal fluid is seen under the fovea and the choroid is thick"]
    ours = bleu(hyps, refs)
    for n in range(1, 5):
        expected = corpus_bleu([[tokenize(r)] for r in refs], [tokenize(h) for h in hyps],
                               weights=tuple([1.0 / n] * n))
        assert ours[f"bleu{n}"] == pytest.approx(100 * expected, rel=1e-9)


def test_very_long_report():
    sentence = ("The optic disc is pink with clear margins and a cup to disc ratio of 0.3. "
                "Scattered dot blot hemorrhages and hard exudates surround the macula. ")
    reference = sentence * 40  # about 1000 tokens
    n_tokens = len(tokenize(reference))
    assert n_tokens > 900
    assert rouge_l(reference, reference) == pytest.approx(1.0)
    half = " ".join(tokenize(reference)[: n_tokens // 2])
    assert rouge_l(half, reference) == pytest.approx(2 * 1 * 0.5 / 1.5, abs=1e-3)  # P=1, R=1/2
    assert token_f1(reference, reference) == 1.0
    assert bleu([reference], [reference])["bleu4"] == pytest.approx(100.0)
    assert term_recall(half, reference) == 1.0


# ---- term recall ----

def test_find_concepts_handles_plurals_spelling_and_hyphens():
    found = find_concepts("Hard exudates and dot-blot haemorrhages at the macula; cup-to-disc ratio 0.3.")
    assert {"hard exudate", "dot blot hemorrhage", "macula", "cup to disc ratio"} <= found
    assert "retinal detachment" not in found
    assert find_concepts("An image of the eye.") == set()


def test_term_recall_hand_checked():
    reference = "Hard exudates and dot blot hemorrhages around the macula."
    wanted = find_concepts(reference)
    assert wanted == {"hard exudate", "dot blot hemorrhage", "macula"}
    assert term_recall("Exudates near the macula.", reference) == pytest.approx(2 / 3)
    assert term_recall("", reference) == 0.0
    assert term_recall("anything at all", "The image is fine.") is None
    assert term_recall("", "") is None


def test_term_list_covers_the_eight_modalities_and_findings():
    concepts = default_terms()
    assert len(concepts) > 250
    sections = {c.section for c in concepts}
    for section in ("imaging modalities", "findings: fundus photography", "findings: FFA and ICGA",
                    "findings: OCT", "findings: UBM", "findings: slit lamp and fluorescein staining",
                    "findings: CT and orbit"):
        assert section in sections
    assert any(s.startswith("diagnoses") for s in sections)
    for key, aliases in MODALITIES.items():
        assert find_concepts(aliases[0]), f"no concept for modality {key}"
    names = [c.name for c in concepts]
    assert len(names) == len(set(names)), "a concept is listed twice"


def test_parse_terms_format():
    concepts = parse_terms("# comment\n[a]\nMacular edema | macular oedema | DME\n\n[b]\ndrusen\n")
    assert [(c.name, c.section) for c in concepts] == [("Macular edema", "a"), ("drusen", "b")]
    assert find_concepts("DMO? no: dme", concepts) == {"Macular edema"}


# ---- aggregates ----

def test_closed_scores_count_unparseable_as_wrong():
    scores = closed_scores(["yes", "no", "B", "A"], ["yes", None, "B", "C"])
    assert scores == {"n": 4, "correct": 2, "accuracy": 50.0, "unparseable": 1}
    assert closed_scores([], [])["accuracy"] is None


def test_text_scores_average_per_record():
    scores = text_scores(["drusen at the macula", ""], ["drusen at the macula", "The image is fine."])
    assert scores["n"] == 2
    assert scores["rouge_l"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(50.0)
    assert scores["term_recall"] == pytest.approx(100.0) and scores["term_recall_n"] == 1


def test_missing_library_gives_install_hint():
    code = (
        "import sys\n"
        "for m in ('sacrebleu', 'rouge_score', 'matplotlib'): sys.modules[m] = None\n"
        "import eyecare.bench as b\n"
        "from eyecare.bench.errors import MissingDependency\n"
        "for call in (lambda: b.bleu(['a'], ['a']), lambda: b.rouge_l('a', 'a')):\n"
        "    try:\n"
        "        call()\n"
        "    except MissingDependency as e:\n"
        "        print(e)\n"
        "print(b.token_f1('x y', 'x'), b.extract_yes_no('Yes'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "BLEU needs the 'sacrebleu' package: pip install 'eyecare[bench]'" in lines[0]
    assert "ROUGE-L needs the 'rouge-score' package: pip install 'eyecare[bench]'" in lines[1]
    assert lines[2].startswith("0.66") and lines[2].endswith("yes")
