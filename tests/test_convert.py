"""The converter: random Hugging Face parts, and a random LLaVA-style merged checkpoint, convert to
checkpoint directories whose answers equal the parts run directly by transformers."""
import json
import shutil

import numpy as np
import pytest
import torch

from eyecare.convert import ConversionError, convert_llava, convert_parts
from eyecare.model import EyecareGPT
from eyecare.safetensors import open_safetensors, save_safetensors
from eyecare.tiny import make_tiny
from reference import IMAGES, Reference, llm_model, siglip_model

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module", params=["phi3", "qwen2"])
def parts(request, tmp_path_factory):
    """A SigLIP tower, an LLM and a projector, each saved as training code leaves them."""
    root = tmp_path_factory.mktemp("parts-" + request.param)
    tiny = make_tiny(root / "tiny", request.param, dtype="float32")  # for its configs and tokenizer
    config = json.loads((tiny / "config.json").read_text())
    torch.manual_seed(0)
    vision, llm = siglip_model(config["vision_config"]), llm_model(config["text_config"])
    vision.save_pretrained(root / "siglip")
    llm.save_pretrained(root / "llm")
    for name in TOKENIZER:
        shutil.copyfile(tiny / name, root / "llm" / name)
    d_vision, d_llm = config["vision_config"]["hidden_size"], config["text_config"]["hidden_size"]
    g = np.random.default_rng(1)
    projector = {"0.weight": g.standard_normal((d_llm, 3 * d_vision)) * 0.1, "0.bias": g.standard_normal(d_llm) * 0.1,
                 "2.weight": g.standard_normal((d_llm, d_llm)) * 0.1, "2.bias": g.standard_normal(d_llm) * 0.1}
    projector = {k: v.astype(np.float32) for k, v in projector.items()}
    save_safetensors({"model.mm_projector." + k: v for k, v in projector.items()}, root / "projector.safetensors")
    ref = Reference(vision, {k: torch.from_numpy(v) for k, v in projector.items()}, llm, config["connector"],
                    config["adaptive_resolution"]["tile_pool"])
    return root, config, ref


def assert_same_answers(out, ref):
    model = EyecareGPT.from_pretrained(out, progress=False)
    try:
        for images in (IMAGES[:1], IMAGES):
            answer = model.chat("Describe.", images=images, max_new_tokens=8)
            want = ref.greedy(model, "Describe.", images, 8)
            assert model.last_output.token_ids == want and answer == model.language.decode(want)
    finally:
        model.close()


def test_hugging_face_parts(parts, tmp_path):
    root, config, ref = parts
    out = tmp_path / "converted"
    convert_parts(root / "siglip", root / "llm", root / "projector.safetensors", out, connector=config["connector"])
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["model_type"] == "eyecaregpt"
    assert_same_answers(out, ref)


def test_siglip_model_naming_and_bf16_cast(parts, tmp_path):
    # A full SiglipModel checkpoint names the tower vision_model.* beside a text_model.* it does not need.
    root, config, ref = parts
    siglip = tmp_path / "siglip-full"
    siglip.mkdir()
    with open_safetensors(root / "siglip") as ckpt:
        tensors = {"vision_model." + n: np.array(ckpt.get(n)) for n in ckpt.names()}
    tensors["text_model.embeddings.token_embedding.weight"] = np.zeros((4, 4), np.float32)
    save_safetensors(tensors, siglip / "model.safetensors")
    shutil.copyfile(root / "siglip" / "config.json", siglip / "config.json")
    out = tmp_path / "bf16"
    convert_parts(siglip, root / "llm", root / "projector.safetensors", out, connector=config["connector"], dtype="bfloat16")
    with open_safetensors(out) as ckpt:
        assert {ckpt.info(n)[0] for n in ckpt.names()} == {"BF16"}
        assert not [n for n in ckpt.names() if "text_model" in n]


def llava_tensors(root):
    """The parts' tensors under the names of a merged LLaVA checkpoint (vision tower prefixed)."""
    tensors = {}
    with open_safetensors(root / "siglip") as v, open_safetensors(root / "llm") as l, \
            open_safetensors(root / "projector.safetensors") as p:
        tensors.update({"model.vision_tower.vision_tower.vision_model." + n: np.array(v.get(n)) for n in v.names()})
        tensors.update({n: np.array(p.get(n)) for n in p.names()})
        tensors.update({n: np.array(l.get(n)) for n in l.names()})
    return tensors


def test_llava_merged_checkpoint(parts, tmp_path):
    root, config, ref = parts
    llava = tmp_path / "llava"
    llava.mkdir()
    tensors = llava_tensors(root)
    # Sharded, as LLaVA training saves big models.
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, members in shards.items():
        save_safetensors({n: tensors[n] for n in members}, llava / file)
    (llava / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, members in shards.items() for n in members}}))
    text = json.loads((root / "llm" / "config.json").read_text())
    family = config["text_config"]["model_type"]
    llava_config = {**text, "model_type": f"llava_{family}", "mm_projector_type": "mlp2x_gelu",
                    "mm_vision_select_layer": config["connector"]["feature_layer"], "mm_vision_tower": "siglip"}
    (llava / "config.json").write_text(json.dumps(llava_config))
    for name in TOKENIZER:
        shutil.copyfile(root / "llm" / name, llava / name)
    out = tmp_path / "from-llava"
    convert_llava(llava, out, vision_config=root / "siglip" / "config.json", connector={"groups": config["connector"]["groups"]})
    assert_same_answers(out, ref)


