"""The decoder's configuration, read from a Hugging Face ``config.json`` the way transformers reads it.

:class:`DecoderConfig` turns a Phi-3 or Qwen2 config (both the transformers 4 spelling, ``rope_scaling``
and top-level ``rope_theta``, and the transformers 5 one, ``rope_parameters``) into the few numbers the C
decoder needs, including LongRoPE's attention factor computed as transformers' ``_compute_longrope_parameters``
does. It also says which tensors a checkpoint must hold, with their shapes, so that a loader can check
them all before uploading any.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

SUPPORTED_MODEL_TYPES = ("phi3", "qwen2")


def _positive_int(cfg: dict, key: str, default=None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ValueError(f"config.json: '{key}' is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json: '{key}' must be a positive integer, not {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str                      # "default" or "longrope"
    short_factor: tuple | None          # LongRoPE: rotary_dim / 2 values each
    long_factor: tuple | None
    original_max_position_embeddings: int | None
    attention_factor: float             # multiplies RoPE's cos and sin
    max_position_embeddings: int
    qkv_bias: bool
    tie_word_embeddings: bool
    sliding_window: int | None          # tokens; None when every layer attends to the whole sequence
    eos_token_id: tuple = ()
    bos_token_id: int | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "DecoderConfig":
        """From a parsed config.json: a Phi-3 / Qwen2 config, or an EyecareGPT one (its ``text_config``)."""
        if not isinstance(cfg, dict):
            raise ValueError("config.json must hold a JSON object")
        if isinstance(cfg.get("text_config"), dict):
            cfg = cfg["text_config"]
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}: eyecare runs 'phi3' (Phi-3, Phi-3.5) and 'qwen2' "
                "(Qwen2, Qwen2.5) decoders"
            )
        hidden = _positive_int(cfg, "hidden_size")
        heads = _positive_int(cfg, "num_attention_heads")
        kv_heads = _positive_int(cfg, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise ValueError(f"config.json: {heads} attention heads cannot share {kv_heads} key/value heads")
        head_dim = cfg.get("head_dim") or hidden // heads
        _positive_int({"head_dim": head_dim}, "head_dim")
        max_pos = _positive_int(cfg, "max_position_embeddings", 4096 if model_type == "phi3" else 32768)

        # transformers 5 keeps RoPE settings in rope_parameters; 4 kept theta at the top and scaling in rope_scaling.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        partial = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
        if model_type == "phi3":
            if rope_type in ("su", "yarn"):  # Phi-3's old names for LongRoPE (transformers renames them)
                rope_type = "longrope"
            if rope_type not in ("default", "longrope"):
                raise ValueError(f"config.json: Phi-3 RoPE type {rope_type!r} is not supported ('default' or 'longrope')")
            rotary_dim = int(head_dim * partial)
        else:
            if rope_type != "default":
                raise ValueError(f"config.json: Qwen2 RoPE type {rope_type!r} is not supported (only 'default')")
            rotary_dim = head_dim  # Qwen2's default RoPE rotates whole heads whatever partial_rotary_factor says
        if rotary_dim < 2 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"config.json: the rotary dimension {rotary_dim} must be even and within the head dimension {head_dim}")

        short = long = original = None
        attention_factor = 1.0
        if rope_type == "longrope":
            # Phi-3 keeps original_max_position_embeddings at the top level, and transformers prefers it there.
            original = cfg.get("original_max_position_embeddings", rope.get("original_max_position_embeddings", 4096))
            original = _positive_int({"original_max_position_embeddings": original}, "original_max_position_embeddings")
            half = rotary_dim // 2
            for key in ("short_factor", "long_factor"):
                values = rope.get(key)
                if not isinstance(values, (list, tuple)) or len(values) != half or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise ValueError(f"config.json: LongRoPE '{key}' must be a list of {half} numbers")
            short, long = tuple(float(v) for v in rope["short_factor"]), tuple(float(v) for v in rope["long_factor"])
            factor = rope.get("factor")
            if factor is None:
                factor = max_pos / original
            attention_factor = rope.get("attention_factor")
            if attention_factor is None:
                attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
            attention_factor = float(attention_factor)

        if model_type == "phi3":
            window = cfg.get("sliding_window")
        else:
            window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
            if window is not None:
                layers = cfg.get("num_hidden_layers", 0)
                types = cfg.get("layer_types") or [
                    "sliding_attention" if i >= cfg.get("max_window_layers", 28) else "full_attention" for i in range(layers)]
                if "sliding_attention" not in types:
                    window = None
        if window is not None:
            window = _positive_int({"sliding_window": window}, "sliding_window")

        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        return cls(
            model_type=model_type,
            vocab_size=_positive_int(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_positive_int(cfg, "intermediate_size"),
            num_hidden_layers=_positive_int(cfg, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rotary_dim=rotary_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5 if model_type == "phi3" else 1e-6)),
            rope_theta=theta,
            rope_type=rope_type,
            short_factor=short,
            long_factor=long,
            original_max_position_embeddings=original,
            attention_factor=attention_factor,
            max_position_embeddings=max_pos,
            qkv_bias=model_type == "qwen2",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=window,
            eos_token_id=eos,
            bos_token_id=cfg.get("bos_token_id"),
        )

    def to_core(self) -> dict:
        """The dict eyecare._core.Decoder takes."""
        return {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rotary_dim": self.rotary_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "short_factor": list(self.short_factor) if self.short_factor else None,
            "long_factor": list(self.long_factor) if self.long_factor else None,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "attention_factor": self.attention_factor,
            "qkv_bias": self.qkv_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "sliding_window": self.sliding_window,
        }

    def checkpoint_tensors(self) -> dict[str, tuple]:
        """The tensors a Hugging Face checkpoint of this model holds (names without a prefix) and their shapes.
        lm_head.weight is left out when the embeddings are tied."""
        D, F, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        out = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
        if not self.tie_word_embeddings:
            out["lm_head.weight"] = (V, D)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = (D,)
            out[p + "post_attention_layernorm.weight"] = (D,)
            out[p + "self_attn.o_proj.weight"] = (D, q)
            out[p + "mlp.down_proj.weight"] = (D, F)
            if self.model_type == "phi3":
                out[p + "self_attn.qkv_proj.weight"] = (q + 2 * kv, D)
                out[p + "mlp.gate_up_proj.weight"] = (2 * F, D)
            else:
                for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                    out[p + f"self_attn.{name}.weight"] = (rows, D)
                    out[p + f"self_attn.{name}.bias"] = (rows,)
                out[p + "mlp.gate_proj.weight"] = (F, D)
                out[p + "mlp.up_proj.weight"] = (F, D)
        return out
