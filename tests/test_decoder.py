"""The decoder against transformers' Phi3ForCausalLM and Qwen2ForCausalLM on tiny random configs:
logits of a prefill and of 20 incremental decode steps, batches, input embeddings, the RoPE table, and
the errors of bad checkpoints and over-long prompts.

Tolerances. eyecare computes in f32 (weights read in their stored dtype, every sum accumulated in f32),
so the reference is the transformers model in f32 holding the same stored weights (rounded to bf16 /
f16 first when the checkpoint stores those). The two differ only in the order of f32 sums: observed
differences are ~3e-6 on logits of magnitude ~5, and the tests allow 2e-4 absolute + 2e-4 relative for
every dtype. (A transformers model computing *in* bf16 would differ from both by bf16's own rounding of
every activation, ~1e-2 relative, which would say nothing about eyecare.)

The KV cache. These tests hold it in f32 (kv_cache_dtype="float32"), so the comparison above is exact up to
the order of sums. eyecare's default f16 cache is tested against a transformers model whose cache rounds
keys and values to f16 the same way (F16Cache): keys and values that differ in the last f32 bit can round
to neighbouring f16 values, one f16 ulp (~5e-4 relative), so those tests allow 2e-3 absolute."""
import json
import os

import numpy as np
import pytest
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

import eyecare
from eyecare import LanguageModel
from eyecare.config import DecoderConfig
from tiny_llm import phi3_model, qwen2_model, reference_with_dtype, save_checkpoint, write_tokenizer

TOL = dict(rtol=2e-4, atol=2e-4)
F16_TOL = dict(rtol=2e-4, atol=2e-3)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# transformers 5 calls the KV cache `cache`; 4 called it `past_key_values`.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class F16Cache(DynamicCache):
    """transformers' cache, holding keys and values rounded to f16 (round to nearest even) as eyecare's
    default cache does; attention then reads the rounded values, for the new tokens too."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states.half().float(), value_states.half().float(), layer_idx, *args, **kwargs)


def load(path, **kwargs):
    """The model with an f32 KV cache: its logits match transformers' to the order of f32 sums."""
    return LanguageModel.from_pretrained(path, kv_cache_dtype="float32", **kwargs)


