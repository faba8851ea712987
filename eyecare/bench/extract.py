"""Answer extraction for closed questions (yes/no and multiple choice).

Models rarely answer with a bare "yes" or "B": they write "Yes, there are drusen at the macula",
"The correct option is (C) retinal detachment" or "**B. Glaucoma**". The functions here find the
answer anywhere in such a reply with a fixed order of rules, from the most explicit statement to
the weakest hint. The first rule that yields exactly one answer wins; a rule that finds two
different answers makes the reply ambiguous and the next rule is tried. A reply no rule can read
is *unparseable*: it returns None, is scored as wrong and is counted separately in the report.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Optional, Sequence

LETTERS = "ABCDEFGH"

# Markdown emphasis, code and quotes carry no meaning for extraction but break word patterns.
_DECORATION = re.compile(r"[*_`\"“”‘’]+")

# Option markers like "A.", "(B)", "C)", "D:" followed by text. The negative look-behind keeps
# "vitamin A." from counting unless it is part of an A, B, C... sequence (see split_options).
_OPTION_MARKER = re.compile(r"(?<![A-Za-z0-9])\(?([A-H])(?:[.):：]|\))[ \t]+(?=\S)")

# "the answer is B", "Answer: (C)", "option D", "correct choice is A". The keyword is matched
# case-insensitively, the letter only in upper case, or in lower case when punctuation follows,
# so "the answer is a retinal detachment" does not read as option A.
_EXPLICIT_CHOICE = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)[^A-Za-z0-9\n]{0,3}(?i:(?:is|would be|:)\s*)?"
    r"(?i:(?:option|choice)\s*)?[(\[]?(?:([A-H])|([a-h])(?=[.)\]]|\s*$))(?![A-Za-z0-9])"
)
# A reply that starts with the letter: "B", "B.", "(B) Glaucoma", "C - cataract", "D: ...".
_LEADING_CHOICE = re.compile(r"^[(\[]?([A-H])(?:[.):\],]|\s*$|\s+[-–—:])")
# Weak hints anywhere: "(B)" or "B." / "B)" followed by a space or the end.
_LOOSE_CHOICE = re.compile(r"\(([A-H])\)|(?<![A-Za-z0-9])([A-H])[.)](?=\s|$)")

_EXPLICIT_YES_NO = re.compile(
    r"\b(?:answer|response)\b[^a-z0-9\n]{0,3}(?:is|would be|:)?\s*[:\-]?\s*(yes|no)\b"
)
_LEADING_YES_NO = re.compile(r"^(yes|no|true|false)\b")
# "Yes and no", "yes or no": a hedge, not an answer.
_HEDGE = re.compile(r"^(?:yes|no)\s+(?:and|or)\s+(?:yes|no)\b")
_YES_NO_WORD = re.compile(r"\b(yes|no)\b")
_TRUE_FALSE = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def _clean(text: str) -> str:
    """NFKC-normalize, drop markdown decoration, collapse whitespace, strip punctuation at the start."""
    text = unicodedata.normalize("NFKC", text or "")
    text = _DECORATION.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.lstrip(" .,:;-–—>#")


def _norm_words(text: str) -> str:
    """Lower-case words separated by single spaces, for matching option texts inside replies."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())
    return " ".join(words)


def split_options(question: str) -> tuple[str, list[str]]:
    """Split "stem A. x B. y C. z" (on separate lines or inline) into (stem, [x, y, z]).

    Options are recognised only as a run of markers A, B, C, ... in order, at least two long, so a
    stray "vitamin A." in the stem is not taken for an option. Returns (question, []) when the
    question lists no options.
    """
    markers = list(_OPTION_MARKER.finditer(question))
    # Find the last marker "A" from which B, C, ... follow in order; options sit at the end.
    for start in range(len(markers) - 1, -1, -1):
        if markers[start].group(1) != "A":
            continue
        run = [markers[start]]
        for m in markers[start + 1:]:
            if m.group(1) == LETTERS[len(run)]:
                run.append(m)
        if len(run) < 2:
            continue
        options = []
        for i, m in enumerate(run):
            end = run[i + 1].start() if i + 1 < len(run) else len(question)
            options.append(question[m.end():end].strip().rstrip(";,"))
        # Trailing instructions after the last option ("Answer with the letter.") stay out of it.
        options[-1] = options[-1].split("\n")[0].strip()
        stem = question[: run[0].start()].strip()
        if all(options):
            return stem, options
    return question, []


