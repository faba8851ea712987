"""EyecareGPT end to end: the processor (adaptive resolution), the vision tower with its Layer-wise Dense
Connector, and the Phi-3 / Qwen2 decoder, loaded from one checkpoint directory (docs/architecture.md).

    model = EyecareGPT.from_pretrained("checkpoints/eyecaregpt-3.8b")
    print(model.chat("Is there diabetic retinopathy?", images=["fundus.jpg"]))

A question's path to the logits: the chat template renders the conversation with one ``<image>``
placeholder per image; the text between placeholders is tokenized and embedded; each placeholder is
replaced by its image's tokens (global view, then pooled tiles); the decoder runs on those embeddings.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Iterable

import numpy as np

from .checkpoint import CONNECTOR_DEFAULTS, CONNECTOR_PREFIX, LANGUAGE_PREFIX, VISION_PREFIX, connector_tensors, read_config, siglip_tensors

IMAGE_TOKEN = "<image>"


def _progress(total_bytes: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="loading weights", disable=not enabled, leave=False)


def _select_device(device) -> None:
    if device is None:
        return
    from . import _core

    if _core.context_created():
        current = _core.device_info()
        wanted = str(device)
        if wanted != str(current.get("index", "")) and wanted.lower() not in current["name"].lower():
            raise ValueError(f"eyecare already runs on {current['name']}; choose the device before the first "
                             "model is loaded (or set EYECARE_DEVICE)")
        return
    os.environ["EYECARE_DEVICE"] = str(device)


class EyecareGPT:
    """The whole model on one Vulkan device. Build it with :meth:`from_pretrained`."""

    def __init__(self, config: dict, processor, vision, language, path: str | None = None):
        self.config = config
        self.processor = processor
        self.vision = vision
        self.language = language
        self.tokenizer = language.tokenizer
        self.path = path
        self.image_token = config.get("image_token", IMAGE_TOKEN)
        # timings and last_output belong to the thread that made the call: two threads sharing the model
        # each read their own call's figures, never the other's (see the properties below).
        self._calls = threading.local()

    @property
    def timings(self) -> dict:
        """What this thread's last call spent: vision_ms, prompt_tokens, prefill_ms, decode_ms, tokens,
        decode_tokens_per_s ... ({} before its first call). Each call replaces it."""
        return getattr(self._calls, "timings", {})

    @property
    def last_output(self):
        """This thread's last answer: a GenerationOutput (text, token_ids, finish_reason, timings), or for
        generate() the list of them; None before its first call or after a call that failed."""
        return getattr(self._calls, "last_output", None)

    def _set_call(self, timings: dict, last_output) -> None:
        self._calls.timings, self._calls.last_output = timings, last_output

    # ---------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device=None, *, max_context: int = 4096, max_batch: int = 1,
                        max_views: int | None = None, max_device_memory: int | str | None = None,
                        progress: bool = True, kv_cache_dtype: str = "float16", quantize: str | None = None,
                        quantize_vision: bool = False, quantize_lm_head: bool = False) -> "EyecareGPT":
        """Loads an EyecareGPT checkpoint directory (config.json, model.safetensors or shards + index,
        tokenizer.json, tokenizer_config.json, generation_config.json).

        device: index or name part of a Vulkan device (eyecare.devices()); default EYECARE_DEVICE, else
        the best one. max_context: tokens per conversation the KV cache holds. max_batch: requests
        generate() runs together. max_views: views per vision pass. max_device_memory: a cap on what
        eyecare allocates on the device (bytes, or '8G'). kv_cache_dtype: 'float16' (the default: half the
        cache memory and the bytes a decode step reads) or 'float32' (the cache bit for bit as computed).
        quantize: 'int8' or 'int4' quantizes the language
        model's linear layers while loading, one tensor at a time (quantize_vision: the vision tower's too;
        quantize_lm_head: the lm_head's); see docs/quantization.md. A checkpoint written quantized by
        `eyecare convert --quantize` loads quantized without it.

        Every missing or misshapen tensor is named in one FormatError before anything is uploaded."""
        from . import _core
        from .config import DecoderConfig
        from .language import LanguageModel, _read_json
        from .processor import EyecareProcessor
        from .quantize import Quantization, expected_tensors, load_weight, plan
        from .safetensors import open_safetensors
        from .tokenizer import Tokenizer
        from .vision import VisionTower, check_config

        path = os.fspath(path)
        config = read_config(path)
        _select_device(device)
        if max_device_memory is not None:
            _core.set_memory_budget(_parse_bytes(max_device_memory))
        text_config = DecoderConfig.from_dict(config["text_config"])
        layers_run = check_config(config)["layers_run"]
        processor = EyecareProcessor.from_config(config)
        tokenizer = Tokenizer(path) if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
        if tokenizer is None:
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        generation_config = _read_json(os.path.join(path, "generation_config.json"))
        stored = Quantization.from_config(config)
        quant = plan(stored, quantize, vision=quantize_vision, lm_head=quantize_lm_head)
        with open_safetensors(path) as ckpt:
            expected = _expected_tensors(config, text_config)
            _check_checkpoint(ckpt, expected_tensors(expected, stored), path)
            wanted_vision = [n for n in expected if n.startswith(VISION_PREFIX) or n.startswith(CONNECTOR_PREFIX)]
            wanted_vision = [n for n in wanted_vision if _vision_layer(n) is None or _vision_layer(n) < layers_run]
            wanted_vision = [n for n in wanted_vision if ".post_layernorm." not in n]
            itemsize = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}
            total = sum(itemsize.get(ckpt.info(n)[0], 4) * int(np.prod(ckpt.info(n)[1])) for n in ckpt.names())
            vision_weights = {}
            with _progress(total, progress) as bar:
                for name in wanted_vision:
                    vision_weights[name] = load_weight(ckpt, name, expected[name], stored, quant)
                    bar.update(vision_weights[name].nbytes)
                vision = VisionTower(config, vision_weights, vision_prefix=VISION_PREFIX + "vision_model.",
                                     connector_prefix=CONNECTOR_PREFIX, max_views=max_views)
                language = LanguageModel.from_safetensors(ckpt, text_config, prefix=LANGUAGE_PREFIX, tokenizer=tokenizer,
                                                          generation_config=generation_config, max_context=max_context,
                                                          max_batch=max_batch, kv_cache_dtype=kv_cache_dtype,
                                                          quantize=quant.method if quant else None,
                                                          quantize_lm_head=quant.lm_head if quant else False,
                                                          stored_quantization=stored)
                bar.update(bar.total - bar.n)
        return cls(config, processor, vision, language, path)

    def close(self) -> None:
        """Frees the device memory now (weights, caches, scratch) rather than when collected."""
        self.vision.close()
        self.language.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        t = self.config["text_config"]
        return (f"<EyecareGPT {t.get('model_type')} {t.get('num_hidden_layers')} layers x {t.get('hidden_size')}, "
                f"vision {self.config['vision_config'].get('num_hidden_layers')} layers, from {self.path}>")

    # ---------------------------------------------------------------------------------------------
    # Research pieces

    def encode_images(self, images: Iterable) -> list[np.ndarray]:
        """The image tokens the LLM sees, one float32 array [n_tokens, d_llm] per image."""
        tokens, timings = self._encode_images(list(images))
        self._set_call(timings, None)
        return tokens

    def _encode_images(self, images: list) -> tuple[list[np.ndarray], dict]:
        if not images:
            return [], {"vision_ms": 0.0, "views": 0}
        start = time.perf_counter()
        inputs = self.processor(images)
        tokens = self.vision.encode(inputs["pixel_values"], inputs["image_grids"])
        counts = list(inputs["num_image_tokens"])
        if sum(counts) != tokens.shape[0]:
            raise RuntimeError(f"the processor expects {sum(counts)} image tokens, the tower gave {tokens.shape[0]}")
        timings = {"vision_ms": (time.perf_counter() - start) * 1e3, "views": int(inputs["pixel_values"].shape[0])}
        return np.split(tokens, np.cumsum(counts)[:-1]), timings

    def build_prompt(self, question: str, images: Iterable = (), history=None, system: str | None = None) -> str:
        """The chat-template text of a conversation, one image placeholder per image (prepended to the
        question, as LLaVA does, when it has none)."""
        images = list(images)
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        for turn in history or []:
            if isinstance(turn, dict):
                messages.append({"role": turn["role"], "content": turn["content"]})
            else:
                user, assistant = turn
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        placeholders = question.count(self.image_token)
        if placeholders == 0 and images:
            question = (self.image_token + "\n") * len(images) + question
        elif placeholders != len(images):
            raise ValueError(f"the question has {placeholders} {self.image_token} placeholders for {len(images)} images")
        messages.append({"role": "user", "content": question})
        return self.language.apply_chat_template(messages, add_generation_prompt=True)

    def embed_prompt(self, prompt: str, image_tokens: list[np.ndarray]) -> np.ndarray:
        """inputs_embeds [T, d_llm]: the prompt's text embedded, each placeholder replaced by its image's tokens."""
        pieces = prompt.split(self.image_token)
        if len(pieces) - 1 != len(image_tokens):
            raise ValueError(f"the prompt has {len(pieces) - 1} {self.image_token} placeholders for {len(image_tokens)} images")
        parts = []
        for i, text in enumerate(pieces):
            # Only the first piece gets the tokenizer's leading special tokens (BOS), as LLaVA's
            # tokenizer_image_token does.
            ids = self.language.encode(text, add_special_tokens=(i == 0)) if text or i == 0 else []
            if len(ids):
                parts.append(self.language.embed(ids))
            if i < len(image_tokens):
                parts.append(np.asarray(image_tokens[i], dtype=np.float32))
        return np.concatenate(parts, axis=0)

    def prepare(self, question: str, images: Iterable = (), history=None, system: str | None = None) -> np.ndarray:
        """inputs_embeds [T, d_llm] of a question about images: build_prompt, then embed_prompt."""
        return self._prepare(question, list(images), history, system)[0]

    def _prepare(self, question, images, history, system) -> tuple[np.ndarray, float]:
        prompt = self.build_prompt(question, images, history, system)
        tokens, timings = self._encode_images(images)
        return self.embed_prompt(prompt, tokens), timings["vision_ms"]

    def forward(self, question: str, images: Iterable = (), history=None, system: str | None = None) -> np.ndarray:
        """Logits [T, vocab] of every position of the rendered prompt (with image tokens spliced in)."""
        return self.language.forward(inputs_embeds=self.prepare(question, images, history, system))

    # ---------------------------------------------------------------------------------------------
    # Answers

    def chat(self, question: str, images: Iterable = (), history=None, system: str | None = None, *,
             max_new_tokens: int = 512, temperature: float | None = None, top_p: float | None = None,
             top_k: int | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             stop=None, stream: bool = False, json_schema=None, regex=None, grammar=None):
        """Answers a question about any number of images (paths, bytes, NumPy arrays or PIL images).
        history: earlier turns, as (question, answer) pairs or {"role", "content"} messages. Returns the
        answer, or with stream=True an iterator of text pieces. temperature None or 0 is greedy.
        json_schema / regex / grammar: structured output (see LanguageModel.generate)."""
        self._set_call({}, None)
        embeds, vision_ms = self._prepare(question, list(images), history, system)
        options = dict(max_new_tokens=max_new_tokens, stop=stop, seed=seed, top_k=top_k, top_p=top_p,
                       repetition_penalty=repetition_penalty, json_schema=json_schema, regex=regex, grammar=grammar,
                       **_sampling(temperature))
        return self._answer(embeds, vision_ms, options, stream)

    def chat_messages(self, messages: list, images: Iterable = (), *, max_new_tokens: int = 512,
                      temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                      repetition_penalty: float | None = None, seed: int | None = None, stop=None,
                      stream: bool = False, json_schema=None, regex=None, grammar=None):
        """Like chat(), for a whole conversation: `messages` are {"role", "content"} dicts whose text holds
        one image placeholder per image, `images` those images in order (eyecare.chat_messages.split_messages
        makes both from OpenAI-style messages). Returns the answer, or with stream=True an iterator of pieces."""
        self._set_call({}, None)
        prompt = self.language.apply_chat_template(list(messages), add_generation_prompt=True)
        tokens, timings = self._encode_images(list(images))
        embeds = self.embed_prompt(prompt, tokens)
        options = dict(max_new_tokens=max_new_tokens, stop=stop, seed=seed, top_k=top_k, top_p=top_p,
                       repetition_penalty=repetition_penalty, json_schema=json_schema, regex=regex, grammar=grammar,
                       **_sampling(temperature))
        return self._answer(embeds, timings["vision_ms"], options, stream)

    def _answer(self, embeds, vision_ms: float, options: dict, stream: bool):
        if stream:
            pieces = self.language.stream(inputs_embeds=embeds, **options)
            return self._streamed(pieces, vision_ms)
        out = self.language.generate(inputs_embeds=embeds, **options)
        self._record(out, vision_ms)
        return out.text

    def _streamed(self, pieces, vision_ms):
        try:
            for piece in pieces:
                yield piece
            if getattr(pieces, "output", None) is not None:
                self._record(pieces.output, vision_ms)
        finally:
            pieces.close()  # closing this iterator early stops the generation and frees the model at once

    def generate(self, requests: list, *, max_new_tokens: int = 512, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, repetition_penalty: float | None = None,
                 seed: int | None = None, stop=None, json_schema=None, regex=None, grammar=None) -> list[str]:
        """Answers several independent requests, decoded together on the device (max_batch at a time).
        Each request is a dict {"question", "images", "history", "system"} or a question string. The
        options are chat()'s, with the same defaults. Afterwards ``last_output`` is the list of
        GenerationOutputs and ``timings`` sums the figures of all the requests."""
        self._set_call({}, None)
        embeds, vision_ms = [], 0.0
        for r in requests:
            r = {"question": r} if isinstance(r, str) else dict(r)
            e, ms = self._prepare(r.get("question", ""), list(r.get("images", ())), r.get("history"), r.get("system"))
            embeds.append(e)
            vision_ms += ms
        outs = self.language.generate(inputs_embeds=embeds, max_new_tokens=max_new_tokens, stop=stop, seed=seed,
                                      top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                      json_schema=json_schema, regex=regex, grammar=grammar, **_sampling(temperature))
        # Sequences decoded together share one prefill and one decode time: count each group once.
        groups = outs[::self.language.max_batch]
        prefill_ms, decode_ms = sum(o.prefill_ms for o in groups), sum(o.decode_ms for o in groups)
        tokens = sum(len(o.token_ids) for o in outs)
        steps = sum(max(len(o.token_ids) - 1, 0) for o in outs)
        self._set_call({"vision_ms": vision_ms, "requests": len(outs), "prompt_tokens": sum(o.prompt_tokens for o in outs),
                        "prefill_ms": prefill_ms, "decode_ms": decode_ms, "tokens": tokens,
                        "decode_tokens_per_s": steps / (decode_ms / 1e3) if decode_ms > 0 else float("inf")}, outs)
        return [o.text for o in outs]

    def _record(self, out, vision_ms):
        self._set_call({"vision_ms": vision_ms, "prompt_tokens": out.prompt_tokens, "prefill_ms": out.prefill_ms,
                        "prefill_tokens_per_s": out.prefill_tokens_per_s, "decode_ms": out.decode_ms,
                        "decode_tokens_per_s": out.decode_tokens_per_s, "tokens": len(out.token_ids),
                        "finish_reason": out.finish_reason}, out)


def _sampling(temperature):
    if temperature is None or temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": float(temperature)}


def _parse_bytes(value) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().rstrip("B").rstrip("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _vision_layer(name: str):
    marker = ".encoder.layers."
    if marker not in name:
        return None
    return int(name.split(marker, 1)[1].split(".", 1)[0])


def _expected_tensors(config: dict, text_config) -> dict:
    vision = {**config["vision_config"]}
    for key, default in (("num_channels", 3),):
        vision.setdefault(key, default)
    expected = siglip_tensors(vision)
    groups = (config.get("connector") or {}).get("groups", CONNECTOR_DEFAULTS["groups"])
    expected.update(connector_tensors(vision["hidden_size"], text_config.hidden_size, len(groups)))
    expected.update({LANGUAGE_PREFIX + n: s for n, s in text_config.checkpoint_tensors().items()})
    return expected


def _check_checkpoint(ckpt, expected: dict, path: str) -> None:
    """One FormatError naming every missing, misshapen or mistyped tensor (and listing unexpected ones).
    expected: name -> (shape, dtype), dtype None for any float type (eyecare.quantize.expected_tensors)."""
    from . import _core

    found = {n: tuple(ckpt.info(n)[1]) for n in ckpt.names()}
    optional = {n for n in expected if ".post_layernorm." in n}
    missing = sorted(n for n in expected if n not in found and n not in optional)
    wrong = sorted(f"{n} is {found[n]}, expected {expected[n][0]}" for n in expected
                   if n in found and found[n] != tuple(expected[n][0]))
    wrong += sorted(f"{n} is {ckpt.info(n)[0]}, expected {expected[n][1]}" for n in expected
                    if n in found and expected[n][1] is not None and ckpt.info(n)[0] != expected[n][1])
    unexpected = sorted(n for n in found if n not in expected)
    if missing or wrong:
        lines = [f"{path}: the checkpoint does not match its config.json:"]
        lines += [f"  missing: {n}" for n in missing] + [f"  misshapen: {w}" for w in wrong]
        lines += [f"  unexpected: {n}" for n in unexpected]
        raise _core.FormatError("\n".join(lines))
    if unexpected:
        warnings.warn(f"{path}: {len(unexpected)} tensors the model does not use, e.g. {unexpected[0]}", stacklevel=3)
