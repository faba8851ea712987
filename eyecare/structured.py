"""Structured output: generation constrained to a JSON schema, a regular expression or a Lark grammar.

At each step the grammar's token mask (which tokens keep the output a valid prefix) is computed by
llguidance and applied on the host to the logits before sampling: disallowed tokens get -inf, so
greedy decoding and sampling (temperature, top-k, top-p, repetition penalty) only ever pick tokens
the grammar allows. When the grammar is complete (a JSON value closed, a regex matched to its end)
the answer ends. The output is therefore valid unless max_new_tokens cuts it first (finish_reason
"length").

Why llguidance: it builds the mask from a Hugging Face ``tokenizer.json`` directly, compiles a JSON
schema in well under a millisecond (xgrammar took about 20x longer, outlines-core seconds per schema),
and its per-token mask cost was as low as the others' (benchmarks/structured_libs.py measures the
three; docs/serve.md gives the figures). Grammars are compiled lazily: with no constraint nothing in
the generation loop changes.

    lm.generate(prompt, json_schema={"type": "object", ...})
    lm.generate(prompt, regex=r"(yes|no)")
    lm.generate(prompt, grammar='start: "A" | "B"')        # Lark syntax, as llguidance reads it
"""
from __future__ import annotations

import json
import threading
import weakref

import numpy as np

__all__ = ["Constraint", "GrammarError", "compile_constraint"]


class GrammarError(ValueError):
    """The schema, regex or grammar cannot be compiled (the message says why)."""


# An LLTokenizer takes a second to build for a 32k vocabulary: one per (tokenizer, vocab size, eos).
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a core dependency; a broken install should say what is missing
        raise ImportError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


def _ll_tokenizer(tokenizer, eos_ids):
    """The llguidance view of an eyecare Tokenizer. Its EOS ids are the model's that the tokenizer
    knows (llguidance refuses others); ConstraintState.mask decides every EOS id itself anyway."""
    llg = _llguidance()
    known = tuple(sorted(i for i in eos_ids if i < tokenizer.vocab_size))
    with _tokenizers_lock:
        per = _tokenizers.setdefault(tokenizer, {})
        if known not in per:
            try:
                per[known] = llg.LLTokenizer(tokenizer.to_json(), eos_token=list(known) or None)
            except ValueError as exc:
                raise GrammarError(f"structured output cannot use this tokenizer: {exc}") from None
        return per[known]


def _grammar(json_schema=None, regex=None, grammar=None) -> str:
    llg = _llguidance()
    given = [x is not None for x in (json_schema, regex, grammar)]
    if sum(given) > 1:
        raise ValueError("give at most one of json_schema, regex and grammar")
    if json_schema is not None:
        if isinstance(json_schema, str):
            try:
                json_schema = json.loads(json_schema)
            except json.JSONDecodeError as exc:
                raise GrammarError(f"json_schema is not JSON: {exc}") from None
        if not isinstance(json_schema, (dict, bool)):
            raise GrammarError("json_schema must be a JSON Schema object (a dict)")
        import jsonschema

        try:
            jsonschema.validators.validator_for(json_schema).check_schema(json_schema)
        except jsonschema.SchemaError as exc:
            raise GrammarError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        try:
            # Compact JSON (no free whitespace): a model cannot pad the answer with spaces forever.
            return llg.LLMatcher.grammar_from_json_schema(json_schema, defaults={"whitespace_flexible": False})
        except ValueError as exc:
            raise GrammarError(f"json_schema: {exc}") from None
    if regex is not None:
        if not isinstance(regex, str):
            raise GrammarError("regex must be a string")
        return llg.LLMatcher.grammar_from_regex(regex)
    if not isinstance(grammar, str):
        raise GrammarError("grammar must be a string in Lark syntax")
    return llg.LLMatcher.grammar_from_lark(grammar)


class Constraint:
    """A compiled grammar for one tokenizer; ``start()`` gives a fresh matcher per generated sequence."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids, *, json_schema=None, regex=None, grammar=None):
        llg = _llguidance()
        self.vocab_size = int(vocab_size)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self._ll_tokenizer = _ll_tokenizer(tokenizer, self.eos_ids)
        text = _grammar(json_schema, regex, grammar)
        self._matcher = llg.LLMatcher(self._ll_tokenizer, text, log_level=0)
        if self._matcher.is_error():
            what = "json_schema" if json_schema is not None else "regex" if regex is not None else "grammar"
            raise GrammarError(f"{what} cannot be compiled: {self._matcher.get_error()}")

    def start(self) -> "ConstraintState":
        return ConstraintState(self._matcher.deep_copy(), self.vocab_size, self.eos_ids,
                               self._ll_tokenizer.vocab_size, self._ll_tokenizer.eos_tokens)


class ConstraintState:
    """One sequence's position in the grammar."""

    def __init__(self, matcher, vocab_size: int, eos_ids, grammar_vocab: int, grammar_eos):
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._eos_ids = np.array(sorted(i for i in eos_ids if i < vocab_size), dtype=np.int64)
        # llguidance's own EOS ids that do not end this model's answer (e.g. a tokenizer's default).
        self._foreign_eos = np.array([i for i in grammar_eos if i not in eos_ids and i < vocab_size], dtype=np.int64)
        self._bits = np.zeros((grammar_vocab + 31) // 32, dtype=np.int32)
        self._allowed = np.zeros(vocab_size, dtype=bool)  # ids past the tokenizer's (padding rows) stay False
        self._n = min(vocab_size, grammar_vocab)

    def allowed(self) -> np.ndarray:
        """Boolean [vocab]: the tokens that keep the output valid now (the model's EOS ids exactly when
        the output is already complete enough to end)."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=self._n).view(bool)
        self._allowed[:self._n] = bits
        self._allowed[self._foreign_eos] = False
        self._allowed[self._eos_ids] = self._matcher.is_accepting()
        return self._allowed

    def mask(self, logits: np.ndarray) -> None:
        """Sets the logits of every token the grammar forbids now to -inf (in place)."""
        allowed = self.allowed()
        if not allowed.any():
            raise RuntimeError(f"the grammar allows no token here ({self._matcher.get_error() or 'no EOS token to end'})")
        logits[~allowed] = -np.inf

    def advance(self, token: int) -> bool:
        """Takes the chosen token; True when the output is complete (nothing but the end may follow)."""
        if token in self._eos_ids:
            return True
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(f"token {token} was chosen against the grammar: {self._matcher.get_error()}")
        return self._matcher.is_stopped()


def compile_constraint(language_model, *, json_schema=None, regex=None, grammar=None):
    """A Constraint for `language_model`'s tokenizer and vocabulary, or None when none is asked for."""
    if json_schema is None and regex is None and grammar is None:
        return None
    tokenizer = language_model._need_tokenizer()
    return Constraint(tokenizer, language_model.config.vocab_size, language_model.eos_token_ids,
                      json_schema=json_schema, regex=regex, grammar=grammar)
