"""Weight-only quantization: int8 and int4 blocks of 32 weights with one float16 scale each.

Formats (docs/quantization.md): each row of a linear layer's weight W [N, K] is cut into blocks of 32
weights along K (the last block zero-padded when K is not a multiple of 32); a block is 32 integers q and
one float16 scale d, and its weights are d * q.

- int8: q in -127..127, d = max|w| / 127 (rounded to float16), one byte per q.
- int4: q in -8..7, two q per byte: q[2j] in the low nibble of byte j and q[2j+1] in the high one, each as
  a 4-bit two's complement. The format's scale is d = w_m / -8, w_m the block's weight of largest magnitude
  (it maps to -8 exactly, using the range in full); the quantizer also tries w_m / -8.5 and the
  least-squares refit of both, and keeps the scale with the least squared error.

q is rounded from w / d with the float16 scale actually stored, so d * q is the nearest value the block
can hold with that scale. Activations and accumulation stay float32; the kernels (shaders/matvec_q.comp, matmul_q.comp)
read the packed integers and scales as stored and dequantize in registers.

Which weights: the language model's linear layers (q/k/v/o, gate/up/down) always; the lm_head and the
vision tower's linear layers (q/k/v/out, fc1/fc2) on request. Embeddings, norms, biases, the patch
embedding and the connector stay as stored.

A quantized weight ``P.weight`` is stored in a checkpoint as ``P.qweight`` (U8 [N, blocks x 32] for
int8, [N, blocks x 16] for int4) and ``P.scales`` (F16 [N, blocks]); config.json's ``quantization``
says which method and which weights. Quantizing works on a few rows at a time, so a tensor never has a
float32 copy in memory, and loaders quantize one tensor at a time.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from .core import from_bfloat16

BLOCK = 32
METHODS = ("int8", "int4")
_BYTES_PER_BLOCK = {"int8": BLOCK, "int4": BLOCK // 2}
_QMAX = {"int8": 127, "int4": 7}
_F16_MAX = float(np.finfo(np.float16).max)

# Linear layers by the suffix of their checkpoint name (with or without the EyecareGPT prefixes).
_LLM_LINEAR = re.compile(r"(?:^|\.)model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o|qkv)_proj|mlp\.(?:gate|up|down|gate_up)_proj)\.weight$")
_LM_HEAD = re.compile(r"(?:^|\.)lm_head\.weight$")
_VISION_LINEAR = re.compile(r"(?:^|\.)encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])\.weight$")


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r}: expected 'int8' or 'int4'")
    return method


def blocks(k: int) -> int:
    return -(-int(k) // BLOCK)


def packed_shape(method: str, n: int, k: int) -> tuple[int, int]:
    """Shape of the packed integers (uint8) of an [n, k] weight."""
    return int(n), blocks(k) * _BYTES_PER_BLOCK[_check_method(method)]


def scales_shape(n: int, k: int) -> tuple[int, int]:
    return int(n), blocks(k)


def quantized_nbytes(method: str, n: int, k: int) -> int:
    """Bytes of an [n, k] weight quantized: packed integers + float16 scales."""
    return int(np.prod(packed_shape(method, n, k))) + 2 * int(np.prod(scales_shape(n, k)))


@dataclasses.dataclass(frozen=True)
class Quantization:
    """What a model is quantized with: the method and which optional weights it covers."""
    method: str
    vision: bool = False
    lm_head: bool = False

    def __post_init__(self):
        _check_method(self.method)

    def applies(self, name: str) -> bool:
        """Whether the weight of this checkpoint name is quantized."""
        if _LLM_LINEAR.search(name):
            return True
        if _LM_HEAD.search(name):
            return self.lm_head
        return self.vision and bool(_VISION_LINEAR.search(name))

    def to_config(self) -> dict:
        return {"method": self.method, "block_size": BLOCK, "vision": self.vision, "lm_head": self.lm_head}

    @classmethod
    def from_config(cls, config: dict | None) -> "Quantization | None":
        """The ``quantization`` entry of a config.json (None when there is none); FormatError when malformed."""
        from ._core import FormatError

        q = (config or {}).get("quantization")
        if q is None:
            return None
        if not isinstance(q, dict) or q.get("method") not in METHODS or q.get("block_size", BLOCK) != BLOCK \
                or not isinstance(q.get("vision", False), bool) or not isinstance(q.get("lm_head", False), bool):
            raise FormatError(f"config.json: quantization {q!r} is not {{'method': 'int8' or 'int4', 'block_size': {BLOCK}, "
                              "'vision': bool, 'lm_head': bool}")
        return cls(q["method"], q.get("vision", False), q.get("lm_head", False))


def stored_names(name: str) -> tuple[str, str]:
    """The checkpoint names of a quantized weight's packed integers and scales."""
    base = name[:-len(".weight")] if name.endswith(".weight") else name
    return base + ".qweight", base + ".scales"


