"""Structured output (eyecare.structured): constrained greedy decoding equals transformers' generate with
llguidance's mask as its prefix_allowed_tokens_fn, every greedy or sampled answer under a JSON schema
is valid against it (checked with jsonschema), streaming and batches give the same text, and bad
schemas, regexes and grammars are clear errors."""
import json
import re

import jsonschema
import numpy as np
import pytest
import torch

from eyecare import LanguageModel
from eyecare.structured import GrammarError
from tiny_llm import phi3_model, qwen2_model, save_checkpoint, write_tokenizer

SCHEMAS = [
    {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                      "reason": {"type": "string", "maxLength": 16}},
     "required": ["score", "reason"], "additionalProperties": False},
    {"type": "object", "properties": {"eye": {"enum": ["left", "right", "both"]},
                                      "findings": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                                   "minItems": 1, "maxItems": 3},
                                      "urgent": {"type": "boolean"}},
     "required": ["eye", "findings", "urgent"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -20, "maximum": 20}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"grade": {"type": "string", "pattern": "^R[0-3]M[01]$"},
                                      "nested": {"type": "object", "properties": {"x": {"type": "number", "minimum": 0,
                                                                                         "maximum": 1}},
                                                 "required": ["x"], "additionalProperties": False}},
     "required": ["grade", "nested"], "additionalProperties": False},
]
PARITY_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5},
                                                "eye": {"enum": ["left", "right", "both"]}},
                 "required": ["score", "eye"], "additionalProperties": False}


def _load(tmp_path_factory, kind):
    model = phi3_model(seed=21) if kind == "phi3" else qwen2_model(seed=22)
    d = str(tmp_path_factory.mktemp(kind + "structured"))
    save_checkpoint(model, d)
    write_tokenizer(d, kind)
    return model, LanguageModel.from_pretrained(d, max_context=320, max_batch=2)


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    return _load(tmp_path_factory, "phi3")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return _load(tmp_path_factory, "qwen2")


def _allowed_fn(constraint, prompt_len):
    """transformers' prefix_allowed_tokens_fn from llguidance's mask (the reference library's): what
    is compared is the engine's use of it (masking on the host, greedy choice, EOS, the grammar's state
    advancing token by token) against transformers' constrained generate."""
    def fn(batch_id, input_ids):
        state = constraint.start()
        for token in input_ids[prompt_len:].tolist():
            state.advance(token)
        return np.nonzero(state.allowed())[0].tolist()
    return fn


@pytest.mark.parametrize("kind", ["phi3", "qwen2"])
@pytest.mark.parametrize("what", ["regex", "json_schema"])
def test_constrained_greedy_equals_transformers_with_the_same_mask(request, kind, what):
    from eyecare.structured import compile_constraint

    model, lm = request.getfixturevalue(kind)
    options = ["yes", "no", "not sure", "maybe later", "normal fundus"]
    spec = {"regex": "|".join(re.escape(o) for o in options)} if what == "regex" else {"json_schema": PARITY_SCHEMA}
    constraint = compile_constraint(lm, **spec)
    eos = model.config.eos_token_id
    changed = 0
    for seed in range(4):
        prompt = np.random.default_rng(100 + seed).integers(10, 290, 7).tolist()
        out = lm.generate(input_ids=prompt, max_new_tokens=60, **spec)
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=60, do_sample=False, eos_token_id=eos,
                                  pad_token_id=model.config.pad_token_id,
                                  prefix_allowed_tokens_fn=_allowed_fn(constraint, len(prompt)))[0, len(prompt):].tolist()
        # When the grammar is complete eyecare ends the answer, where transformers picks the only allowed
        # token, EOS; where more may follow ("no" / "not sure") both choose between EOS and the rest.
        assert want[-1] == eos
        assert out.token_ids == (want if out.token_ids[-1] == eos else want[:-1]), (seed, lm.decode(want))
        assert out.finish_reason == "eos"
        if what == "regex":
            assert out.text in options
        else:
            jsonschema.validate(json.loads(out.text), PARITY_SCHEMA)
        free = lm.generate(input_ids=prompt, max_new_tokens=len(out.token_ids)).token_ids
        changed += free != out.token_ids
    assert changed  # the constraint changed what greedy decoding picks


