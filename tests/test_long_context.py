"""Long contexts against transformers, at small widths: Phi-3 past its original_max_position_embeddings of 4096
(Phi-3.5-mini's real value), where LongRoPE switches from the short to the long factors, and the cache built with
the short ones is recomputed (from token ids, and from input embeddings); Qwen2 attention over ~700 keys."""
import numpy as np
import pytest
import torch

from eyecare import LanguageModel
from tiny_llm import phi3_model, qwen2_model, save_checkpoint

TOL = dict(rtol=2e-4, atol=2e-4)
ORIGINAL = 4096


def hf_generate(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def hf_last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    model = phi3_model(seed=20, num_hidden_layers=1, original_max_position_embeddings=ORIGINAL,
                       max_position_embeddings=131072, eos_token_id=None)
    d = str(tmp_path_factory.mktemp("phi3long"))
    save_checkpoint(model, d)
    with LanguageModel.from_pretrained(d, max_context=ORIGINAL + 40) as lm:
        yield model, lm


@pytest.mark.parametrize("prompt_len", [ORIGINAL - 6, ORIGINAL + 20], ids=["crosses-while-decoding", "starts-long"])
def test_phi3_longrope_switch_equals_transformers(phi3, prompt_len):
    # 4090 tokens: prefilled with the short factors; the 7th new token takes the sequence past 4096, where both
    # recompute the whole cache with the long factors. 4116 tokens: long factors from the start.
    model, lm = phi3
    ids = np.random.default_rng(prompt_len).integers(0, model.config.vocab_size, prompt_len).tolist()
    np.testing.assert_allclose(lm.forward(input_ids=ids, logits_to_keep=1)[0], hf_last_logits(model, ids), **TOL)
    want = hf_generate(model, ids, 12)
    out = lm.generate(input_ids=ids, max_new_tokens=12)
    assert out.token_ids == want
    if prompt_len < ORIGINAL:
        # The recompute from input embeddings (the path an image prompt takes) gives the same tokens.
        embeds = model.get_input_embeddings().weight.detach().numpy()[ids]
        assert lm.generate(inputs_embeds=embeds, max_new_tokens=12).token_ids == want
        # Without the recompute, the answer would differ: the test can tell the two apart.
        lm.forward(input_ids=ids + want[:ORIGINAL - prompt_len])
        stale = lm.forward(input_ids=want[ORIGINAL - prompt_len:ORIGINAL - prompt_len + 1], use_cache=True)[0]
        fresh = hf_last_logits(model, ids + want[:ORIGINAL - prompt_len + 1])
        assert np.abs(stale - fresh).max() > 1e-2


def test_qwen2_attention_over_700_keys_equals_transformers(tmp_path):
    model = qwen2_model(seed=21, max_position_embeddings=1024, eos_token_id=None)
    save_checkpoint(model, str(tmp_path))
    ids = np.random.default_rng(21).integers(0, model.config.vocab_size, 700).tolist()
    with LanguageModel.from_pretrained(str(tmp_path), max_context=720) as lm:
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(lm.forward(input_ids=ids), want, **TOL)
        assert lm.generate(input_ids=ids, max_new_tokens=10).token_ids == hf_generate(model, ids, 10)
