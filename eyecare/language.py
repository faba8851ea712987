"""The language model: a Phi-3 or Qwen2 decoder run by the C core (csrc/model/decoder.c) with its KV cache on
the device, plus tokenizer, chat template, sampling and streaming, with an interface a transformers user
knows::

    from eyecare import LanguageModel

    lm = LanguageModel.from_pretrained("Phi-3.5-mini-instruct", max_context=4096)
    prompt = lm.apply_chat_template([{"role": "user", "content": "What is glaucoma?"}])
    out = lm.generate(prompt, max_new_tokens=128)           # out.text, out.token_ids, out.decode_tokens_per_s
    for piece in lm.stream(prompt, max_new_tokens=128):     # text as it is decoded
        print(piece, end="", flush=True)
    logits = lm.forward(input_ids=[1, 2, 3])                # NumPy [3, vocab], like model(input_ids).logits

Checkpoints: a Hugging Face Phi-3 / Qwen2 directory (config.json, *.safetensors, tokenizer files), or an
EyecareGPT directory, whose config.json has the LLM's config as ``text_config`` and whose safetensors hold
the LLM under the prefix ``language_model.``. Weights stay in their stored dtype (bf16, f16, f32).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Iterator

import numpy as np

from . import _core
from ._locking import ModelLock
from .config import DecoderConfig
from .core import devices, device_info, tensor as _tensor, from_bfloat16
from .sampling import SamplingParams
from .tokenizer import TextStreamer, Tokenizer

__all__ = ["LanguageModel", "GenerationOutput", "TextStream", "load_decoder_weights", "check_decoder_checkpoint"]

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Buffers some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DEFAULT_MAX_NEW_TOKENS = 256


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise _core.FormatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise _core.FormatError(f"{path} must hold a JSON object")
    return data


def _select_device(device) -> None:
    """Makes `device` (an index into eyecare.devices() or part of a name) the one eyecare uses. The device
    is chosen once per process, when the first tensor is made."""
    if device is None:
        return
    saved = os.environ.get("EYECARE_DEVICE")
    os.environ["EYECARE_DEVICE"] = str(device)  # takes effect if no context exists yet
    try:
        current = device_info()["name"]
    finally:
        if saved is None:
            del os.environ["EYECARE_DEVICE"]
        else:
            os.environ["EYECARE_DEVICE"] = saved
    if isinstance(device, int):
        listed = devices()
        if not 0 <= device < len(listed):
            raise ValueError(f"device {device} does not exist: there are {len(listed)} Vulkan devices")
        wanted_ok = listed[device]["name"] == current
    else:
        wanted_ok = str(device).lower() in current.lower()
    if not wanted_ok:
        raise ValueError(f"eyecare already runs on {current!r}; the device is chosen once per process "
                         f"(set EYECARE_DEVICE or pass device= before anything else uses the device)")


def _detect_prefix(ckpt) -> str:
    names = ckpt.names()
    return "language_model." if any(n.startswith("language_model.") for n in names) else ""


def check_decoder_checkpoint(ckpt, config: DecoderConfig, prefix: str = "", stored=None) -> None:
    """Checks every tensor of the decoder in an open safetensors checkpoint (presence, shape, dtype) and
    that nothing under `prefix` is left unused; raises eyecare.FormatError listing every problem.
    stored: the checkpoint's eyecare.quantize.Quantization, when its linear layers are stored quantized
    (each as packed integers and scales)."""
    from .quantize import expected_tensors

    expected = expected_tensors(config.checkpoint_tensors(), stored)
    present = {n[len(prefix):] for n in ckpt.names() if n.startswith(prefix)}
    missing = sorted(prefix + n for n in expected if n not in present)
    misshapen, bad_dtype = [], []
    for name, (shape, want_dtype) in expected.items():
        if name not in present:
            continue
        dtype, got = ckpt.info(prefix + name)
        if tuple(got) != shape:
            misshapen.append(f"{prefix}{name} {list(got)} (expected {list(shape)})")
        elif want_dtype is not None and dtype != want_dtype:
            bad_dtype.append(f"{prefix}{name} {dtype} (expected {want_dtype})")
        elif want_dtype is None and dtype not in _DTYPES:
            bad_dtype.append(f"{prefix}{name} {dtype}")
    tied_head = {"lm_head.weight", "lm_head.qweight", "lm_head.scales"} if config.tie_word_embeddings else set()
    unexpected = sorted(prefix + n for n in present if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
                        and n not in tied_head)
    parts = []
    for label, items in (("missing", missing), ("misshapen", misshapen), ("of the wrong dtype", bad_dtype),
                         ("unexpected", unexpected)):
        if items:
            parts.append(f"{len(items)} {label}: " + ", ".join(items))
    if parts:
        where = f" under the prefix {prefix!r}" if prefix else ""
        raise _core.FormatError(f"{getattr(ckpt, 'path', 'checkpoint')} does not hold a {config.model_type} decoder "
                                f"of this config{where}: " + "; ".join(parts))


def load_decoder_weights(ckpt, config: DecoderConfig, prefix: str = "", quantize: str | None = None,
                         quantize_lm_head: bool = False, stored=None) -> dict:
    """Checks the checkpoint, then uploads the decoder's weights and returns them under the names
    eyecare._core.Decoder takes (Phi-3's layout: Qwen2's q/k/v and gate/up projections are concatenated
    into qkv_proj and gate_up_proj, one layer at a time, so that each costs one mat-vec).

    Weights keep their stored dtype, except with ``quantize`` ('int8' or 'int4'): the linear layers (and the
    lm_head with quantize_lm_head) are quantized one tensor at a time as they are uploaded (eyecare/quantize.py).
    ``stored``: the checkpoint's own quantization (config.json's ``quantization``), whose weights are read packed."""
    from . import quantize as Q

    quant = Q.plan(stored, quantize, lm_head=quantize_lm_head)
    check_decoder_checkpoint(ckpt, config, prefix, stored)
    shapes = config.checkpoint_tensors()

    def fused(names, name):
        if quant is not None and quant.applies(name):
            # Quantization is per row, so the parts' rows quantized one by one and stacked are the fused weight's.
            parts = [Q.load_packed(ckpt, prefix + n, shapes[n], stored, quant.method) for n in names]
            return Q.to_device(np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts]),
                               quant.method, shapes[names[0]][1])
        dtypes = {ckpt.info(prefix + n)[0] for n in names}
        arrays = [ckpt.get(prefix + n) for n in names]
        if len(dtypes) == 1:
            dtype = _DTYPES[dtypes.pop()]
        else:  # mixed dtypes within one projection: widen to f32 values
            arrays = [from_bfloat16(a) if a.dtype == np.uint16 else a.astype(np.float32) for a in arrays]
            dtype = "float32"
        return _tensor(np.concatenate(arrays), dtype)

    # Qwen2: fused name -> the checkpoint tensors concatenated into it (rows: q, k, v; gate, up).
    fusions = {}
    if config.model_type == "qwen2":
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            for kind in ("weight", "bias"):
                fusions[f"{p}self_attn.qkv_proj.{kind}"] = [f"{p}self_attn.{x}_proj.{kind}" for x in "qkv"]
            fusions[f"{p}mlp.gate_up_proj.weight"] = [f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"]
    parts = {n for names in fusions.values() for n in names}
    weights = {n: Q.load_weight(ckpt, prefix + n, shape, stored, quant) for n, shape in shapes.items() if n not in parts}
    for name, names in fusions.items():
        weights[name] = fused(names, name)
    return weights


@dataclasses.dataclass
class GenerationOutput:
    """What generate() returns for one prompt. Also readable as a dict (``out["text"]``)."""
    text: str
    token_ids: list
    finish_reason: str      # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    prompt_tokens: int
    prefill_ms: float
    decode_ms: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / (self.prefill_ms / 1e3) if self.prefill_ms > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> float:
        # The first new token comes from the prefill's logits; each further one is a decode step.
        steps = max(len(self.token_ids) - 1, 0)
        return steps / (self.decode_ms / 1e3) if self.decode_ms > 0 else float("inf")

    def __getitem__(self, key):
        if key in ("prefill_tokens_per_s", "decode_tokens_per_s") or key in self.__dataclass_fields__:
            return getattr(self, key)
        raise KeyError(key)

    def keys(self):
        return [*self.__dataclass_fields__, "prefill_tokens_per_s", "decode_tokens_per_s"]


class TextStream:
    """An iterator of text pieces as they are decoded; ``output`` holds the GenerationOutput once it is
    exhausted."""

    def __init__(self, events):
        self._events = events
        self.output: GenerationOutput | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            try:
                _, piece = next(self._events)
            except StopIteration as done:
                self.output = done.value[0]
                raise StopIteration from None
            if piece:
                return piece

    def close(self) -> None:
        """Stops the generation now (the model is free for the next caller); iterating ends."""
        self._events.close()


class _Sequence:
    """One prompt's state during generation."""

    def __init__(self, prompt_ids, embeds, max_new, tokenizer, constraint=None):
        self.prompt_ids = prompt_ids
        self.embeds = embeds
        self.prompt_len = len(prompt_ids) if prompt_ids is not None else embeds.shape[0]
        # The repetition penalty sees the prompt's ids (none for embeddings) and what is generated.
        known = np.asarray(prompt_ids if prompt_ids is not None else [], dtype=np.int32)
        self.history = np.empty(len(known) + max_new, dtype=np.int32)
        self.history[:len(known)] = known
        self.n_history = len(known)
        self.token_ids: list[int] = []
        self.streamer = TextStreamer(tokenizer) if tokenizer is not None else None
        self.text = ""
        self.checked = 0   # text before this was searched for stop strings
        self.emitted = 0   # text before this was handed out
        self.finish_reason: str | None = None
        # Structured output: this sequence's place in the grammar (None: unconstrained).
        self.grammar = constraint.start() if constraint is not None else None


