"""Closed questions made from a case's labels alone, no language model involved.

* yes/no: "Does this OCT scan show macular hole?" for labels the case has (answer Yes) and for as many
  categories of the modality's taxonomy it does not have (answer No), so every case contributes
  equally many Yes and No answers. This reads the labels as complete: a category not listed is absent.
* multiple choice: "What is the most likely diagnosis ...?" with the case's first label as the answer
  and distractors drawn from the same modality's taxonomy, never one of the case's labels, and so
  never a synonym of the answer (each spelling belongs to one category; see taxonomy.py).

Everything random (which categories are asked about, the wording, the option order) comes from a
generator seeded with (seed, case id): the same manifest and seed give the same questions, whatever
the order or concurrency in which cases are processed.
"""
from __future__ import annotations

import random

from .taxonomy import spelling_key

RULES_VERSION = "rules.v1"
YES_NO_TEMPLATES = ("Does this {noun} show {name}?", "Is there evidence of {name} in this {noun}?",
                    "Is {name} present in this {noun}?")
NORMAL_TEMPLATE = "Is this {noun} normal?"
CHOICE_TEMPLATES = ("What is the most likely diagnosis based on this {noun}?",
                    "Which diagnosis best fits the findings in this {noun}?")
LETTERS = "ABCDEFGH"


def case_rng(seed: int, case_id: str, purpose: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and Python processes.
    return random.Random(f"{seed}|{case_id}|{purpose}")


def _yes_no_question(rng, noun: str, name: str) -> str:
    if spelling_key(name).startswith("normal"):
        return NORMAL_TEMPLATE.format(noun=noun)
    return rng.choice(YES_NO_TEMPLATES).format(noun=noun, name=name)


def rule_items(case, taxonomy, *, seed: int = 0, yes_no_per_case: int = 2, choices: int = 4) -> list:
    """The closed questions of one case as item dicts (see build.py for the item format)."""
    if not case.labels:
        return []
    absent = [c for c in taxonomy.categories if c not in case.labels]
    items = []
    rng = case_rng(seed, case.id, "yes_no")
    n = min(len(case.labels), yes_no_per_case, len(absent))
    asked = [(name, "Yes") for name in rng.sample(list(case.labels), n)] + \
            [(name, "No") for name in rng.sample(absent, n)]
    for k, (name, answer) in enumerate(asked, start=1):
        items.append({"kind": "yes_no", "task": "closed", "question": _yes_no_question(rng, taxonomy.image_noun, name),
                      "answer": answer, "options": [], "about": name, "generator": "rule:yes_no"})
    rng = case_rng(seed, case.id, "choice")
    distractors = rng.sample(absent, min(choices - 1, len(absent)))
    if distractors:
        options = [case.labels[0]] + distractors
        rng.shuffle(options)
        items.append({"kind": "choice", "task": "closed",
                      "question": rng.choice(CHOICE_TEMPLATES).format(noun=taxonomy.image_noun),
                      "answer": LETTERS[options.index(case.labels[0])], "options": options,
                      "about": case.labels[0], "generator": "rule:choice"})
    return items