def expected_tensors(expected: dict, quant: "Quantization | None") -> dict:
    """name -> (shape, dtype or None) of a checkpoint whose weights ``expected`` (name -> shape) are stored
    quantized by ``quant``: each quantized [N, K] weight becomes its packed integers (U8) and scales (F16)."""
    out = {}
    for name, shape in expected.items():
        if quant is not None and len(shape) == 2 and quant.applies(name):
            packed, scales = stored_names(name)
            out[packed] = (packed_shape(quant.method, *shape), "U8")
            out[scales] = (scales_shape(*shape), "F16")
        else:
            out[name] = (tuple(shape), None)
    return out


def _rows_f32(w: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 as float32; uint16 arrays are bfloat16 bits (how eyecare passes bf16 around)."""
    part = w[r0:r1]
    if part.dtype == np.uint16:
        return from_bfloat16(part)
    return part.astype(np.float32)


def _round(x: np.ndarray, d: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(float16 scales, integers) of blocks x [r, blocks, 32] for the scales d [r, blocks]: each q rounded
    from w / d with d as stored in float16."""
    scales = np.clip(d, -_F16_MAX, _F16_MAX).astype(np.float16)
    d16 = scales.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d16 != 0, np.rint(x / np.where(d16 != 0, d16, 1.0)), 0.0)
    lo = -127 if method == "int8" else -8
    return scales, np.clip(q, lo, _QMAX[method])


