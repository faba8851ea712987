"""Chat prompts from a checkpoint's Jinja ``chat_template``, rendered as transformers'
``apply_chat_template`` renders them: a sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that does not escape HTML,
``raise_exception`` and ``strftime_now``, and the tokenizer's named special tokens (``bos_token``,
``eos_token``, ...) as variables.

Example::

    render_chat_template(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                         special_tokens={"eos_token": "<|endoftext|>"})
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would corrupt prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    # Templates set attributes on namespaces; refuse dunder names so they cannot reach Python internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _Generation(jinja2.ext.Extension):
    # transformers' {% generation %} ... {% endgeneration %} marks assistant text for training masks;
    # for rendering it is transparent.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compiles a template (cached: templates are long and a chat renders one many times)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    env.globals["dict"] = dict
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template is not valid Jinja: {e}") from None


def _plain(value: Any) -> Any:
    # Only plain JSON-like data reaches the sandbox (as transformers does): other objects become a
    # placeholder naming their type.
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True,
                         special_tokens: dict[str, str] | None = None, tools: list | None = None,
                         documents: list | None = None, **kwargs) -> str:
    """The prompt string for a conversation: a list of ``{"role": ..., "content": ...}`` dicts (system,
    user, assistant, tool turns, as the template understands them). Keys whose value is None are
    dropped from each message, as transformers does. Extra keyword arguments become template variables."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("a chat needs at least one message")
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise TypeError(f"chat messages must be dicts with 'role' and 'content', not {m!r}")
        chat.append({k: v for k, v in m.items() if v is not None})
    variables = {**(special_tokens or {}), **kwargs}
    try:
        return compile_chat_template(template).render(
            messages=_plain(chat), tools=_plain(tools), documents=_plain(documents),
            add_generation_prompt=add_generation_prompt, **_plain(variables))
    except jinja2.exceptions.TemplateError as e:
        if isinstance(e, jinja2.exceptions.SecurityError):
            raise
        raise ValueError(f"the chat template failed: {e}") from None
