"""Closed-question answer extraction on realistic model replies."""
import pytest

from eyecare.bench.extract import (extract_answer, extract_choice, extract_yes_no, format_options, gold_answer,
                                   split_options)

YES_NO_REPLIES = [
    ("Yes", "yes"),
    ("yes.", "yes"),
    ("No", "no"),
    ("NO.", "no"),
    ("Yes, there are multiple hard exudates temporal to the fovea.", "yes"),
    ("No, the macula appears normal without subretinal fluid.", "no"),
    ("**Yes** — scattered drusen are present.", "yes"),
    ("- No.", "no"),
    ("The answer is yes.", "yes"),
    ("Answer: No", "no"),
    ("After reviewing the OCT scan, my answer is: no.", "no"),
    ("Based on the fundus photograph, yes, there are signs of diabetic retinopathy.", "yes"),
    ("There is no evidence of papilledema in this image.", "no"),
    ("True", "yes"),
    ("False.", "no"),
    ("Yes. There is no vitreous hemorrhage, but drusen are present.", "yes"),
    ("I cannot determine this from the image.", None),
    ("The image quality is insufficient to tell.", None),
    ("Yes and no: the angle is narrow but not closed.", None),
    ("It might be yes, or it might be no.", None),
    ("", None),
    ("   ", None),
    ("Nope", None),
    ("The optic disc is pale.", None),
]


@pytest.mark.parametrize("reply,expected", YES_NO_REPLIES)
def test_yes_no_replies(reply, expected):
    assert extract_yes_no(reply) == expected


OPTIONS = ["Glaucoma", "Cataract", "Angle-closure glaucoma", "Retinal detachment"]
CHOICE_REPLIES = [
    ("B", "B"),
    ("b", "B"),
    ("c.", "C"),
    ("D)", "D"),
    ("(C)", "C"),
    ("(C) Angle-closure glaucoma", "C"),
    ("B. Cataract", "B"),
    ("**B. Cataract**", "B"),
    ("A: glaucoma, given the enlarged cup.", "A"),
    ("The correct answer is D.", "D"),
    ("The answer is (A).", "A"),
    ("Answer: B", "B"),
    ("answer: b.", "B"),
    ("I would choose option C because the iris is apposed to the trabecular meshwork.", "C"),
    ("The most likely diagnosis is cataract.", "B"),
    ("This is angle closure glaucoma.", "C"),              # the longer option wins over "glaucoma"
    ("Findings are consistent with a retinal detachment.", "D"),
    ("The answer is a retinal detachment.", "D"),           # "a" is an article, not option A
    ("A retinal detachment is visible inferiorly.", "D"),
    ("The findings are most consistent with (D).", "D"),
    ("Retinal Detachment", "D"),
    ("It could be glaucoma or cataract.", None),            # two options named: ambiguous
    ("E", None),                                            # no option E
    ("None of the above.", None),
    ("I am not able to determine the diagnosis.", None),
    ("", None),
]


@pytest.mark.parametrize("reply,expected", CHOICE_REPLIES)
def test_choice_replies(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


def test_extract_answer_dispatches_on_options():
    assert extract_answer("Yes, drusen.", ()) == "yes"
    assert extract_answer("B. Cataract", OPTIONS) == "B"
    assert extract_answer("Yes", OPTIONS) is None


@pytest.mark.parametrize("answer,options,expected", [
    ("yes", (), "yes"), ("No.", (), "no"), ("Yes, there is subretinal fluid.", (), "yes"),
    ("maybe", (), None), ("B", OPTIONS, "B"), ("(c)", OPTIONS, "C"), ("D. Retinal detachment", OPTIONS, "D"),
    ("cataract", OPTIONS, "B"), ("angle closure glaucoma", OPTIONS, "C"), ("F", OPTIONS, None),
    ("choroidal melanoma", OPTIONS, None),
])
def test_gold_answer(answer, options, expected):
    assert gold_answer(answer, options) == expected


def test_split_options_on_lines_inline_and_absent():
    stem, options = split_options("Which diagnosis fits best?\nA. Glaucoma\nB) Cataract\n(C) AMD\nAnswer with the letter.")
    assert stem == "Which diagnosis fits best?"
    assert options == ["Glaucoma", "Cataract", "AMD"]
    assert split_options("What is shown? A. glaucoma B. cataract C. vitamin A deficiency")[1] == [
        "glaucoma", "cataract", "vitamin A deficiency"]
    assert split_options("Is vitamin A. relevant here?") == ("Is vitamin A. relevant here?", [])
    assert split_options(f"Pick one.\n{format_options(OPTIONS)}")[1] == OPTIONS