def projector_weights(d_in, d_llm, seed):
    g = np.random.default_rng(seed)
    w = {"0.weight": g.standard_normal((d_llm, d_in)) * 0.1, "0.bias": g.standard_normal(d_llm) * 0.1,
         "2.weight": g.standard_normal((d_llm, d_llm)) * 0.1, "2.bias": g.standard_normal(d_llm) * 0.1}
    return {k: v.astype(np.float32) for k, v in w.items()}


def test_another_number_of_groups_sizes_the_projector(parts, tmp_path):
    # Three groups: the LDC concatenates the feature layer and three means, so the projector takes 4 x the width.
    root, config, ref = parts
    connector = {"feature_layer": -2, "groups": [[0, 1], [1, 3], [3, 5]]}
    d_vision, d_llm = config["vision_config"]["hidden_size"], config["text_config"]["hidden_size"]
    projector = projector_weights(4 * d_vision, d_llm, 5)
    save_safetensors(projector, tmp_path / "projector4.safetensors")
    out = tmp_path / "three-groups"
    convert_parts(root / "siglip", root / "llm", tmp_path / "projector4.safetensors", out, connector=connector)
    with open_safetensors(out) as ckpt:
        assert ckpt.info("connector.projector.0.weight")[1] == (d_llm, 4 * d_vision)
    three = Reference(ref.vision, {k: torch.from_numpy(v) for k, v in projector.items()}, ref.llm, connector,
                      config["adaptive_resolution"]["tile_pool"])
    assert_same_answers(out, three)
    # The default two groups do not fit that projector: refused with the widths spelled out.
    with pytest.raises(ConversionError, match=r"takes 128 features but the LDC gives \(1 \+ 2 groups\) x 32 = 96"):
        convert_parts(root / "siglip", root / "llm", tmp_path / "projector4.safetensors", tmp_path / "no",
                      connector={"feature_layer": -2, "groups": [[0, 2], [2, 4]]})


def test_tensors_with_no_place_are_refused_unless_asked(parts, tmp_path, capsys):
    from eyecare.cli import main

    root, config, ref = parts
    llava = tmp_path / "llava"
    llava.mkdir()
    tensors = llava_tensors(root)
    d_llm = config["text_config"]["hidden_size"]
    # LLaVA-NeXT's learned separator between tile rows, and something nobody knows.
    tensors["model.image_newline"] = np.ones(d_llm, np.float32)
    tensors["model.layers.0.self_attn.extra_gate"] = np.ones(2, np.float32)
    save_safetensors(tensors, llava / "model.safetensors")
    text = json.loads((root / "llm" / "config.json").read_text())
    (llava / "config.json").write_text(json.dumps({**text, "model_type": f"llava_{config['text_config']['model_type']}"}))
    for name in TOKENIZER:
        shutil.copyfile(root / "llm" / name, llava / name)
    vision_config = root / "siglip" / "config.json"
    with pytest.raises(ConversionError) as err:
        convert_llava(llava, tmp_path / "out", vision_config=vision_config, connector=config["connector"])
    message = str(err.value)
    assert message.startswith("2 tensors that EyecareGPT has no place for: ")
    assert "model.image_newline" in message and "language_model.model.layers.0.self_attn.extra_gate" in message
    assert "--ignore-unexpected" in message and not (tmp_path / "out").exists()
    # The command line says the same and leaves nothing behind; with the flag it converts the rest.
    args = ["convert", str(tmp_path / "cli"), "--llava", str(llava), "--vision-config", str(vision_config),
            "--groups", ",".join(f"{a}:{b}" for a, b in config["connector"]["groups"]),
            "--feature-layer", str(config["connector"]["feature_layer"])]
    assert main(args) == 1
    assert "eyecare convert: error: 2 tensors that EyecareGPT has no place for: " in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    assert main(args + ["--ignore-unexpected"]) == 0
    with open_safetensors(tmp_path / "cli") as ckpt:
        assert not [n for n in ckpt.names() if "image_newline" in n or "extra_gate" in n]
    assert_same_answers(tmp_path / "cli", ref)


def test_inconsistent_shapes_are_refused(parts, tmp_path):
    root, config, ref = parts
    bad = tmp_path / "bad-projector.safetensors"
    with open_safetensors(root / "projector.safetensors") as p:
        tensors = {n: np.array(p.get(n)) for n in p.names()}
    tensors["model.mm_projector.0.weight"] = tensors["model.mm_projector.0.weight"][:, :-1].copy()
    save_safetensors(tensors, bad)
    with pytest.raises(ConversionError, match="projector takes"):
        convert_parts(root / "siglip", root / "llm", bad, tmp_path / "out", connector=config["connector"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="vision_config"):
        llava = tmp_path / "llava-noconfig"
        llava.mkdir()
        (llava / "config.json").write_text(json.dumps({"model_type": "llava_phi3"}))
        convert_llava(llava, tmp_path / "out2")
