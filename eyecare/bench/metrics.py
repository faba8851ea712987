"""Scores for closed questions, open answers and reports.

Library choices (all in the `bench` extra, imported only when a score is computed):

* BLEU-1..4: sacrebleu's corpus BLEU (`sacrebleu.metrics.BLEU`, max_ngram_order 1..4, brevity
  penalty over the whole group, no smoothing: Papineni et al.'s definition, so a group with no
  matching n-gram of some order scores 0 from that order on). BLEU-n is the cumulative score, the
  geometric mean of the 1..n-gram precisions, as in the report-generation literature.
* ROUGE-L: Google's rouge-score (`rouge_score.rouge_scorer.RougeScorer(["rougeL"])`), the
  F-measure of the longest common subsequence, per record, averaged.
* Token F1: the SQuAD definition (bag-of-tokens overlap, articles a/an/the dropped), per record,
  averaged. It is six lines of arithmetic with no maintained package that does not drag in a
  framework, so it is written out here.
* Term recall: terms.term_recall over the shipped ophthalmic term list.

All text metrics see the same tokens (text.tokenize: lower-cased, punctuation dropped, any script)
so a reply in another script or with different casing is scored on its words, not its bytes.
Every score is reported as a percentage (0-100).
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from statistics import fmean
from typing import Optional, Sequence

from .errors import require
from .terms import term_recall
from .text import tokenize

__all__ = ["bleu", "rouge_l", "token_f1", "term_recall", "closed_scores", "text_scores"]

_ARTICLES = {"a", "an", "the"}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU-1..4 (0-100) of predictions against one reference each."""
    if len(predictions) != len(references):
        raise ValueError("bleu: predictions and references differ in length")
    if not predictions:
        return {f"bleu{n}": None for n in range(1, 5)}
    metrics = require("sacrebleu.metrics", "sacrebleu", "BLEU")
    # sacrebleu splits on spaces when tokenize="none": hand it our tokens so BLEU, ROUGE-L and F1
    # agree on what a word is.
    hyps = [" ".join(tokenize(p)) for p in predictions]
    refs = [[" ".join(tokenize(r)) for r in references]]
    return {f"bleu{n}": metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=n).corpus_score(hyps, refs).score
            for n in range(1, 5)}


class _Tokenizer:
    """rouge-score accepts any object with tokenize(text); this one is ours (its own drops non-ASCII)."""

    def tokenize(self, text):
        return tokenize(text)


@lru_cache(maxsize=1)
def _rouge_scorer():
    rouge = require("rouge_score.rouge_scorer", "rouge-score", "ROUGE-L")
    return rouge.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (0-1) of one prediction against its reference; 0 if either is empty."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (0-1). Two empty texts agree (1.0); one empty text scores 0."""
    pred = [t for t in tokenize(prediction) if t not in _ARTICLES]
    ref = [t for t in tokenize(reference) if t not in _ARTICLES]
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def closed_scores(golds: Sequence[str], answers: Sequence[Optional[str]],
                  failed: Optional[Sequence[bool]] = None) -> dict:
    """Accuracy (0-100) of extracted answers.

    An answer of None is wrong. It is counted as unparseable (the model replied, but no answer
    could be read) unless `failed` marks that record's model call as having raised.
    """
    n = len(golds)
    failed = failed if failed is not None else [False] * n
    correct = sum(a is not None and a == g for g, a in zip(golds, answers))
    return {
        "n": n,
        "correct": correct,
        "accuracy": 100.0 * correct / n if n else None,
        "unparseable": sum(a is None and not f for a, f in zip(answers, failed)),
    }


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """BLEU-1..4, ROUGE-L, token F1 and term recall (0-100) of a group of open answers or reports."""
    n = len(predictions)
    recalls = [r for r in (term_recall(p, ref) for p, ref in zip(predictions, references)) if r is not None]
    scores = {"n": n}
    scores.update(bleu(predictions, references))
    scores["rouge_l"] = 100.0 * fmean(rouge_l(p, r) for p, r in zip(predictions, references)) if n else None
    scores["f1"] = 100.0 * fmean(token_f1(p, r) for p, r in zip(predictions, references)) if n else None
    scores["term_recall"] = 100.0 * fmean(recalls) if recalls else None
    scores["term_recall_n"] = len(recalls)
    return scores
