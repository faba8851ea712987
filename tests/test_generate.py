"""Generation: greedy decoding against transformers' generate(do_sample=False) token for token, the
sampling options (seeded runs repeat, top-k 1 is greedy, the filtered distribution equals transformers'
logits warpers), EOS and stop strings, batches, and streaming text that stays whole across multi-byte
characters."""
import numpy as np
import pytest
import torch

import eyecare._core as core
from eyecare import LanguageModel
from eyecare.tokenizer import TextStreamer, Tokenizer
from tiny_llm import phi3_model, qwen2_model, save_checkpoint, write_tokenizer


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    model = phi3_model(seed=10)
    d = str(tmp_path_factory.mktemp("phi3gen"))
    save_checkpoint(model, d)
    write_tokenizer(d, "phi3")
    return model, LanguageModel.from_pretrained(d, max_context=128, max_batch=3, prefill_chunk=16)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    model = qwen2_model(seed=11)
    d = str(tmp_path_factory.mktemp("qwen2gen"))
    save_checkpoint(model, d)
    write_tokenizer(d, "qwen2")
    return model, LanguageModel.from_pretrained(d, max_context=128, max_batch=2)


def hf_generate(model, ids, n, **kw):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=model.config.eos_token_id,
                             pad_token_id=model.config.pad_token_id, **kw)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["phi3", "qwen2"])
def test_greedy_64_tokens_equal_transformers(request, kind):
    # For Phi-3 the 12-token prompt grows past original_max_position_embeddings (16) while decoding:
    # transformers then recomputes the sequence with the long factors, and so does eyecare.
    model, lm = request.getfixturevalue(kind)
    prompt = np.random.default_rng(12).integers(0, 300, 12).tolist()
    want = hf_generate(model, prompt, 64)
    out = lm.generate(input_ids=prompt, max_new_tokens=64, do_sample=False)
    assert len(want) == 64
    assert out.token_ids == want
    assert out.finish_reason == "length" and out.prompt_tokens == 12
    assert out.prefill_ms > 0 and out.decode_ms > 0 and out.decode_tokens_per_s > 0
    assert out["token_ids"] == want  # dict-style access too


def test_greedy_with_repetition_penalty_equals_transformers(qwen2):
    model, lm = qwen2
    prompt = np.random.default_rng(13).integers(0, 300, 9).tolist()
    want = hf_generate(model, prompt, 24, repetition_penalty=1.8)
    assert lm.generate(input_ids=prompt, max_new_tokens=24, do_sample=False, repetition_penalty=1.8).token_ids == want


def test_batched_generation_equals_one_by_one(phi3):
    model, lm = phi3
    rng = np.random.default_rng(14)
    prompts = [rng.integers(0, 300, n).tolist() for n in (4, 19, 9, 6)]  # 4 prompts: groups of max_batch 3
    outs = lm.generate(input_ids=prompts, max_new_tokens=20, do_sample=False)
    assert len(outs) == 4
    for p, out in zip(prompts, outs):
        assert out.token_ids == hf_generate(model, p, 20)


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(qwen2):
    model, lm = qwen2
    prompt = "The optic nerve"
    a = lm.generate(prompt, max_new_tokens=24, do_sample=True, temperature=1.3, top_p=0.9, seed=5)
    b = lm.generate(prompt, max_new_tokens=24, do_sample=True, temperature=1.3, top_p=0.9, seed=5)
    c = lm.generate(prompt, max_new_tokens=24, do_sample=True, temperature=1.3, top_p=0.9, seed=6)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    greedy = lm.generate(prompt, max_new_tokens=24, do_sample=False)
    assert lm.generate(prompt, max_new_tokens=24, do_sample=True, top_k=1, seed=9).token_ids == greedy.token_ids
    # Batched sampling is seeded as a whole too.
    x = lm.generate(["The retina", "Glaucoma"], max_new_tokens=8, do_sample=True, seed=3)
    y = lm.generate(["The retina", "Glaucoma"], max_new_tokens=8, do_sample=True, seed=3)
    assert [o.token_ids for o in x] == [o.token_ids for o in y]


def test_generation_config_supplies_defaults(tmp_path):
    model = qwen2_model(seed=15)
    save_checkpoint(model, str(tmp_path), generation_config={"eos_token_id": [319], "do_sample": True, "top_k": 1,
                                                             "max_new_tokens": 7})
    write_tokenizer(str(tmp_path), "qwen2")
    lm = LanguageModel.from_pretrained(tmp_path, max_context=64)
    out = lm.generate(input_ids=[5, 6, 7])
    assert len(out.token_ids) == 7  # max_new_tokens from the file
    assert out.token_ids == lm.generate(input_ids=[5, 6, 7], do_sample=False).token_ids  # sampling with top_k 1


# --------------------------------------------------------------------------------------------------
# The sampler against transformers' logits processors


def empirical(logits, history=(), n=20000, **opts):
    """Frequencies of each token over a uniform grid of draws: equal to the sampled distribution to 1/n."""
    counts = np.zeros(len(logits))
    for i in range(n):
        row = logits.copy()
        counts[core.sample(row, np.array(history, np.int32), True, u=(i + 0.5) / n, **opts)] += 1
    return counts / n