def _holdback(text: str, stops) -> int:
    """Length of the longest end of `text` that could begin a stop string (not handed out yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class LanguageModel:
    """A Phi-3 / Qwen2 causal language model on the device. Build one with :meth:`from_pretrained`."""

    def __init__(self, config: DecoderConfig, weights: dict, tokenizer: Tokenizer | None = None,
                 generation_config: dict | None = None, max_context: int = 4096, max_batch: int = 1,
                 prefill_chunk: int = 256, kv_cache_dtype: str = "float16"):
        if not isinstance(max_context, int) or max_context < 1:
            raise ValueError(f"max_context must be a positive number of tokens, not {max_context!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive number of sequences, not {max_batch!r}")
        if kv_cache_dtype not in ("float16", "float32"):
            raise ValueError(f"kv_cache_dtype must be 'float16' or 'float32', not {kv_cache_dtype!r}")
        self.config = config
        self.tokenizer = tokenizer
        self.generation_config = dict(generation_config or {})
        self.max_context = max_context
        self.max_batch = max_batch
        self.kv_cache_dtype = kv_cache_dtype
        self._weights = weights
        self._decoder = _core.decoder_type()(config.to_core(), weights, max_context, max_batch, prefill_chunk, kv_cache_dtype)
        self._lock = ModelLock("language model")
        eos = self.generation_config.get("eos_token_id", config.eos_token_id or None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids = frozenset(() if eos is None else (eos if isinstance(eos, (list, tuple)) else [eos]))

    # --------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device=None, max_context: int = 4096, max_batch: int = 1,
                        prefix: str | None = None, prefill_chunk: int = 256, kv_cache_dtype: str = "float16",
                        quantize: str | None = None, quantize_lm_head: bool = False) -> "LanguageModel":
        """Loads a checkpoint directory: config.json, the safetensors file(s), and when present
        tokenizer.json / tokenizer_config.json / generation_config.json.

        device: an index into eyecare.devices() or part of a device name (default: EYECARE_DEVICE, else
        the best device). max_context: tokens the KV cache holds per sequence (prompt and output).
        max_batch: sequences generated together. prefix: where the LLM's tensors are named
        (default: 'language_model.' when the checkpoint has such names, as EyecareGPT's do, else none).
        prefill_chunk: prompt tokens processed per device batch (bounds the activation memory).
        kv_cache_dtype: 'float16' (default: half the cache memory, and half the bytes each decode step reads
        from it; keys and values rounded to f16) or 'float32' (kept exactly as computed).
        quantize: 'int8' or 'int4' quantizes the linear layers while loading (quantize_lm_head: the lm_head too);
        a checkpoint stored quantized (config.json's ``quantization``) loads as stored."""
        from .quantize import Quantization
        from .safetensors import open_safetensors

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a checkpoint directory")
        raw = _read_json(os.path.join(path, "config.json"))
        if raw is None:
            raise FileNotFoundError(f"{path} has no config.json")
        config = DecoderConfig.from_dict(raw)
        tokenizer = Tokenizer(path) if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
        generation_config = _read_json(os.path.join(path, "generation_config.json"))
        _select_device(device)
        with open_safetensors(path) as ckpt:
            if prefix is None:
                prefix = _detect_prefix(ckpt)
            weights = load_decoder_weights(ckpt, config, prefix, quantize, quantize_lm_head, Quantization.from_config(raw))
        return cls(config, weights, tokenizer, generation_config, max_context=max_context, max_batch=max_batch,
                   prefill_chunk=prefill_chunk, kv_cache_dtype=kv_cache_dtype)

    @classmethod
    def from_safetensors(cls, ckpt, config: DecoderConfig | dict, prefix: str = "", tokenizer: Tokenizer | None = None,
                         generation_config: dict | None = None, quantize: str | None = None,
                         quantize_lm_head: bool = False, stored_quantization=None, **kwargs) -> "LanguageModel":
        """From an already open safetensors checkpoint (e.g. the one an EyecareGPT model also reads its
        vision tower from) and a config (DecoderConfig or a config.json dict). quantize, quantize_lm_head and
        stored_quantization: as load_decoder_weights takes them."""
        if isinstance(config, dict):
            config = DecoderConfig.from_dict(config)
        weights = load_decoder_weights(ckpt, config, prefix, quantize, quantize_lm_head, stored_quantization)
        return cls(config, weights, tokenizer, generation_config, **kwargs)

    def close(self):
        """Frees the cache, activations and weights now rather than when the object is collected."""
        with self._lock.held():
            self._decoder.close()
            for t in self._weights.values():
                t.free()
            self._weights = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        c = self.config
        return (f"LanguageModel({c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, "
                f"max_context {self.max_context}, max_batch {self.max_batch}, kv_cache_dtype {self.kv_cache_dtype})")

    # --------------------------------------------------------------------------------------------
    # Tokens and embeddings

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model was loaded without a tokenizer (no tokenizer.json): pass token ids")
        return self.tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._need_tokenizer().encode(text, add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._need_tokenizer().decode(ids, skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False,
                            **kwargs):
        """The prompt string (or ids, with tokenize=True) for a conversation, as transformers renders it."""
        return self._need_tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                          tokenize=tokenize, **kwargs)

    def embed(self, ids) -> np.ndarray:
        """Token embeddings, float32 [len(ids), hidden]: the input to splice image embeddings into."""
        ids = self._ids_array(ids, 1)
        with self._lock.held():
            return self._decoder.embed(ids)

    def _ids_array(self, ids, ndim) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim != ndim:
            raise ValueError(f"token ids must be {ndim}-D, not of shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"token ids must be integers, not {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}")
        return a.astype(np.int32)

    # --------------------------------------------------------------------------------------------
    # Forward

    def forward(self, input_ids=None, inputs_embeds=None, *, use_cache: bool = False, logits_to_keep: int = 0) -> np.ndarray:
        """Logits (float32 NumPy) for token ids [T] or [B, T], or input embeddings [T, hidden] or [B, T, hidden]:
        [T, vocab] or [B, T, vocab], like ``model(input_ids).logits`` in transformers.

        use_cache=False starts the sequences afresh; True continues after the tokens already in the
        cache (from earlier calls), as passing past_key_values does. logits_to_keep: 0 for every
        position, n for the last n (1 computes the lm_head for the last token only)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            a = np.asarray(input_ids)
            batched = a.ndim == 2
            ids = self._ids_array(a if batched else a.reshape(1, -1) if a.ndim == 1 else a, 2)
            B, T = ids.shape
            emb = None
        else:
            e = np.asarray(inputs_embeds, dtype=np.float32)
            if e.ndim not in (2, 3) or e.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must be [T, {self.config.hidden_size}] or [B, T, {self.config.hidden_size}], "
                                 f"not {list(e.shape)}")
            batched = e.ndim == 3
            emb = np.ascontiguousarray(e if batched else e[None])
            B, T = emb.shape[:2]
            ids = None
        if T == 0:
            raise ValueError("forward needs at least one token")
        if B > self.max_batch:
            raise ValueError(f"{B} sequences, but the model was created with max_batch={self.max_batch}")
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be 0 (all) or a positive count, not {logits_to_keep!r}")
        mode = "last" if logits_to_keep == 1 else "all"
        with self._lock.held():
            if not use_cache:
                for b in range(B):
                    self._decoder.set_length(b, 0)
            out = self._decoder.forward(ids, emb, 0, mode)
        if mode == "last":
            out = out[:, None, :]
        elif 0 < logits_to_keep < T:
            out = np.ascontiguousarray(out[:, -logits_to_keep:, :])
        return out if batched else out[0]

    __call__ = forward

    def cache_length(self, seq: int = 0) -> int:
        """Tokens in the cache for sequence `seq`."""
        return self._decoder.length(seq)

    # --------------------------------------------------------------------------------------------
    # Generation

    def _prompts(self, prompt, input_ids, inputs_embeds):
        """-> ([(ids or None, embeds or None)], batched)"""
        given = [x is not None for x in (prompt, input_ids, inputs_embeds)]
        if sum(given) != 1:
            raise ValueError("give exactly one of prompt, input_ids and inputs_embeds")
        if prompt is not None:
            def one(p):
                if isinstance(p, str):
                    return self.encode(p), None
                if isinstance(p, (list, tuple)) and p and all(isinstance(m, dict) for m in p):
                    return self.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True), None
                raise TypeError("a prompt is a string or a list of chat messages ({'role': ..., 'content': ...})")
            if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], dict):
                return [one(p) for p in prompt], True
            return [one(prompt)], False
        if input_ids is not None:
            if isinstance(input_ids, np.ndarray) and input_ids.ndim == 2:
                return [(self._ids_array(r, 1), None) for r in input_ids], True
            if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple, np.ndarray)):
                return [(self._ids_array(r, 1), None) for r in input_ids], True
            return [(self._ids_array(input_ids, 1), None)], False

        def emb(e):
            e = np.ascontiguousarray(e, dtype=np.float32)
            if e.ndim != 2 or e.shape[1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds of one prompt must be [T, {self.config.hidden_size}], not {list(e.shape)}")
            return None, e
        if isinstance(inputs_embeds, (list, tuple)):
            return [emb(e) for e in inputs_embeds], True
        e = np.asarray(inputs_embeds, dtype=np.float32)
        if e.ndim == 3:
            return [emb(x) for x in e], True
        return [emb(e)], False

    def _options(self, max_new_tokens, stop, sampling, structure=None):
        params = SamplingParams.resolve(self.generation_config, **sampling)
        if max_new_tokens is None:
            max_new_tokens = self.generation_config.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        if stops:
            self._need_tokenizer()
        from .structured import compile_constraint

        constraint = compile_constraint(self, **(structure or {}))
        return params, max_new_tokens, stops, constraint

    def _events(self, items, params, max_new, stops, constraint=None):
        """Generation as a stream of (prompt index, text piece) events; returns the GenerationOutputs.
        Prompts go through in groups of max_batch: each prompt is prefilled on its own (prompts differ
        in length), then the group decodes together, one token per sequence per forward pass."""
        rng = params.generator()
        outputs = []
        with self._lock.held():
            for g0 in range(0, len(items), self.max_batch):
                group = yield from self._group_events(items[g0:g0 + self.max_batch], g0, params, max_new, stops, rng,
                                                      constraint)
                outputs.extend(group)
        return outputs

    def _group_events(self, items, index0, params, max_new, stops, rng, constraint=None):
        seqs = [_Sequence(ids, emb, max_new, self.tokenizer, constraint) for ids, emb in items]
        for i, s in enumerate(seqs):
            if s.prompt_len == 0:
                raise ValueError(f"prompt {index0 + i} is empty")
            if s.prompt_len + max_new - 1 > self.max_context:
                raise ValueError(f"prompt {index0 + i} has {s.prompt_len} tokens; with max_new_tokens={max_new} the sequence "
                                 f"would need {s.prompt_len + max_new - 1} cached tokens, more than max_context="
                                 f"{self.max_context} (shorten the prompt, lower max_new_tokens, or load with a larger max_context)")
        V = self.config.vocab_size
        dec = self._decoder
        # LongRoPE: a sequence whose cache was built with the short factors is recomputed with the long
        # ones at the step that takes it past original_max_position_embeddings, as transformers'
        # Phi3ForCausalLM.prepare_inputs_for_generation does.
        long_after = self.config.original_max_position_embeddings if self.config.rope_type == "longrope" else None

        def accept(b, s, token):
            s.token_ids.append(token)
            s.history[s.n_history] = token
            s.n_history += 1
            eos = token in self.eos_token_ids
            # Structured output: once the grammar is complete (the JSON closed, the regex matched to its
            # end) the answer ends, as at an EOS token, but this token is part of the text.
            complete = eos or (s.grammar is not None and s.grammar.advance(token))
            piece = ""
            if s.streamer is not None:
                piece = "" if eos else s.streamer.push(token)
                if complete or len(s.token_ids) == max_new:
                    piece += s.streamer.flush()
            s.finish_reason = "eos" if complete else "length" if len(s.token_ids) == max_new else None
            s.text += piece
            if stops:
                found = [i for st in stops if (i := s.text.find(st, max(0, s.checked - len(st) + 1))) >= 0]
                s.checked = len(s.text)
                if found:
                    s.text = s.text[:min(found)]
                    s.finish_reason = "stop"
            safe = len(s.text) if s.finish_reason else len(s.text) - _holdback(s.text, stops)
            out, s.emitted = s.text[s.emitted:safe], max(s.emitted, safe)
            return out

        start = time.perf_counter()
        logits = np.empty((len(seqs), V), dtype=np.float32)
        for b, s in enumerate(seqs):
            dec.set_length(b, 0)
            ids = None if s.prompt_ids is None else np.asarray(s.prompt_ids, dtype=np.int32)[None]
            emb = None if s.embeds is None else s.embeds[None]
            logits[b] = dec.forward(ids, emb, b, "last")[0]
        prefill_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        tokens = [params.choose(self._masked(logits[b], s), s.history[:s.n_history], rng) for b, s in enumerate(seqs)]
        for b, s in enumerate(seqs):
            yield index0 + b, accept(b, s, tokens[b])
        while True:
            live = [b for b, s in enumerate(seqs) if s.finish_reason is None]
            if not live:
                break
            for b in live:
                if long_after is not None and seqs[b].prompt_len <= long_after and dec.length(b) == long_after:
                    self._recompute_long(b, seqs[b])
            # Decode sequences 0 .. the last unfinished one (finished ones before it ride along, ignored).
            n = live[-1] + 1
            step = np.array([[seqs[b].token_ids[-1]] for b in range(n)], dtype=np.int32)
            logits = dec.forward(step, None, 0, "last")
            for b in live:
                s = seqs[b]
                yield index0 + b, accept(b, s, params.choose(self._masked(logits[b], s), s.history[:s.n_history], rng))
        decode_ms = (time.perf_counter() - start) * 1e3
        return [GenerationOutput(text=s.text, token_ids=s.token_ids, finish_reason=s.finish_reason, prompt_tokens=s.prompt_len,
                                 prefill_ms=prefill_ms, decode_ms=decode_ms) for s in seqs]

    @staticmethod
    def _masked(row: np.ndarray, s: _Sequence) -> np.ndarray:
        """The logits row with the tokens the sequence's grammar forbids set to -inf (unchanged without one)."""
        if s.grammar is not None:
            s.grammar.mask(row)
        return row

    def _recompute_long(self, b: int, s: _Sequence):
        """Rebuilds sequence b's cache (prompt and the tokens fed so far) with the long RoPE factors."""
        fed = np.asarray(s.token_ids[:-1], dtype=np.int32)
        if s.prompt_ids is not None:
            ids, emb = np.concatenate([np.asarray(s.prompt_ids, dtype=np.int32), fed])[None], None
        else:
            ids, emb = None, np.concatenate([s.embeds, self._decoder.embed(fed)])[None]
        self._decoder.set_length(b, 0)
        self._decoder.forward(ids, emb, b, "none", True)

    def generate(self, prompt=None, *, input_ids=None, inputs_embeds=None, max_new_tokens: int | None = None,
                 do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                 stop=None, stream: bool = False, json_schema=None, regex=None, grammar=None):
        """Generates a continuation of one prompt, or of several (a list) decoded together in batches of
        max_batch. A prompt is a string, a list of chat messages (rendered with the chat template and a
        generation prompt), token ids (input_ids), or input embeddings [T, hidden] (inputs_embeds, e.g.
        with image tokens spliced in).

        Sampling options not given come from generation_config.json, else transformers' defaults
        (greedy). Generation stops at max_new_tokens, at any of the EOS ids (generation_config.json), or
        when the text contains a stop string (cut from the returned text).

        Structured output (eyecare.structured): with `json_schema` (a JSON Schema dict), `regex` or
        `grammar` (Lark syntax) only tokens that keep the output valid are chosen, and the answer ends
        when it is complete; it is valid unless max_new_tokens cuts it (finish_reason "length").

        Returns a GenerationOutput (text, token_ids, finish_reason, timings), a list of them for a list
        of prompts, or with stream=True the iterator stream() gives."""
        if stream:
            return self.stream(prompt, input_ids=input_ids, inputs_embeds=inputs_embeds, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, seed=seed, stop=stop,
                               json_schema=json_schema, regex=regex, grammar=grammar)
        items, batched = self._prompts(prompt, input_ids, inputs_embeds)
        params, max_new, stops, constraint = self._options(max_new_tokens, stop, dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, seed=seed), dict(json_schema=json_schema, regex=regex, grammar=grammar))
        events = self._events(items, params, max_new, stops, constraint)
        while True:
            try:
                next(events)
            except StopIteration as done:
                outputs = done.value
                break
        return outputs if batched else outputs[0]

    def stream(self, prompt=None, *, input_ids=None, inputs_embeds=None, max_new_tokens: int | None = None,
               do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
               stop=None, json_schema=None, regex=None, grammar=None) -> TextStream:
        """Like generate() for one prompt, as an iterator of text pieces in the order they are decoded
        (whole characters only: a piece never ends inside a multi-byte character, and text that might
        begin a stop string is held back until it does not). ``.output`` has the GenerationOutput at the end."""
        items, batched = self._prompts(prompt, input_ids, inputs_embeds)
        if batched:
            raise ValueError("stream() takes one prompt; use generate() for several")
        self._need_tokenizer()
        params, max_new, stops, constraint = self._options(max_new_tokens, stop, dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, seed=seed), dict(json_schema=json_schema, regex=regex, grammar=grammar))
        return TextStream(self._events(items, params, max_new, stops, constraint))