def hf_logits(model, ids, steps, cache=None):
    """transformers' logits for a prefill of `ids`, then one decode step per token in `steps`."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True, **({CACHE: cache} if cache is not None else {}))
        cache, logits = getattr(out, CACHE), [out.logits[0].numpy()]
        for t in steps:
            out = model(torch.tensor([[t]]), use_cache=True, **{CACHE: cache})
            cache = getattr(out, CACHE)
            logits.append(out.logits[0, -1].numpy())
    return logits


def check_prefill_and_decode(lm, model, prompt_len, steps=20, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, prompt_len).tolist()
    nxt = rng.integers(0, model.config.vocab_size, steps).tolist()
    f16 = lm.kv_cache_dtype == "float16"
    want = hf_logits(model, ids, nxt, F16Cache(config=model.config) if f16 else None)
    tol = F16_TOL if f16 else TOL
    got = lm.forward(input_ids=ids)
    assert got.shape == (prompt_len, model.config.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[0], **tol)
    for i, t in enumerate(nxt):
        got = lm.forward(input_ids=[t], use_cache=True)
        np.testing.assert_allclose(got[0], want[i + 1], **tol, err_msg=f"decode step {i}")
    assert lm.cache_length() == prompt_len + steps


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    model = phi3_model(seed=0)
    d = str(tmp_path_factory.mktemp("phi3"))
    save_checkpoint(model, d)
    write_tokenizer(d, "phi3")
    return model, d


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    model = qwen2_model(seed=0)
    d = str(tmp_path_factory.mktemp("qwen2"))
    save_checkpoint(model, d)
    write_tokenizer(d, "qwen2")
    return model, d


# --------------------------------------------------------------------------------------------------
# Logits against transformers


@pytest.mark.parametrize("prompt_len", [10, 24])
def test_phi3_prefill_and_decode_match_transformers(phi3, prompt_len):
    # original_max_position_embeddings is 16: a 10-token prompt starts on the short factors and its
    # decode steps cross over to the long ones; a 24-token prompt is prefilled with the long factors,
    # in three chunks of 8 tokens.
    model, d = phi3
    lm = load(d, max_context=64, prefill_chunk=8)
    check_prefill_and_decode(lm, model, prompt_len)


@pytest.mark.parametrize("kind,prompt_len", [("phi3", 10), ("phi3", 24), ("qwen2", 21)])
def test_f16_cache_matches_transformers_with_its_cache_rounded_to_f16(request, kind, prompt_len):
    # The default cache; decode runs split-K attention (Qwen2: 7 query heads per KV head).
    model, d = request.getfixturevalue(kind)
    lm = LanguageModel.from_pretrained(d, max_context=64, prefill_chunk=8)
    assert lm.kv_cache_dtype == "float16"
    check_prefill_and_decode(lm, model, prompt_len)


def test_f16_cache_differs_from_an_f32_reference(phi3):
    # The rounding the f16 tests account for is real: against transformers' f32 cache the logits differ by more
    # than the f32 tolerance, and the f32-cache model does not.
    model, d = phi3
    ids = np.random.default_rng(3).integers(0, 320, 24).tolist()
    want = hf_logits(model, ids, [])[0]
    f16 = LanguageModel.from_pretrained(d, max_context=32).forward(input_ids=ids)
    f32 = load(d, max_context=32).forward(input_ids=ids)
    assert np.abs(f16 - want).max() > TOL["atol"]
    np.testing.assert_allclose(f32, want, **TOL)


def test_kv_cache_dtype_is_checked(phi3):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LanguageModel.from_pretrained(phi3[1], max_context=8, kv_cache_dtype="bfloat16")


def test_qwen2_prefill_and_decode_match_transformers(qwen2):
    model, d = qwen2
    lm = load(d, max_context=64, prefill_chunk=16)
    check_prefill_and_decode(lm, model, 21)


@pytest.mark.parametrize("kind,dtype", [("phi3", "bfloat16"), ("qwen2", "bfloat16"), ("qwen2", "float16")])
def test_stored_dtypes_are_read_as_stored(tmp_path, kind, dtype):
    model = phi3_model(seed=2) if kind == "phi3" else qwen2_model(seed=2)
    save_checkpoint(model, str(tmp_path), dtype=DTYPES[dtype])
    lm = load(tmp_path, max_context=48)
    assert lm._weights["model.embed_tokens.weight"].dtype == dtype
    check_prefill_and_decode(lm, reference_with_dtype(model, DTYPES[dtype]), 18, steps=8)


def test_tied_embeddings_and_partial_rotary(tmp_path):
    # Phi-3 with a partial rotary factor (only the first half of each head rotates) and no long factors.
    model = phi3_model(seed=3, tie_word_embeddings=True, partial_rotary_factor=0.5, rope_scaling=None)
    save_checkpoint(model, str(tmp_path))
    lm = load(tmp_path, max_context=40)
    assert lm.config.rotary_dim == 8 and lm.config.tie_word_embeddings
    check_prefill_and_decode(lm, model, 12, steps=6)


def test_eyecaregpt_checkpoint_with_prefix(tmp_path):
    # An EyecareGPT directory: the LLM config as text_config, its tensors under language_model., and
    # tensors of the other parts beside them.
    model = qwen2_model(seed=4)
    extra = {"vision_tower.vision_model.post_layernorm.weight": torch.ones(8),
             "connector.projector.0.weight": torch.ones(4, 8)}
    save_checkpoint(model, str(tmp_path), prefix="language_model.", text_config_only=True, extra_tensors=extra)
    lm = load(tmp_path, max_context=32)
    check_prefill_and_decode(lm, model, 9, steps=4)


def test_batched_forward_matches_each_sequence(qwen2):
    model, d = qwen2
    lm = load(d, max_context=40, max_batch=3, prefill_chunk=16)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 320, (3, 11))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    got = lm.forward(input_ids=ids)
    assert got.shape == (3, 11, 320)
    np.testing.assert_allclose(got, want, **TOL)
    # One decode step for the three sequences together.
    step = rng.integers(0, 320, (3, 1))
    with torch.no_grad():
        want = model(torch.tensor(np.concatenate([ids, step], axis=1))).logits[:, -1].numpy()
    np.testing.assert_allclose(lm.forward(input_ids=step, use_cache=True)[:, 0], want, **TOL)


def test_sequences_of_different_lengths_decode_together(phi3):
    # Each sequence is prefilled on its own, then decode steps run all of them in one pass.
    model, d = phi3
    lm = load(d, max_context=40, max_batch=2)
    dec = lm._decoder
    rng = np.random.default_rng(6)
    prompts = [rng.integers(0, 320, n).tolist() for n in (5, 13)]
    for b, p in enumerate(prompts):
        dec.set_length(b, 0)
        dec.forward(np.array([p], dtype=np.int32), None, b, "none")
    steps = rng.integers(0, 320, (4, 2))
    wants = [hf_logits(model, p, steps[:, b].tolist())[1:] for b, p in enumerate(prompts)]
    for i in range(4):
        got = dec.forward(steps[i][:, None].astype(np.int32), None, 0, "last")
        for b in range(2):
            np.testing.assert_allclose(got[b], wants[b][i], **TOL, err_msg=f"sequence {b}, step {i}")
    assert [dec.length(b) for b in range(2)] == [9, 17]


def test_inputs_embeds_and_logits_to_keep(phi3):
    model, d = phi3
    lm = load(d, max_context=32, prefill_chunk=8)
    ids = np.random.default_rng(7).integers(0, 320, 12)
    emb = lm.embed(ids)
    np.testing.assert_array_equal(emb, model.model.embed_tokens.weight[torch.tensor(ids)].detach().numpy())
    emb[3] += 0.5  # e.g. image features spliced in
    with torch.no_grad():
        want = model(inputs_embeds=torch.tensor(emb[None])).logits[0].numpy()
    np.testing.assert_allclose(lm.forward(inputs_embeds=emb), want, **TOL)
    last = lm.forward(inputs_embeds=emb, logits_to_keep=1)
    assert last.shape == (1, 320)
    np.testing.assert_allclose(last[0], want[-1], **TOL)
    np.testing.assert_allclose(lm.forward(inputs_embeds=emb, logits_to_keep=3), want[-3:], **TOL)


def test_rope_table_matches_transformers(phi3):
    model, d = phi3
    lm = load(d, max_context=8)
    rotary = model.model.rotary_emb
    # transformers picks the factors from max(position_ids) + 1: short up to 16 positions, long beyond.
    for use_long, positions in ((False, [0, 1, 5, 9, 15]), (True, [0, 1, 5, 15, 16, 17, 100, 255])):
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.tensor([positions]))
        half = cos.shape[-1] // 2
        want = torch.cat([cos[0, :, :half], sin[0, :, :half]], dim=-1).numpy()
        got = lm._decoder.rope_table(np.array(positions), use_long)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Configs and errors


def test_config_reads_longrope_like_transformers(phi3):
    model, d = phi3
    with open(os.path.join(d, "config.json")) as f:
        cfg = DecoderConfig.from_dict(json.load(f))
    assert cfg.rope_type == "longrope" and cfg.original_max_position_embeddings == 16
    # factor = 256 / 16: attention factor sqrt(1 + ln 16 / ln 16) = sqrt 2
    assert cfg.attention_factor == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-12)
    assert cfg.attention_factor == pytest.approx(2 ** 0.5)


def test_unsupported_model_type_is_rejected(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "llama", "hidden_size": 64}, f)
    with pytest.raises(ValueError, match="unsupported model_type 'llama'.*phi3.*qwen2"):
        LanguageModel.from_pretrained(tmp_path)


def test_missing_misshapen_and_unexpected_tensors_are_all_reported(tmp_path):
    model = qwen2_model(seed=8)
    bad = {"model.layers.1.mlp.up_proj.weight": torch.zeros(128, 111), "model.layers.0.self_attn.extra.weight": torch.zeros(2)}
    save_checkpoint(model, str(tmp_path), drop=("model.layers.0.self_attn.k_proj.bias", "model.norm.weight",
                                                "model.layers.1.mlp.up_proj.weight"), extra_tensors=bad)
    with pytest.raises(eyecare.FormatError) as e:
        LanguageModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "2 missing: model.layers.0.self_attn.k_proj.bias, model.norm.weight" in msg
    assert "1 misshapen: model.layers.1.mlp.up_proj.weight [128, 111] (expected [128, 112])" in msg
    assert "1 unexpected: model.layers.0.self_attn.extra.weight" in msg
    assert isinstance(e.value, ValueError)


def test_the_core_checks_weights_too(phi3):
    # The C decoder checks what it is given, whoever calls it: every problem in one message.
    model, d = phi3
    lm = load(d, max_context=8)
    weights = dict(lm._weights)
    weights.pop("model.norm.weight")
    weights["model.layers.0.mlp.down_proj.weight"] = weights["model.layers.1.mlp.gate_up_proj.weight"]
    weights["surprise"] = weights["lm_head.weight"]
    with pytest.raises(eyecare.FormatError, match="3 problems") as e:
        eyecare._core.decoder_type()(lm.config.to_core(), weights, 8)
    for part in ("unexpected surprise", "model.layers.0.mlp.down_proj.weight is [192, 64], expected [64, 96]",
                 "missing model.norm.weight"):
        assert part in str(e.value)


def test_prompt_longer_than_the_cache_is_refused(phi3):
    model, d = phi3
    lm = load(d, max_context=16, prefill_chunk=8)
    with pytest.raises(ValueError, match=r"20 tokens.*capacity of 16 \(max_context\)"):
        lm.forward(input_ids=list(range(20)))
    lm.forward(input_ids=list(range(16)))  # a full cache is fine
    with pytest.raises(ValueError, match=r"17 tokens \(16 cached \+ 1 new\)"):
        lm.forward(input_ids=[5], use_cache=True)
    assert lm.cache_length() == 16  # a refused step changes nothing
    with pytest.raises(ValueError, match="max_context=16"):
        lm.generate(input_ids=list(range(10)), max_new_tokens=8)


def test_bad_calls_raise_clear_errors(phi3):
    model, d = phi3
    lm = load(d, max_context=16)
    with pytest.raises(ValueError, match="max_batch=1"):
        lm.forward(input_ids=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="0..319"):
        lm.forward(input_ids=[1, 320])
    with pytest.raises(ValueError, match="exactly one"):
        lm.forward()
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[T, 64\]"):
        lm.forward(inputs_embeds=np.zeros((3, 63), np.float32))
    lm._weights["model.norm.weight"].free()
    with pytest.raises(ValueError, match="model.norm.weight' was freed"):
        lm.forward(input_ids=[1, 2])


def test_sliding_window_limit(tmp_path):
    model = phi3_model(seed=9, sliding_window=12)
    save_checkpoint(model, str(tmp_path))
    lm = load(tmp_path, max_context=32)
    check_prefill_and_decode(lm, model, 10, steps=2)  # within the window attention is exact
    with pytest.raises(ValueError, match="sliding attention window of 12"):
        lm.forward(input_ids=[4], use_cache=True)


def test_device_choice_and_close(phi3):
    model, d = phi3
    name = eyecare.device_info()["name"]
    with load(d, max_context=8, device=name.split()[0]) as lm:
        assert lm.forward(input_ids=[1, 2]).shape == (2, 320)
    with pytest.raises(ValueError, match="closed"):
        lm.forward(input_ids=[1])
    with pytest.raises(ValueError, match="already runs on"):
        load(d, device="no-such-device")


def test_mixed_dtypes_within_a_fused_projection(tmp_path):
    # Qwen2's q/k/v are fused on loading; when they are stored in different dtypes they are widened to f32.
    from safetensors.torch import save_file

    model = qwen2_model(seed=12)
    save_checkpoint(model, str(tmp_path))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k in state:
        if ".k_proj." in k or ".up_proj." in k:
            state[k] = state[k].to(torch.bfloat16)
    save_file(state, str(tmp_path / "model.safetensors"))
    ref = reference_with_dtype(model, torch.float32)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".k_proj." in name or ".up_proj." in name:
                p.copy_(p.to(torch.bfloat16).float())
    lm = load(tmp_path, max_context=24)
    assert lm._weights["model.layers.0.self_attn.qkv_proj.weight"].dtype == "float32"
    check_prefill_and_decode(lm, ref, 7, steps=3)
