"""The shipped ophthalmic term list and the matcher behind the term-recall metric.

The list (ophthalmic_terms.txt, next to this module) holds concepts, each with one or more names:
imaging modalities, anatomy, findings of each of the eight modalities, and common diagnoses.
BLEU and ROUGE reward any overlapping words, including "the image shows"; term recall asks the
narrower clinical question: of the concepts the reference report names, how many does the
prediction name too?
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional, Sequence

from .text import tokenize


@dataclass(frozen=True)
class Concept:
    name: str          # preferred name, as written in the list
    section: str       # the [section] it is listed under
    aliases: tuple     # every name, including `name`, as normalized token tuples


def _stem(token: str) -> str:
    """Fold a plural to its singular, so "exudates" matches "exudate" (and "opacities" "opacity").

    Words ending in -ss, -us, -is (loss, fundus, iris, uveitis) are singular already.
    """
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def normalize(text: str) -> tuple:
    """Tokens of `text` as the matcher compares them: lower-cased, punctuation dropped, plurals folded."""
    return tuple(_stem(t) for t in tokenize(text))


def parse_terms(text: str) -> list:
    """Parse the term-list format (see ophthalmic_terms.txt) into Concepts."""
    concepts, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        names = [n.strip() for n in line.split("|") if n.strip()]
        aliases = tuple(dict.fromkeys(a for a in (normalize(n) for n in names) if a))
        if aliases:
            concepts.append(Concept(name=names[0], section=section, aliases=aliases))
    return concepts


@lru_cache(maxsize=1)
def default_terms() -> tuple:
    """The shipped term list, parsed once."""
    text = resources.files(__package__).joinpath("ophthalmic_terms.txt").read_text(encoding="utf-8")
    return tuple(parse_terms(text))


def _contains(tokens: tuple, phrase: tuple) -> bool:
    n = len(phrase)
    first = phrase[0]
    return any(tokens[i] == first and tokens[i:i + n] == phrase for i in range(len(tokens) - n + 1))


def find_concepts(text: str, concepts: Optional[Sequence[Concept]] = None) -> set:
    """Names of the concepts mentioned in `text` (any of a concept's names occurring as whole words)."""
    concepts = default_terms() if concepts is None else concepts
    tokens = normalize(text)
    present = set(tokens)
    return {c.name for c in concepts
            if any(a[0] in present and _contains(tokens, a) for a in c.aliases)}


def term_recall(prediction: str, reference: str, concepts: Optional[Sequence[Concept]] = None) -> Optional[float]:
    """Fraction of the reference's concepts that the prediction mentions too.

    None when the reference mentions no concept, since recall is undefined there; the report
    averages over the records where it is defined and says how many those were.
    """
    wanted = find_concepts(reference, concepts)
    if not wanted:
        return None
    return len(wanted & find_concepts(prediction, concepts)) / len(wanted)
