"""A reference EyecareGPT assembled from transformers and torch (shared by the end-to-end and converter
tests): SiglipVisionModel, the LDC / projector / tile pooling (docs/architecture.md 1.2-1.3) in torch, and
Phi3ForCausalLM / Qwen2ForCausalLM fed inputs_embeds."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from eyecare.core import from_bfloat16
from eyecare.safetensors import open_safetensors

IMAGES = ["examples/bench/images/fundus.png", "examples/bench/images/oct.png"]


def load_state(path, prefix):
    out = {}
    with open_safetensors(path) as ckpt:
        for name in ckpt.names():
            if name.startswith(prefix):
                dtype, _ = ckpt.info(name)
                a = ckpt.get(name)
                a = from_bfloat16(a) if dtype == "BF16" else np.asarray(a, dtype=np.float32)
                out[name[len(prefix):]] = torch.from_numpy(np.array(a, dtype=np.float32))
    return out


def siglip_model(vision_config: dict):
    v = {k: val for k, val in vision_config.items() if k != "model_type"}
    return SiglipVisionModel(SiglipVisionConfig(**v, vision_use_head=False)).eval()


def llm_model(text_config: dict):
    t = dict(text_config)
    cls, cfg_cls = (Phi3ForCausalLM, Phi3Config) if t["model_type"] == "phi3" else (Qwen2ForCausalLM, Qwen2Config)
    t.pop("model_type")
    return cls(cfg_cls(**t)).eval()


class Reference:
    """The same computation by transformers and torch, in float32: a SiglipVisionModel, the projector's
    weights {"0.weight", "0.bias", "2.weight", "2.bias"}, a Phi3/Qwen2ForCausalLM."""

    def __init__(self, vision, projector: dict, llm, connector: dict, tile_pool: int):
        self.vision, self.llm = vision, llm
        self.p0 = (projector["0.weight"], projector["0.bias"])
        self.p2 = (projector["2.weight"], projector["2.bias"])
        self.connector, self.tile_pool = connector, tile_pool

    @classmethod
    def from_checkpoint(cls, path, config):
        """From an EyecareGPT checkpoint directory's weights."""
        vision = siglip_model(config["vision_config"])
        # transformers 4 names SiglipVisionModel's parameters vision_model.*, transformers 5 without it.
        inner = "" if any(k.startswith("vision_model.") for k in vision.state_dict()) else "vision_model."
        missing, _ = vision.load_state_dict(load_state(path, "vision_tower." + inner), strict=False)
        assert not [m for m in missing if "position_ids" not in m], missing
        llm = llm_model(config["text_config"])
        missing, _ = llm.load_state_dict(load_state(path, "language_model."), strict=False)
        assert not [m for m in missing if "rotary" not in m], missing
        return cls(vision, load_state(path, "connector.projector."), llm, config["connector"],
                   config["adaptive_resolution"]["tile_pool"])

    @torch.no_grad()
    def image_tokens(self, pixels, grids):
        hs = self.vision(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
        parts = [hs[self.connector["feature_layer"]]] + [torch.stack(hs[a:b]).mean(0) for a, b in self.connector["groups"]]
        x = F.linear(torch.cat(parts, -1), *self.p0)
        y = F.linear(F.gelu(x), *self.p2)
        G = math.isqrt(y.shape[1])
        side = -(-G // self.tile_pool)
        out, v = [], 0
        for rows, cols in grids:
            tokens = [y[v]]
            v += 1
            for _ in range(rows * cols):
                grid = y[v].T.reshape(1, -1, G, G)
                tokens.append(F.adaptive_avg_pool2d(grid, side).reshape(y.shape[-1], side * side).T)
                v += 1
            out.append(torch.cat(tokens))
        return out

    @torch.no_grad()
    def greedy(self, model, question, images, max_new_tokens, prompt=None):
        """Greedy token ids from transformers' generate on the spliced embeddings of `prompt` (default:
        the model's rendering of `question`, checked against transformers' chat template elsewhere)."""
        inputs = model.processor(images)
        tokens = self.image_tokens(inputs["pixel_values"], inputs["image_grids"]) if images else []
        prompt = model.build_prompt(question, images) if prompt is None else prompt
        pieces = prompt.split("<image>")
        embed = self.llm.get_input_embeddings()
        parts = []
        for i, text in enumerate(pieces):
            ids = model.language.encode(text, add_special_tokens=(i == 0)) if text or i == 0 else []
            if len(ids):
                parts.append(embed(torch.tensor(ids)))
            if i < len(tokens):
                parts.append(tokens[i])
        embeds = torch.cat(parts)[None]
        eos = model.language.eos_token_ids
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos),
                                pad_token_id=sorted(eos)[0])
        return out[0].tolist()
