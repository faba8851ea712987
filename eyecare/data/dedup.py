"""Exact and near-duplicate removal.

Two items can only be duplicates if they show the same images (compared by content, the SHA-1 of
each file, so one image saved under two names counts as one) and have the same task. Among those:

* exact: the same question, answer and options once case, punctuation and spacing are ignored;
* near: the same answer and options and the same content words in the question, once function
  words ("is", "are", "there", "this", "show", "present", ...) and plural endings are set aside
  ("Is there drusen in this OCT scan?" and "Are drusen present in this OCT scan?"); or, for open
  questions and reports, a Jaccard similarity of the character 3-grams of question + answer at or
  above `threshold`. Closed questions are never matched by similarity alone: "Does this OCT scan
  show RD?" and "... show ME?" differ in one short word and are different questions.

The first item in manifest order is kept; each later one is removed with the id it duplicates.
"""
from __future__ import annotations

import re


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


_FUNCTION_WORDS = frozenset("""a an the this that these those is are was were be there here any some of in on at
to for with from by does do did show shows showing seen visible present presence evidence see image can you
what which""".split())


def _content(text: str) -> frozenset:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                     for w in words if w not in _FUNCTION_WORDS)


def _grams(text: str) -> frozenset:
    padded = f"  {text} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def similarity(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def deduplicate(items: list, threshold: float = 0.9) -> tuple:
    """(kept items, [(removed item, reason)]). Items need "images_key", "task", "question", "answer",
    "options" and "id"."""
    groups: dict = {}
    kept, removed = [], []
    for item in items:
        group = groups.setdefault((tuple(item["images_key"]), item["task"]), [])
        answer = _norm(item["answer"])
        options = tuple(_norm(o) for o in item.get("options") or ())
        text = _norm(item["question"]) + " | " + answer
        # Closed questions are never matched by similarity: their 3-grams are not needed.
        grams = _grams(text) if item["task"] != "closed" else frozenset()
        content = _content(item["question"])
        reason = None
        for other in group:
            if other["text"] == text and other["options"] == options:
                reason = f"exact duplicate of {other['id']}"
                break
            if threshold > 1.0:
                continue
            if (other["answer"], other["options"], other["content"]) == (answer, options, content):
                reason = f"near duplicate of {other['id']} (same content words)"
                break
            if item["task"] == "closed":
                continue
            score = similarity(grams, other["grams"])
            if score >= threshold:
                reason = f"near duplicate of {other['id']} (similarity {score:.2f})"
                break
        if reason:
            removed.append((item, reason))
            continue
        group.append({"id": item["id"], "text": text, "answer": answer, "options": options, "grams": grams,
                      "content": content})
        kept.append(item)
    return kept, removed
