"""The checkpoint's tokenizer: ``tokenizer.json`` run by the Hugging Face ``tokenizers`` library, with
the special tokens and chat template of ``tokenizer_config.json`` (or ``chat_template.jinja``, where
newer transformers versions save it).

:class:`TextStreamer` turns generated token ids into text pieces as they arrive, holding back
incomplete UTF-8 characters (a byte-level or byte-fallback token may carry part of one), so that the
pieces concatenate to exactly the text of decoding all ids at once.
"""
from __future__ import annotations

import json
import os

from .chat_template import render_chat_template

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _clean_up_tokenization(text: str) -> str:
    # transformers' clean_up_tokenization, applied when tokenizer_config.json asks for it.
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Tokenizer:
    """Encodes and decodes text, and renders chat prompts. ``Tokenizer(directory)`` reads
    ``tokenizer.json`` (required), ``tokenizer_config.json`` and ``chat_template.jinja`` (optional)."""

    def __init__(self, directory: str | os.PathLike):
        import tokenizers

        directory = os.fspath(directory)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} has no tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception for malformed files
            raise ValueError(f"{path} is not a valid tokenizer: {e}") from None
        self.config: dict = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                self.config = json.load(f)
            if not isinstance(self.config, dict):
                raise ValueError(f"{config_path} must hold a JSON object")
        self.special_tokens = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(self.config.get(k))) is not None}
        if "add_bos_token" in self.config or "add_eos_token" in self.config or self._tok.post_processor is None:
            self._set_post_processor(bool(self.config.get("add_bos_token")), bool(self.config.get("add_eos_token")))
        self.chat_template = self._find_chat_template(directory)
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False))

    def _set_post_processor(self, add_bos: bool, add_eos: bool):
        # As transformers does when tokenizer_config.json says add_bos_token / add_eos_token (or
        # tokenizer.json has no post-processor): that decides what encode() adds, over tokenizer.json.
        from tokenizers import processors

        special = []
        for add, key in ((add_bos, "bos_token"), (add_eos, "eos_token")):
            token = self.special_tokens.get(key) if add else None
            token_id = None if token is None else self._tok.token_to_id(token)
            special.append((token, token_id) if token_id is not None else None)
        bos, eos = special
        single = f"{bos[0] + ':0 ' if bos else ''}$A:0{' ' + eos[0] + ':0' if eos else ''}"
        pair = f"{single}{' ' + bos[0] + ':1' if bos else ''} $B:1{' ' + eos[0] + ':1' if eos else ''}"
        self._tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                 special_tokens=[t for t in special if t])

    def _find_chat_template(self, directory: str) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            return template
        path = os.path.join(directory, "chat_template.jinja")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        return None

    def to_json(self) -> str:
        """tokenizer.json as this tokenizer runs it (with the post-processor tokenizer_config.json chose)."""
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens.get("eos_token")
        return None if eos is None else self._tok.token_to_id(eos)

    @property
    def bos_token_id(self) -> int | None:
        bos = self.special_tokens.get("bos_token")
        return None if bos is None else self._tok.token_to_id(bos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; add_special_tokens applies tokenizer.json's post-processor (e.g. a BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"can only encode a str, not {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def __call__(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.encode(text, add_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False,
                            chat_template: str | None = None, **kwargs):
        """The prompt for a conversation, as transformers' ``apply_chat_template`` renders it; token ids
        with ``tokenize=True`` (encoded without adding special tokens: the template writes them)."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)")
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.special_tokens, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


class TextStreamer:
    """Incremental detokenization: ``push(id)`` returns the text that token completes ("" while a
    character is still incomplete), ``flush()`` whatever remains. Each piece is the difference between
    decoding the ids from an offset a token or two back with and without the newest ones, so decoders
    that treat the first token specially (SentencePiece's leading space) give the same text as a
    decode of everything."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decoded window
        self._read = 0    # ids up to here have been turned into text

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):]
