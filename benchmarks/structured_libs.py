"""The constrained-decoding libraries eyecare could use for structured output, measured side by side:
llguidance (the one eyecare.structured uses), xgrammar and outlines-core.

For each: the time to compile a judge-style JSON schema against a 32,000-token byte-level BPE
vocabulary (trained here on Python's standard library, the size of Phi-3.5-mini's), and the host time
per token of decoding random logits under it (the token mask computed, unpacked and applied to the
logits, the chosen token fed back), over the same tokens for each library. llguidance is a core
dependency; the others are measured when installed (pip install xgrammar outlines-core) and reported
missing otherwise.

    python benchmarks/structured_libs.py
"""
from __future__ import annotations

import glob
import json
import os
import sysconfig
import tempfile
import time

import numpy as np

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["accuracy", "completeness", "rationale"],
          "properties": {"accuracy": {"type": "integer", "minimum": 1, "maximum": 5},
                         "completeness": {"type": "integer", "minimum": 1, "maximum": 5},
                         "rationale": {"type": "string", "maxLength": 400}}}
VOCAB = 32064   # Phi-3.5-mini's logits
TOKENS = 1000


def train_tokenizer(vocab_size: int = 32000):
    """A byte-level BPE (the kind Phi-3.5 and Qwen2 use) trained on ~4 MB of the standard library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError):
            continue
        size += len(texts[-1])
        if size > 4e6:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _apply(bits: np.ndarray, logits: np.ndarray) -> None:
    allowed = np.unpackbits(bits.view(np.uint8), bitorder="little", count=logits.shape[0]).view(bool)
    logits[~allowed] = -np.inf


def decode_loop(start, fill, advance, rows) -> float:
    """Mean seconds per token: fill(bits) computes the mask, advance(token) -> True when complete."""
    bits = np.zeros((VOCAB + 31) // 32, dtype=np.int32)
    state, spent = start(), 0.0
    for i in range(TOKENS):
        row = rows[i % len(rows)].copy()
        t = time.perf_counter()
        fill(state, bits)
        _apply(bits, row)
        token = int(np.argmax(row))
        done = advance(state, token)
        spent += time.perf_counter() - t
        if done:
            state = start()
    return spent / TOKENS


def bench_llguidance(tok, eos, rows):
    import llguidance as llg

    lt = llg.LLTokenizer(tok.to_str(), eos_token=[eos])
    t = time.perf_counter()
    matcher = llg.LLMatcher(lt, llg.LLMatcher.grammar_from_json_schema(SCHEMA), log_level=0)
    compile_s = time.perf_counter() - t
    assert not matcher.is_error(), matcher.get_error()
    small = np.zeros((lt.vocab_size + 31) // 32, dtype=np.int32)

    def fill(m, bits):
        m.unsafe_compute_mask_ptr(small.ctypes.data, small.nbytes)
        bits[:len(small)] = small

    def advance(m, token):
        if token == eos:
            return True
        m.consume_token(token)
        return m.is_stopped()
    return compile_s, decode_loop(matcher.deep_copy, fill, advance, rows)


def bench_xgrammar(tok, eos, rows):
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>")
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=VOCAB, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    compile_s = time.perf_counter() - t
    import torch

    mask = xgr.allocate_token_bitmask(1, VOCAB)

    def fill(m, bits):
        m.fill_next_token_bitmask(mask)
        bits[:] = mask[0].numpy()

    def advance(m, token):
        m.accept_token(token)
        return m.is_terminated()
    del torch
    return compile_s, decode_loop(lambda: xgr.GrammarMatcher(compiled), fill, advance, rows)


def bench_outlines_core(tok, eos, rows):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    # Token strings as bytes: undo the byte-level alphabet (GPT-2's bytes_to_unicode).
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(keep, codes)}
    vocab = {}
    for token, i in tok.get_vocab().items():
        if i == eos or token.startswith("<|"):
            continue
        vocab.setdefault(bytes(byte_of[ch] for ch in token), []).append(i)
    vocabulary = Vocabulary(eos, vocab)
    t = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), vocabulary)
    compile_s = time.perf_counter() - t

    def fill(g, bits):
        g.write_mask_into(bits.ctypes.data, bits.size, 4)

    def advance(g, token):
        if token == eos:
            return True
        g.advance(token, return_tokens=False)
        return g.is_finished()
    return compile_s, decode_loop(lambda: Guide(index), fill, advance, rows)


def main():
    t = time.perf_counter()
    tok = train_tokenizer()
    eos = tok.token_to_id("<|end|>")
    print(f"{tok.get_vocab_size()}-token byte-level BPE trained in {time.perf_counter() - t:.1f} s; logits of {VOCAB}; "
          f"{TOKENS} tokens of random logits decoded under a judge-style JSON schema")
    rows = np.random.default_rng(0).standard_normal((64, VOCAB)).astype(np.float32)
    with tempfile.TemporaryDirectory():
        for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar),
                         ("outlines-core", bench_outlines_core)):
            try:
                compile_s, per_token = fn(tok, eos, rows)
            except ImportError as exc:
                print(f"  {name:14s} not installed ({exc.name}): pip install {name}")
                continue
            print(f"  {name:14s} compile {compile_s * 1e3:9.1f} ms   {per_token * 1e6:7.0f} us/token")


if __name__ == "__main__":
    main()