def format_options(options: Sequence[str]) -> str:
    """Lettered option lines, the layout split_options reads back."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def extract_yes_no(reply: str) -> Optional[str]:
    """Read "yes" or "no" from a free-form reply, or None when it says neither or both."""
    text = _clean(reply).lower()
    if not text:
        return None
    if _HEDGE.match(text):
        return None
    m = _LEADING_YES_NO.match(text)
    if m:
        return _TRUE_FALSE[m.group(1)]
    found = {m.group(1) for m in _EXPLICIT_YES_NO.finditer(text)}
    if len(found) == 1:
        return found.pop()
    # Anywhere in the reply: "There is no evidence of papilledema." reads as "no". A reply that
    # says both ("yes ... no ...") without a leading or explicit answer is ambiguous.
    found = set(_YES_NO_WORD.findall(text))
    if len(found) == 1:
        return found.pop()
    return None


def _unique(letters, n_options: int) -> Optional[str]:
    valid = {x.upper() for x in letters if x and x.upper() in LETTERS[:n_options]}
    return valid.pop() if len(valid) == 1 else None


def extract_choice(reply: str, options: Sequence[str]) -> Optional[str]:
    """Read the chosen option letter ("A".."H") from a free-form reply, or None.

    Rules, in order: an explicit "answer is B" / "option B"; a reply starting with the letter; the
    text of exactly one option (when one option's text contains another's, as "glaucoma" within
    "angle-closure glaucoma", the longer one is meant); a lone "(B)" or "B." anywhere.
    """
    text = _clean(reply)
    n = len(options)
    if not text or n == 0:
        return None
    if len(text) == 1 or (len(text) == 2 and text[1] in ".)"):
        if text[0].upper() in LETTERS[:n]:
            return text[0].upper()
    choice = _unique([a or b for a, b in _EXPLICIT_CHOICE.findall(text)], n)
    if choice:
        return choice
    m = _LEADING_CHOICE.match(text)
    if m and m.group(1) in LETTERS[:n]:
        return m.group(1)
    choice = _match_option_text(text, options)
    if choice:
        return choice
    return _unique([a or b for a, b in _LOOSE_CHOICE.findall(text)], n)


def _match_option_text(text: str, options: Sequence[str]) -> Optional[str]:
    padded = f" {_norm_words(text)} "
    norm = [_norm_words(o) for o in options]
    hits = [i for i, o in enumerate(norm) if o and f" {o} " in padded]
    # Drop options whose text is part of another hit ("glaucoma" inside "angle closure glaucoma").
    hits = [i for i in hits if not any(j != i and f" {norm[i]} " in f" {norm[j]} " for j in hits)]
    # Two options with the same text cannot be told apart; neither is chosen.
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return None


def extract_answer(reply: str, options: Sequence[str] = ()) -> Optional[str]:
    """The answer a closed-question reply gives: an option letter when there are options, else yes/no."""
    if options:
        return extract_choice(reply, options)
    return extract_yes_no(reply)


def gold_answer(answer: str, options: Sequence[str] = ()) -> Optional[str]:
    """Canonical reference answer of a closed question: an option letter, or "yes"/"no".

    Stricter than reading a model's reply: the reference must be a letter ("B", "(B)", "B. text"),
    an option's exact text, or start with yes/no. Returns None when it is none of these, which the
    dataset loader reports as an error in the `answer` field.
    """
    text = _clean(answer)
    if options:
        n = len(options)
        m = re.match(r"^[(\[]?([A-Ha-h])(?:[.):\]]|$)", text)
        if m and m.group(1).upper() in LETTERS[:n]:
            return m.group(1).upper()
        norm = _norm_words(text)
        for i, option in enumerate(options):
            if norm and norm == _norm_words(option):
                return LETTERS[i]
        return None
    m = _LEADING_YES_NO.match(text.lower())
    return _TRUE_FALSE[m.group(1)] if m else None