def hf_distribution(logits, history=(), temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0):
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    scores = torch.tensor(logits[None])
    ids = torch.tensor([list(history)], dtype=torch.long)
    if repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, scores)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return torch.softmax(scores, -1)[0].double().numpy()


@pytest.mark.parametrize("opts", [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.6),
    dict(temperature=1.5, top_k=12, top_p=0.8),
    dict(repetition_penalty=2.0, top_p=0.9),
])
def test_sampling_distribution_equals_transformers_warpers(opts):
    rng = np.random.default_rng(16)
    logits = (rng.standard_normal(40) * 2).astype(np.float32)
    history = [3, 3, 7, 30] if "repetition_penalty" in opts else []
    want = hf_distribution(logits, history, **opts)
    got = empirical(logits, history, **opts)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_sampler_greedy_penalty_and_errors():
    logits = np.array([1.0, 3.0, -2.0, 2.5], np.float32)
    assert core.sample(logits.copy(), np.array([], np.int32)) == 1
    # 3.0 / 2 = 1.5 < 2.5: the penalty moves greedy to token 3; negative logits are multiplied.
    row = logits.copy()
    assert core.sample(row, np.array([1, 1, 2], np.int32), repetition_penalty=2.0) == 3
    np.testing.assert_array_equal(row, [1.0, 1.5, -4.0, 2.5])
    with pytest.raises(ValueError, match="temperature must be positive"):
        core.sample(logits.copy(), np.array([], np.int32), True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        core.sample(logits.copy(), np.array([], np.int32), True, top_p=0.0)
    with pytest.raises(ValueError, match="NaN"):
        core.sample(np.full(4, np.nan, np.float32), np.array([], np.int32))


# --------------------------------------------------------------------------------------------------
# Stopping and streaming


def test_eos_stops_generation(qwen2):
    model, lm = qwen2
    prompt = [11, 12, 13]
    greedy = lm.generate(input_ids=prompt, max_new_tokens=30, do_sample=False).token_ids
    eos = greedy[6]
    first = greedy.index(eos)
    saved = lm.eos_token_ids
    lm.eos_token_ids = frozenset([eos])
    try:
        out = lm.generate(input_ids=prompt, max_new_tokens=30, do_sample=False)
    finally:
        lm.eos_token_ids = saved
    assert out.token_ids == greedy[:first + 1] and out.finish_reason == "eos"


def test_stop_strings_cut_the_text(phi3):
    model, lm = phi3
    full = lm.generate("Glaucoma damages", max_new_tokens=40, do_sample=False)
    stop = full.text[15:19]
    assert stop.strip() and full.text.find(stop) >= 0
    out = lm.generate("Glaucoma damages", max_new_tokens=40, do_sample=False, stop=["zzzz-never", stop])
    assert out.finish_reason == "stop"
    assert out.text == full.text[:full.text.find(stop)]
    assert out.token_ids == full.token_ids[:len(out.token_ids)] and len(out.token_ids) < 40
    # Streamed, the text that could start the stop string is held back and never handed out.
    stream = lm.stream("Glaucoma damages", max_new_tokens=40, do_sample=False, stop=stop)
    assert "".join(stream) == out.text
    assert stream.output.finish_reason == "stop"


def test_stream_pieces_concatenate_to_the_text(phi3):
    model, lm = phi3
    pieces = list(lm.generate("The retina", max_new_tokens=48, do_sample=True, seed=4, stream=True))
    out = lm.generate("The retina", max_new_tokens=48, do_sample=True, seed=4)
    # (A random model emits stray UTF-8 bytes, so the text itself may hold U+FFFD: the streamer's
    # handling of split characters is checked on real text below.)
    assert "".join(pieces) == out.text
    assert len(pieces) > 5 and all(pieces)


def test_streamer_holds_back_partial_characters(tmp_path):
    write_tokenizer(str(tmp_path), "qwen2")
    tok = Tokenizer(tmp_path)
    text = "Le fond d'œil 眼底检查 👁️ shows"
    ids = tok.encode(text, add_special_tokens=False)
    streamer = TextStreamer(tok)
    pieces = [streamer.push(i) for i in ids] + [streamer.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert "" in pieces[:-1]  # some token ended inside a character, and nothing was handed out for it
    assert not any("\ufffd" in p for p in pieces)


def test_generate_from_chat_messages_and_embeddings(qwen2):
    model, lm = qwen2
    messages = [{"role": "system", "content": "You are an ophthalmologist."}, {"role": "user", "content": "What is OCT?"}]
    ids = lm.apply_chat_template(messages, tokenize=True)
    by_chat = lm.generate(messages, max_new_tokens=10, do_sample=False)
    by_ids = lm.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    assert by_chat.token_ids == by_ids.token_ids == hf_generate(model, ids, 10)
    # Input embeddings (where image features would be spliced in) give the same tokens.
    by_embeds = lm.generate(inputs_embeds=lm.embed(ids), max_new_tokens=10, do_sample=False)
    assert by_embeds.token_ids == by_ids.token_ids


def test_generate_argument_errors(qwen2):
    model, lm = qwen2
    with pytest.raises(ValueError, match="exactly one"):
        lm.generate("a", input_ids=[1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate("a", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate("a", do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="one prompt"):
        lm.stream(["a", "b"])
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        lm.generate(12)