@pytest.mark.parametrize("kind", ["phi3", "qwen2"])
@pytest.mark.parametrize("schema", range(len(SCHEMAS)))
def test_greedy_json_is_valid_against_the_schema(request, kind, schema):
    _, lm = request.getfixturevalue(kind)
    schema = SCHEMAS[schema]
    prompt = [{"role": "user", "content": "Grade the fundus photograph as JSON."}]
    out = lm.generate(prompt, json_schema=schema, max_new_tokens=160)
    assert out.finish_reason == "eos", out.text
    jsonschema.validate(json.loads(out.text), schema)


def test_sampled_json_is_valid_and_a_seed_repeats(phi3):
    _, lm = phi3
    schema = SCHEMAS[0]
    prompt = [{"role": "user", "content": "Rate it."}]
    texts = []
    for seed in range(4):
        out = lm.generate(prompt, json_schema=schema, do_sample=True, temperature=1.3, top_p=0.95, seed=seed,
                          max_new_tokens=120)
        jsonschema.validate(json.loads(out.text), schema)
        texts.append(out.text)
    assert lm.generate(prompt, json_schema=schema, do_sample=True, temperature=1.3, top_p=0.95, seed=2,
                       max_new_tokens=120).text == texts[2]
    assert len(set(texts)) > 1


def test_stream_and_batch_give_the_text_of_generate(phi3):
    _, lm = phi3
    schema = SCHEMAS[1]
    prompts = [[{"role": "user", "content": "Which eye?"}], [{"role": "user", "content": "Any findings at all?"}]]
    singles = [lm.generate(p, json_schema=schema, max_new_tokens=120).text for p in prompts]
    stream = lm.stream(prompts[1], json_schema=schema, max_new_tokens=120)
    assert "".join(stream) == singles[1] and stream.output.text == singles[1]
    assert [o.text for o in lm.generate(prompts, json_schema=schema, max_new_tokens=120)] == singles


def test_lark_grammar_and_a_cut_answer(qwen2):
    _, lm = qwen2
    out = lm.generate("Pick:", grammar='start: "grade " DIGIT ("." DIGIT)?\nDIGIT: /[0-4]/', max_new_tokens=12)
    assert re.fullmatch(r"grade [0-4](\.[0-4])?", out.text), out.text
    cut = lm.generate("Pick:", json_schema={"type": "array", "items": {"type": "integer"}, "minItems": 50},
                      max_new_tokens=5)
    assert cut.finish_reason == "length" and cut.text.startswith("[")


def test_no_constraint_leaves_generation_unchanged(phi3):
    _, lm = phi3
    prompt = np.random.default_rng(7).integers(10, 290, 6).tolist()
    logits = lm.forward(input_ids=prompt)[-1]
    assert lm.generate(input_ids=prompt, max_new_tokens=1).token_ids == [int(np.argmax(logits))]


def test_bad_constraints_are_clear_errors(phi3):
    _, lm = phi3
    with pytest.raises(GrammarError, match="not a valid JSON Schema"):
        lm.generate("x", json_schema={"type": "no-such-type"})
    with pytest.raises(GrammarError, match="regex cannot be compiled"):
        lm.generate("x", regex="(unclosed")
    with pytest.raises(GrammarError, match="grammar cannot be compiled"):
        lm.generate("x", grammar="start: undefined_rule")
    with pytest.raises(ValueError, match="at most one of json_schema, regex and grammar"):
        lm.generate("x", regex="a", grammar='start: "a"')
    assert isinstance(GrammarError("x"), ValueError)  # the CLI and server report it as bad input