def _quantize_rows(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [r, blocks, 32] -> (integers int8 [r, blocks, 32], scales float16 [r, blocks])."""
    if method == "int8":
        scales, q = _round(x, np.abs(x).max(axis=-1) / 127.0, method)
        return q.astype(np.int8), scales
    # int4: the format's scale maps the weight of largest magnitude, with its sign, to -8. Sixteen levels
    # leave a large rounding error, so each block also tries the scale of -8.5 levels and, for both, the
    # least-squares scale of the integers they gave (sum w q / sum q^2), and keeps the one of least squared
    # error: about 9 % less than the first alone on Gaussian weights, same format (docs/quantization.md).
    m = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    best_s, best_q, best_err = None, None, None
    for levels in (-8.0, -8.5):
        scales, q = _round(x, m / levels, method)
        qq, xq = np.einsum("...i,...i->...", q, q), np.einsum("...i,...i->...", x, q)
        refit = np.where(qq > 0, xq / np.where(qq > 0, qq, 1.0), 0.0)
        for s, qs in ((scales, q), _round(x, refit, method)):
            if qs is not q:
                qq, xq = np.einsum("...i,...i->...", qs, qs), np.einsum("...i,...i->...", x, qs)
            d = s.astype(np.float32)
            err = d * d * qq - 2 * d * xq  # the squared error less sum w^2, the same for every candidate
            if best_err is None:
                best_s, best_q, best_err = s, qs, err
            else:
                better = err < best_err
                best_s, best_q = np.where(better, s, best_s), np.where(better[..., None], qs, best_q)
                best_err = np.minimum(err, best_err)
    return best_q.astype(np.int8), best_s


def _pack(q: np.ndarray, method: str) -> np.ndarray:
    """int8 integers [r, blocks, 32] -> packed bytes [r, blocks * bytes per block]."""
    r = q.shape[0]
    if method == "int8":
        return q.reshape(r, -1).view(np.uint8)
    nib = (q.astype(np.uint8) & 0x0F).reshape(r, -1, 2)
    return (nib[..., 0] | (nib[..., 1] << 4)).astype(np.uint8)


def quantize(w: np.ndarray, method: str, rows_per_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quantizes a weight [N, K] (float32/float16 values, or bfloat16 bits as uint16) to
    (packed uint8 [N, packed columns], scales float16 [N, blocks]). Works on a few rows at a time, so
    the float32 temporaries stay small whatever the weight's size."""
    _check_method(method)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"quantize takes a 2-D weight [N, K], not shape {w.shape}")
    n, k = w.shape
    if n < 1 or k < 1:
        raise ValueError(f"quantize takes a weight with at least one row and column, not shape {w.shape}")
    nb = blocks(k)
    packed = np.empty(packed_shape(method, n, k), np.uint8)
    scales = np.empty((n, nb), np.float16)
    step = rows_per_step or max(1, (1 << 20) // (nb * BLOCK))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        x = _rows_f32(w, r0, r1)
        if not np.isfinite(x).all():
            raise ValueError("cannot quantize a weight holding NaN or infinite values")
        if k % BLOCK:
            x = np.pad(x, ((0, 0), (0, nb * BLOCK - k)))
        q, s = _quantize_rows(x.reshape(r1 - r0, nb, BLOCK), method)
        packed[r0:r1] = _pack(q, method)
        scales[r0:r1] = s
    return packed, scales


def unpack(packed: np.ndarray, method: str, k: int) -> np.ndarray:
    """Packed bytes [N, packed columns] -> integers int8 [N, k]."""
    _check_method(method)
    packed = np.asarray(packed, dtype=np.uint8)
    if method == "int8":
        q = packed.view(np.int8)
    else:
        lo = (packed & 0x0F).astype(np.int8)
        hi = (packed >> 4).astype(np.int8)
        q = np.stack([lo, hi], axis=-1).reshape(packed.shape[0], -1)
        q = np.where(q >= 8, q - 16, q).astype(np.int8)
    return q[:, :k]


def dequantize(packed: np.ndarray, scales: np.ndarray, method: str, k: int) -> np.ndarray:
    """The weight [N, k] a quantized tensor holds, float32 (exact: float16 scale x small integer)."""
    q = unpack(packed, method, k).astype(np.float32)
    s = np.repeat(np.asarray(scales, dtype=np.float16).astype(np.float32), BLOCK, axis=1)[:, :k]
    return q * s


def to_device(packed: np.ndarray, scales: np.ndarray, method: str, k: int):
    """A device tensor of dtype 'int8' / 'int4' holding the quantized weight."""
    from . import _core

    return _core.quantized_tensor(np.ascontiguousarray(packed, dtype=np.uint8),
                                  np.ascontiguousarray(scales, dtype=np.float16), _check_method(method), int(k))


def quantize_to_device(w: np.ndarray, method: str):
    """Quantizes a weight on the host and uploads it; the host copy is dropped once uploaded."""
    packed, scales = quantize(w, method)
    return to_device(packed, scales, method, np.asarray(w).shape[1])


# ------------------------------------------------------------------------------------------------
# Loading: a weight as stored (float, or packed and scales), quantized on the way when a plan asks.

def plan(stored: "Quantization | None", method: str | None, vision: bool = False, lm_head: bool = False) -> "Quantization | None":
    """What a load quantizes: what the checkpoint already holds quantized (``stored``), plus what the caller
    asks for (``method`` with the vision tower and/or the lm_head). A checkpoint quantized with one method
    cannot be loaded as the other: its full-precision weights are gone."""
    if method is None:
        if vision or lm_head:
            raise ValueError("quantize_vision / quantize_lm_head need quantize='int8' or 'int4'")
        return stored
    _check_method(method)
    if stored is not None and stored.method != method:
        raise ValueError(f"the checkpoint is quantized to {stored.method}; it cannot be loaded as {method} "
                         f"(load it without quantize=, or quantize its full-precision original)")
    if stored is None:
        return Quantization(method, vision, lm_head)
    return Quantization(method, stored.vision or vision, stored.lm_head or lm_head)


def check_stored(ckpt, name: str, shape: tuple, quant: Quantization) -> list[str]:
    """Problems with a quantized weight's two tensors in an open checkpoint (empty when it is sound)."""
    problems = []
    for part, (want_shape, want_dtype) in zip(stored_names(name), ((packed_shape(quant.method, *shape), "U8"),
                                                                    (scales_shape(*shape), "F16"))):
        if part not in ckpt:
            problems.append(f"missing {part}")
            continue
        dtype, got = ckpt.info(part)
        if dtype != want_dtype or tuple(got) != tuple(want_shape):
            problems.append(f"{part} is {dtype} {list(got)}, expected {want_dtype} {list(want_shape)} "
                            f"({quant.method} blocks of {BLOCK} for a {list(shape)} weight)")
    return problems


def load_packed(ckpt, name: str, shape: tuple, stored: "Quantization | None", method: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed, scales) of the weight ``name`` [N, K]: read as stored when the checkpoint holds it quantized,
    else quantized from its full-precision values (a memory-mapped view, read a few rows at a time)."""
    if stored is not None and stored.applies(name):
        problems = check_stored(ckpt, name, shape, stored)
        if problems:
            from ._core import FormatError

            raise FormatError(f"{getattr(ckpt, 'path', 'checkpoint')}: " + "; ".join(problems))
        packed, scales = (ckpt.get(n) for n in stored_names(name))
        return packed, scales
    return quantize(ckpt.get(name), method)


def load_weight(ckpt, name: str, shape: tuple, stored: "Quantization | None", quant: "Quantization | None"):
    """The device tensor of checkpoint weight ``name``: quantized when the plan ``quant`` covers it (read
    packed, or quantized now), else as stored."""
    if quant is not None and len(shape) == 2 and quant.applies(name):
        packed, scales = load_packed(ckpt, name, shape, stored, quant.method)
        return to_device(packed, scales, quant.method, shape[1])
    return ckpt.to_device(name)


# ------------------------------------------------------------------------------------------------
# Sizes: what each variant of a model holds on the device.

def tensor_bytes(name: str, shape: tuple, quant: "Quantization | None", float_bytes: int = 2) -> int:
    """Bytes of one weight on the device: float_bytes per value, or packed integers + scales when quantized."""
    if quant is not None and len(shape) == 2 and quant.applies(name):
        return quantized_nbytes(quant.method, *shape)
    n = float_bytes
    for s in shape:
        n *= int(s)
    return n


def model_weight_bytes(config: dict, quant: "Quantization | None", float_bytes: int = 2) -> dict:
    """Bytes of the weights EyecareGPT.from_pretrained puts on the device for an EyecareGPT config.json, by
    part ("vision", "connector", "language"), with every float weight at float_bytes and the weights
    ``quant`` covers quantized. The vision layers past the connector's last feature layer are not loaded."""
    from .checkpoint import LANGUAGE_PREFIX, connector_tensors, siglip_tensors
    from .config import DecoderConfig
    from .vision import check_config

    text = DecoderConfig.from_dict(config["text_config"])
    layers_run = check_config(config)["layers_run"]
    vision = {"num_channels": 3, **config["vision_config"]}
    parts = {"vision": 0, "connector": 0, "language": 0}
    marker = ".encoder.layers."
    for name, shape in siglip_tensors(vision).items():
        if ".post_layernorm." in name or (marker in name and int(name.split(marker)[1].split(".")[0]) >= layers_run):
            continue
        parts["vision"] += tensor_bytes(name, shape, quant, float_bytes)
    for name, shape in connector_tensors(vision["hidden_size"], text.hidden_size).items():
        parts["connector"] += tensor_bytes(name, shape, quant, float_bytes)
    for name, shape in text.checkpoint_tensors().items():
        parts["language"] += tensor_bytes(LANGUAGE_PREFIX + name, shape, quant, float_bytes)
    return parts


VARIANTS = {"bf16": None, "int8": Quantization("int8"), "int4": Quantization("int4"),
            "int8+vision": Quantization("int8", vision=True), "int4+vision": Quantization("int4", vision=True),
            "int8+vision+lm_head": Quantization("int8", vision=True, lm_head=True),
            "int4+vision+lm_head": Quantization("int4", vision=True, lm_head=True)}
