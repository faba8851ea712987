"""EyecareGPT end to end on tiny random checkpoints (both LLM families), against a reference assembled
from transformers: SiglipVisionModel + the LDC/projector/pooling in torch + Phi3ForCausalLM /
Qwen2ForCausalLM fed inputs_embeds. Greedy answers must be the same tokens."""
import numpy as np
import pytest

import eyecare
from eyecare.model import EyecareGPT
from eyecare.safetensors import open_safetensors
from eyecare.tiny import make_tiny
from reference import IMAGES, Reference


@pytest.fixture(scope="module", params=["phi3", "qwen2"])
def tiny(request, tmp_path_factory):
    path = make_tiny(tmp_path_factory.mktemp(request.param), request.param, dtype="float32", seed=3)
    model = EyecareGPT.from_pretrained(path, progress=False)
    yield path, model, Reference.from_checkpoint(path, model.config)
    model.close()


@pytest.mark.parametrize("images", [IMAGES[:1], IMAGES, []], ids=["one image", "two images", "text only"])
def test_greedy_chat_equals_transformers(tiny, images):
    path, model, ref = tiny
    question = "Describe the findings." if len(images) < 2 else "Compare <image> with <image>."
    answer = model.chat(question, images=images, max_new_tokens=12)
    want = ref.greedy(model, question, images, 12)
    got = model.last_output.token_ids
    assert got == want[:len(got)] and (len(got) == len(want) or want[len(got)] in model.language.eos_token_ids), (got, want)
    assert answer == model.language.decode(got)
    t = model.timings
    assert t["tokens"] == len(got) and t["vision_ms"] >= 0 and t["prefill_ms"] > 0 and t["prompt_tokens"] > 0


def test_image_tokens_equal_the_reference(tiny):
    path, model, ref = tiny
    got = model.encode_images(IMAGES)
    inputs = model.processor(IMAGES)
    want = ref.image_tokens(inputs["pixel_values"], inputs["image_grids"])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-4)


def test_streaming_gives_the_same_answer(tiny):
    path, model, ref = tiny
    whole = model.chat("What do you see?", images=IMAGES[:1], max_new_tokens=10)
    pieces = list(model.chat("What do you see?", images=IMAGES[:1], max_new_tokens=10, stream=True))
    assert "".join(pieces) == whole


def test_history_and_system_render_into_the_prompt(tiny):
    from transformers import AutoTokenizer

    path, model, ref = tiny
    hf = AutoTokenizer.from_pretrained(str(path))
    history = [("Hello", "Hi there"), {"role": "user", "content": "<image>\nLook."},
               {"role": "assistant", "content": "A fundus."}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there"}, *history[1:], {"role": "user", "content": "And now?"}]
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = model.build_prompt("And now?", [], history=history, system="Be brief.")
    assert prompt == want and "Be brief." in prompt
    no_system = hf.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True)
    assert model.build_prompt("And now?", [], history=history) == no_system
    # The answer is the one transformers gives for that prompt (its one image placeholder spliced in).
    answer = model.chat("And now?", images=IMAGES[:1], history=[("Hello", "Hi there")], system="Be brief.",
                        max_new_tokens=6)
    want_prompt = hf.apply_chat_template(messages[:3] + [{"role": "user", "content": "<image>\nAnd now?"}],
                                         tokenize=False, add_generation_prompt=True)
    want_ids = ref.greedy(model, None, IMAGES[:1], 6, prompt=want_prompt)
    assert model.last_output.token_ids == want_ids
    assert answer == model.language.decode(want_ids)


def test_batched_generate_equals_one_by_one(tiny):
    path, model, ref = tiny
    requests = [{"question": "Describe.", "images": IMAGES[:1]}, "Is the retina attached?"]
    alone, outputs = [], []
    for q, images in (("Describe.", IMAGES[:1]), ("Is the retina attached?", [])):
        alone.append(model.chat(q, images=images, max_new_tokens=6))
        outputs.append(model.last_output)
    together = model.generate(requests, max_new_tokens=6)
    assert together == alone
    # This call's own figures, not the last chat's.
    assert [o.token_ids for o in model.last_output] == [o.token_ids for o in outputs]
    t = model.timings
    assert t["requests"] == 2 and t["tokens"] == sum(len(o.token_ids) for o in outputs)
    assert t["prompt_tokens"] == sum(o.prompt_tokens for o in outputs) and t["vision_ms"] > 0


def test_generate_has_the_defaults_of_chat():
    import inspect

    chat, generate = (inspect.signature(f).parameters for f in (EyecareGPT.chat, EyecareGPT.generate))
    shared = [n for n in generate if n not in ("self", "requests")]
    assert shared and {n: generate[n].default for n in shared} == {n: chat[n].default for n in shared}
    assert generate["max_new_tokens"].default == 512


def test_placeholder_count_must_match_images(tiny):
    path, model, ref = tiny
    with pytest.raises(ValueError, match="placeholders"):
        model.chat("<image> and <image>", images=IMAGES[:1])


def test_missing_and_misshapen_tensors_are_named_at_once(tmp_path):
    from eyecare.safetensors import save_safetensors

    path = make_tiny(tmp_path / "m", "qwen2", dtype="float32")
    with open_safetensors(path) as ckpt:
        tensors = {n: np.array(ckpt.get(n)) for n in ckpt.names()}
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    del tensors["vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias"]
    tensors["connector.projector.2.weight"] = tensors["connector.projector.2.weight"][:, :5].copy()
    tensors["extra.weight"] = np.zeros(3, np.float32)
    save_safetensors(tensors, path / "model.safetensors")
    with pytest.raises(eyecare.FormatError) as err:
        EyecareGPT.from_pretrained(path, progress=False)
    text = str(err.value)
    for name in ("layers.1.mlp.up_proj.weight", "layers.0.mlp.fc1.bias", "projector.2.weight", "extra.weight"):
        assert name in text


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        EyecareGPT.from_pretrained(tmp_path, progress=False)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="eyecaregpt"):
        EyecareGPT.from_pretrained(tmp_path, progress=False)
