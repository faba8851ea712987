"""Building an EyecareGPT checkpoint directory (its format: docs/architecture.md, 2) from what training code
leaves behind:

(a) the separate Hugging Face checkpoints of the vision tower (a SigLIP model or vision model) and of
    the LLM (Phi-3 or Qwen2), plus a safetensors file of the connector's projector;
(b) a LLaVA-style merged checkpoint (``model.vision_tower.vision_tower.*``, ``model.mm_projector.*``,
    ``model.layers.*``, ``lm_head.*``), as LLaVA-derived training code saves it.

Tensors are copied as stored (bf16 stays bf16) unless ``dtype`` asks for another; tokenizer files come
from the LLM's directory. Every inconsistency (a missing tower layer, a projector whose widths do not
join the tower to the LLM) is reported before anything is written. So is every tensor the converter
does not know what to do with (for example the ``image_newline`` of a LLaVA-NeXT checkpoint): dropping
it would silently make a different model, so conversion stops unless ``ignore_unexpected=True``
(``--ignore-unexpected``). Parts known not to belong to EyecareGPT are left out without asking: SigLIP's
text tower, its logit scale and bias and its attention-pooling head, and the rotary inv_freq buffers
some LLM checkpoints carry (recomputed from the config).

``quantize`` ('int8' or 'int4') writes the LLM's linear layers (and with ``quantize_vision`` the vision
tower's, with ``quantize_lm_head`` the lm_head) as packed integers and float16 scales (eyecare/quantize.py,
docs/quantization.md), one tensor at a time; :func:`convert_checkpoint` re-writes an existing EyecareGPT
checkpoint that way.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from .checkpoint import (CONNECTOR_DEFAULTS, CONNECTOR_PREFIX, LANGUAGE_PREFIX, TOKENIZER_FILES, VISION_PREFIX,
                         connector_tensors, siglip_tensors, write_checkpoint)
from .core import from_bfloat16, to_bfloat16
from .safetensors import LazyTensor, open_safetensors

DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


class ConversionError(ValueError):
    """The inputs cannot make a consistent EyecareGPT checkpoint."""


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _cast(array: np.ndarray, stored: str, dtype: str | None):
    """The tensor as save_safetensors takes it, optionally cast (bf16 travels as uint16 bits)."""
    if dtype is None or DTYPES[dtype] == stored:
        return (array, "BF16") if stored == "BF16" else array
    values = from_bfloat16(array) if stored == "BF16" else array.astype(np.float32)
    if dtype == "bfloat16":
        return (to_bfloat16(values), "BF16")
    return values.astype(np.float16 if dtype == "float16" else np.float32)


def _vision_config(cfg: dict) -> dict:
    """The SiglipVisionConfig part of a SigLIP config.json (a full SiglipConfig nests it)."""
    vision = cfg.get("vision_config", cfg) if cfg.get("model_type") == "siglip" else cfg
    vision = dict(vision)
    vision.setdefault("model_type", "siglip_vision_model")
    return vision


def _check_shapes(found: dict, expected: dict, what: str):
    missing = sorted(set(expected) - set(found))
    wrong = sorted(f"{n}: {tuple(found[n])} instead of {expected[n]}" for n in expected
                   if n in found and tuple(found[n]) != tuple(expected[n]))
    problems = [f"missing {n}" for n in missing[:20]] + wrong[:20]
    if missing[20:] or wrong[20:]:
        problems.append(f"... {len(missing) + len(wrong) - len(problems)} more")
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))


def _eyecare_config(vision: dict, text: dict, connector: dict | None, adaptive: dict | None) -> dict:
    from .processor import DEFAULT_ADAPTIVE_RESOLUTION

    ar = dict(DEFAULT_ADAPTIVE_RESOLUTION)
    tile = vision.get("image_size", ar["tile_size"])
    if tile != ar["tile_size"]:  # the default grids, in tiles, for a tower of another resolution
        base = DEFAULT_ADAPTIVE_RESOLUTION["tile_size"]
        ar["grid_pinpoints"] = [[h // base * tile, w // base * tile] for h, w in ar["grid_pinpoints"]]
    ar["tile_size"] = tile
    ar.update(adaptive or {})
    return {"model_type": "eyecaregpt", "architectures": ["EyecareGPT"], "vision_config": vision, "text_config": text,
            "connector": {**CONNECTOR_DEFAULTS, **(connector or {})}, "adaptive_resolution": ar,
            "image_token": "<image>"}


def _quantized_pair(load, quant, shape) -> tuple:
    """The packed integers and scales of one weight as two LazyTensors sharing one quantization: the first
    of them written quantizes, the second takes the other half and lets it go."""
    from . import quantize as Q

    made = {}

    def part(i):
        if not made:
            array, stored = load()
            made["v"] = Q.quantize(array if stored in ("BF16", "F32", "F16") else array.astype(np.float32), quant.method)
            made["left"] = 2
        value = made["v"][i]
        made["left"] -= 1
        if not made["left"]:
            made.clear()
        return value

    return (LazyTensor(Q.packed_shape(quant.method, *shape), "U8", lambda: part(0)),
            LazyTensor(Q.scales_shape(*shape), "F16", lambda: part(1)))


def _outputs(expected: dict, tensors: dict, dtype, quant) -> dict:
    """name -> what write_checkpoint writes: the tensors as stored (or cast), quantized ones as their pair."""
    from .quantize import stored_names

    out = {}
    for name in sorted(expected):
        if quant is not None and len(expected[name]) == 2 and quant.applies(name):
            packed, scales = stored_names(name)
            out[packed], out[scales] = _quantized_pair(tensors[name], quant, expected[name])
        else:
            out[name] = _cast(*tensors[name](), dtype)
    return out


def _quantization(quantize, quantize_vision, quantize_lm_head):
    from .quantize import Quantization

    if quantize is None:
        if quantize_vision or quantize_lm_head:
            raise ValueError("--quantize-vision / --quantize-lm-head need --quantize int8 or int4")
        return None
    return Quantization(quantize, bool(quantize_vision), bool(quantize_lm_head))


def _refuse_unexpected(names: list, ignore: bool) -> None:
    if names and not ignore:
        shown = ", ".join(names[:40]) + (f" ... and {len(names) - 40} more" if len(names) > 40 else "")
        raise ConversionError(f"{len(names)} tensors that EyecareGPT has no place for: {shown}. Leaving them out would "
                              "make a different model than the one trained; pass ignore_unexpected=True "
                              "(--ignore-unexpected) if you know they are not needed")


def _finish(out_dir, config, tensors, names_to_shapes, token_dir: Path, dtype, shard_bytes, progress,
            unexpected: list, ignore_unexpected: bool, quant=None):
    vision, text = config["vision_config"], config["text_config"]
    expected = siglip_tensors(vision)
    n_groups = len(config["connector"]["groups"])
    proj = connector_tensors(vision["hidden_size"], text["hidden_size"], n_groups)
    found_proj = {n: names_to_shapes[n] for n in proj if n in names_to_shapes}
    if CONNECTOR_PREFIX + "projector.0.weight" in found_proj:
        w0 = found_proj[CONNECTOR_PREFIX + "projector.0.weight"]
        width = (1 + n_groups) * vision["hidden_size"]
        if len(w0) == 2 and w0[1] != width:
            raise ConversionError(f"the projector takes {w0[1]} features but the LDC gives (1 + {n_groups} groups) x "
                                  f"{vision['hidden_size']} = {width} (the feature layer and one mean per group, each "
                                  f"the vision tower's width {vision['hidden_size']}); check --groups")
        if len(w0) == 2 and w0[0] != text["hidden_size"]:
            raise ConversionError(f"the projector gives {w0[0]} features but the LLM is {text['hidden_size']} wide")
    expected.update(proj)
    from .config import DecoderConfig

    expected.update({LANGUAGE_PREFIX + n: s for n, s in DecoderConfig.from_dict(text).checkpoint_tensors().items()})
    _check_shapes(names_to_shapes, expected, "the inputs do not make a complete EyecareGPT checkpoint")
    tied_head = LANGUAGE_PREFIX + "lm_head.weight" if text.get("tie_word_embeddings") else None
    unexpected = sorted(set(unexpected) | {n for n in names_to_shapes if n not in expected and n != tied_head
                                           and not n.endswith("rotary_emb.inv_freq")})
    _refuse_unexpected(unexpected, ignore_unexpected)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = [name for name in TOKENIZER_FILES if (token_dir / name).is_file()]
    if "tokenizer.json" not in copied:
        raise ConversionError(f"{token_dir}: no tokenizer.json (eyecare reads tokenizers with the `tokenizers` library)")
    metadata = None
    if quant is not None:
        config = {**config, "quantization": quant.to_config()}
        metadata = {"quantization": quant.method, "block_size": quant.to_config()["block_size"]}
    arrays = _outputs(expected, tensors, dtype, quant)
    written = write_checkpoint(out, config, arrays, shard_bytes=shard_bytes, progress=progress, metadata=metadata)
    for name in copied:
        shutil.copyfile(token_dir / name, out / name)
    return written


def _opened(ckpt):
    """name -> a function returning (array, stored dtype), and name -> shape."""
    loaders = {n: (lambda n=n: (ckpt.get(n), ckpt.info(n)[0])) for n in ckpt.names()}
    shapes = {n: tuple(ckpt.info(n)[1]) for n in ckpt.names()}
    return loaders, shapes


def convert_parts(vision_dir, llm_dir, connector_file, out_dir, *, connector: dict | None = None,
                  adaptive_resolution: dict | None = None, dtype: str | None = None, shard_bytes: int = 4 << 30,
                  progress=None, ignore_unexpected: bool = False, quantize: str | None = None,
                  quantize_vision: bool = False, quantize_lm_head: bool = False):
    """(a): a Hugging Face SigLIP checkpoint + a Phi-3 / Qwen2 checkpoint + the projector's weights
    (names ``0.weight``, ``2.bias``..., optionally under ``mm_projector.``, ``projector.`` or
    ``connector.projector.``). A tensor that fits nowhere stops the conversion unless ignore_unexpected."""
    vision_dir, llm_dir = Path(vision_dir), Path(llm_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    quant = _quantization(quantize, quantize_vision, quantize_lm_head)
    vision = _vision_config(_json(vision_dir / "config.json"))
    text = _json(llm_dir / "config.json")
    tensors, shapes, unexpected = {}, {}, []
    with open_safetensors(vision_dir) as v, open_safetensors(llm_dir) as l, open_safetensors(connector_file) as c:
        for src, rename, where in ((v, _siglip_name, vision_dir),
                                   (l, lambda n: LANGUAGE_PREFIX + n, llm_dir),
                                   (c, _projector_name, connector_file)):
            loaders, found = _opened(src)
            for name, load in loaders.items():
                new = rename(name)
                if new:
                    tensors[new], shapes[new] = load, found[name]
                elif not (src is v and _siglip_unused(name)):
                    unexpected.append(f"{name} ({Path(where).name})")
        config = _eyecare_config(vision, text, connector, adaptive_resolution)
        return _finish(out_dir, config, tensors, shapes, llm_dir, dtype, shard_bytes, progress, unexpected,
                       ignore_unexpected, quant)


def _siglip_unused(name: str) -> bool:
    """Parts of a SigLIP checkpoint that EyecareGPT does not use by design: the text tower, the contrastive
    logit scale and bias, and the attention-pooling head (the connector reads hidden states instead)."""
    if name.startswith("vision_model."):
        name = name[len("vision_model."):]
    return name.startswith(("text_model.", "head.")) or name in ("logit_scale", "logit_bias")


def _siglip_name(name: str) -> str | None:
    """A SigLIP checkpoint's tensor under vision_tower.vision_model.: SiglipModel and transformers 4 save
    vision_model.*, transformers 5's SiglipVisionModel saves the same names without that prefix. The
    text tower and the attention-pooling head are not part of EyecareGPT."""
    if name.startswith("vision_model."):
        name = name[len("vision_model."):]
    if name.startswith(("embeddings.", "encoder.", "post_layernorm.")):
        return VISION_PREFIX + "vision_model." + name
    return None


def _projector_name(name: str) -> str | None:
    m = re.search(r"(?:^|\.)(?:mm_projector|projector)\.(\d+)\.(weight|bias)$", name) or re.match(r"^(\d+)\.(weight|bias)$", name)
    return f"{CONNECTOR_PREFIX}projector.{m.group(1)}.{m.group(2)}" if m else None


def _llava_name(name: str) -> str | None:
    if name.startswith("model.vision_tower.vision_tower.vision_model."):
        rest = name[len("model.vision_tower.vision_tower."):]
        return None if rest.startswith("vision_model.head.") else VISION_PREFIX + rest
    if name.startswith("model.vision_tower.vision_tower.") or name.startswith("model.image_newline"):
        return None
    if name.startswith("model.mm_projector."):
        return _projector_name(name)
    if name.startswith("model.") or name.startswith("lm_head."):
        return LANGUAGE_PREFIX + name
    return None


def _llava_text_config(cfg: dict, model_type: str | None) -> dict:
    text = {k: v for k, v in cfg.items() if not k.startswith("mm_") and k not in
            ("vision_config", "architectures", "auto_map", "tokenizer_model_max_length", "tokenizer_padding_side",
             "image_aspect_ratio", "image_grid_pinpoints", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter",
             "use_mm_proj", "unfreeze_mm_vision_tower", "mm_vision_tower")}
    if model_type is None:
        declared = str(cfg.get("model_type", "")).lower()
        model_type = "qwen2" if "qwen" in declared else "phi3" if "phi" in declared else None
    if model_type not in ("phi3", "qwen2"):
        raise ConversionError(f"cannot tell the LLM family from model_type {cfg.get('model_type')!r}; "
                              "pass text_model_type='phi3' or 'qwen2'")
    text["model_type"] = model_type
    return text


def convert_llava(llava_dir, out_dir, *, vision_config=None, text_model_type: str | None = None,
                  connector: dict | None = None, adaptive_resolution: dict | None = None, dtype: str | None = None,
                  shard_bytes: int = 4 << 30, progress=None, ignore_unexpected: bool = False,
                  quantize: str | None = None, quantize_vision: bool = False, quantize_lm_head: bool = False):
    """(b): a LLaVA-style merged checkpoint. Its config.json gives the LLM's config (model_type
    llava_phi3 / llava_qwen2 ... or text_model_type), ``mm_vision_select_layer`` the feature layer; the
    SigLIP config comes from its ``vision_config`` or from ``vision_config`` (a dict or a config.json path).
    A tensor that fits nowhere (e.g. ``model.image_newline``) stops the conversion unless ignore_unexpected."""
    llava_dir = Path(llava_dir)
    quant = _quantization(quantize, quantize_vision, quantize_lm_head)
    cfg = _json(llava_dir / "config.json")
    if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(f"projector type {cfg['mm_projector_type']!r} is not mlp2x_gelu, the one EyecareGPT uses")
    if vision_config is None:
        vision_config = cfg.get("vision_config")
    if isinstance(vision_config, (str, Path)):
        vision_config = _json(Path(vision_config))
    if not isinstance(vision_config, dict):
        raise ConversionError(f"{llava_dir / 'config.json'} has no vision_config: pass the SigLIP config.json "
                              "(--vision-config)")
    vision = _vision_config(vision_config)
    text = _llava_text_config(cfg, text_model_type)
    conn = dict(connector or {})
    if "mm_vision_select_layer" in cfg:
        conn.setdefault("feature_layer", cfg["mm_vision_select_layer"])
    tensors, shapes, unexpected = {}, {}, []
    with open_safetensors(llava_dir) as ckpt:
        loaders, found = _opened(ckpt)
        for name, load in loaders.items():
            new = _llava_name(name)
            if new:
                tensors[new], shapes[new] = load, found[name]
            elif not name.startswith("model.vision_tower.vision_tower.") or not _siglip_unused(
                    name[len("model.vision_tower.vision_tower."):]):
                unexpected.append(name)
        config = _eyecare_config(vision, text, conn, adaptive_resolution)
        return _finish(out_dir, config, tensors, shapes, llava_dir, dtype, shard_bytes, progress, unexpected,
                       ignore_unexpected, quant)


def convert_checkpoint(checkpoint_dir, out_dir, *, quantize: str | None = None, quantize_vision: bool = False,
                       quantize_lm_head: bool = False, dtype: str | None = None, shard_bytes: int = 4 << 30,
                       progress=None):
    """An EyecareGPT checkpoint directory re-written: quantized (``quantize``), or cast (``dtype``). Its
    config, connector settings and tokenizer files are kept. A checkpoint already quantized is refused:
    its full-precision weights are gone, so quantize its original instead."""
    from .checkpoint import read_config

    checkpoint_dir = Path(checkpoint_dir)
    if Path(out_dir).resolve() == checkpoint_dir.resolve():
        raise ConversionError(f"{out_dir}: write the converted checkpoint to another directory than its source")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    quant = _quantization(quantize, quantize_vision, quantize_lm_head)
    config = read_config(checkpoint_dir)
    if config.get("quantization") is not None:
        raise ConversionError(f"{checkpoint_dir} is already quantized ({config['quantization'].get('method')}); "
                              "convert its full-precision original")
    with open_safetensors(checkpoint_dir) as ckpt:
        tensors, shapes = _opened(ckpt)
        return _finish(out_dir, config, tensors, shapes, checkpoint_dir, dtype, shard_bytes, progress, [], True, quant)
