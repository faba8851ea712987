"""Tokenization shared by the text metrics and the ophthalmic term matcher.

One tokenizer for every metric keeps scores comparable: NFKC-normalized, lower-cased runs of
letters and digits (any script), with each CJK character a token of its own because Chinese and
Japanese text has no spaces between words. Punctuation is dropped, so "age-related" is the two
tokens "age related" in the reference and the prediction alike.
"""
from __future__ import annotations

import re
import unicodedata

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def tokenize(text: str) -> list:
    """Lower-cased word tokens of `text` (see the module docstring)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text or "").lower())
