"""Ask a chat model for text or for schema-valid JSON: any OpenAI-compatible endpoint (`eyecare serve`,
vLLM, OpenAI, ...) or an EyecareGPT checkpoint loaded in this process. Used by `eyecare bench judge`
and the data engine.

    from eyecare.endpoint import open_endpoint, parallel

    ep = open_endpoint("http://127.0.0.1:8000/v1")            # model: the server's first, or model="..."
    ep = open_endpoint("local:checkpoints/eyecaregpt-3.8b")   # in-process, no server
    text = ep.chat([{"role": "user", "content": "Hi"}], max_tokens=64)
    reply = ep.chat_json(messages, schema)                    # reply.value: parsed and schema-valid, or
    if reply.error: ...                                       # reply.error says why not (never raises for that)
    for item, result, exc in parallel(lambda m: ep.chat_json(m, schema), items, concurrency=4): ...

Targets: ``http(s)://host[:port][/v1]`` (the OpenAI base URL; ``/v1`` is added when there is no path)
or ``local:DIR``. The API key is read from the environment variable `api_key_env` (default
OPENAI_API_KEY) when it is set, and sent as a bearer token.

Where requests may go: only to loopback hosts (localhost, 127.0.0.0/8, ::1) unless
``allow_remote=True``; the CLI commands decide (the data engine needs ``--allow-remote``; `bench
judge` allows remote judges by default because the paper's judge is GPT-4, and says where it sends).
An API key is never sent over plain http to a non-loopback host.

Failures: HTTP 429, 5xx, timeouts and refused connections are retried with exponential backoff
(honouring Retry-After), ``max_retries`` times; then, or on any other error status, EndpointError.

JSON: chat_json asks with ``response_format={"type": "json_schema", ...}``. Servers that implement
it (eyecare serve, vLLM, OpenAI) constrain decoding to the schema; a server that rejects the
field is remembered as not supporting it, and is asked again with the schema written into the
prompt. Either way the answer is parsed and validated (jsonschema); an invalid one is sent back
with the problem and asked again, ``attempts`` times in all, then returned as a failure
(``reply.error``), never silently dropped.

Messages are OpenAI chat messages (content a string or text / image_url parts; see
eyecare.chat_messages; ``image_part(path)`` makes an image part).
"""
from __future__ import annotations

import abc
import dataclasses
import http.client
import ipaddress
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Optional
from urllib.parse import urlparse

from .chat_messages import image_part, split_messages  # noqa: F401  (image_part is part of this API)

__all__ = ["Endpoint", "HTTPEndpoint", "LocalEndpoint", "JSONReply", "EndpointError", "open_endpoint",
           "parallel", "is_loopback", "image_part"]

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class EndpointError(RuntimeError):
    """The endpoint could not be reached or refused the request (after the retries)."""


@dataclasses.dataclass
class JSONReply:
    value: object          # the parsed, schema-valid JSON (None on failure)
    text: str              # the model's last raw answer
    error: Optional[str]   # None, or why no valid JSON came back
    attempts: int          # answers asked for


def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address (a name that does not resolve is not)."""
    host = (host or "").strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _extract_json(text: str):
    """The JSON value in an answer, tolerating a Markdown code fence around it."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return json.loads(body)


def _schema_problem(value, validator) -> Optional[str]:
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"


class Endpoint(abc.ABC):
    """A chat model. Subclasses implement _complete(); chat and chat_json are shared."""

    name: str = "model"
    supports_schema: bool = True   # whether _complete constrains output to a schema it is given

    def chat(self, messages: list, *, max_tokens: int = 512, temperature: float = 0.0, seed: Optional[int] = None,
             schema: Optional[dict] = None) -> str:
        """The answer's text. With `schema`, asks for structured output (not validated here)."""
        return self._complete(list(messages), max_tokens=max_tokens, temperature=temperature, seed=seed,
                              schema=schema)

    def chat_json(self, messages: list, schema: dict, *, attempts: int = 3, max_tokens: int = 512,
                  temperature: float = 0.0, seed: Optional[int] = None) -> JSONReply:
        """Asks until the answer is JSON valid against `schema`, at most `attempts` times. EndpointError
        (unreachable endpoint) propagates; an answer that stays invalid is returned with .error set."""
        import jsonschema

        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        jsonschema.validators.validator_for(schema).check_schema(schema)
        validator = jsonschema.validators.validator_for(schema)(schema)
        conversation = list(messages)
        text, problem = "", None
        for attempt in range(1, attempts + 1):
            asked = conversation if self.supports_schema else _with_schema_instruction(conversation, schema)
            text = self.chat(asked, max_tokens=max_tokens, temperature=temperature, seed=seed,
                             schema=schema if self.supports_schema else None)
            try:
                value = _extract_json(text)
            except json.JSONDecodeError as exc:
                problem = f"not JSON ({exc.msg} at character {exc.pos})"
            else:
                problem = _schema_problem(value, validator)
                if problem is None:
                    return JSONReply(value=value, text=text, error=None, attempts=attempt)
                problem = f"does not match the schema {problem}"
            conversation = conversation + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"That answer is {problem}. Reply again with only the JSON object."}]
        return JSONReply(value=None, text=text, error=f"no valid JSON after {attempts} attempts: the last {problem}",
                         attempts=attempts)

    @abc.abstractmethod
    def _complete(self, messages, *, max_tokens, temperature, seed, schema) -> str:
        """One answer's text; with `schema` (when supports_schema), decoding constrained to it."""


def _with_schema_instruction(messages: list, schema: dict) -> list:
    """The conversation with the schema spelled out in the last user message (for servers without
    structured output)."""
    note = "\n\nReply with only one JSON object that matches this JSON Schema:\n" + json.dumps(schema)
    last = dict(messages[-1])
    content = last.get("content")
    last["content"] = (content + note) if isinstance(content, str) else list(content or []) + [{"type": "text", "text": note}]
    return messages[:-1] + [last]


class HTTPEndpoint(Endpoint):
    """An OpenAI-compatible /v1/chat/completions endpoint."""

    def __init__(self, url: str, *, model: Optional[str] = None, api_key_env: Optional[str] = "OPENAI_API_KEY",
                 allow_remote: bool = False, timeout: float = 300.0, max_retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 60.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"endpoint {url!r}: expected http(s)://host[:port][/v1] or local:DIR")
        path = parsed.path.rstrip("/")
        if path.endswith("/chat/completions"):
            path = path[: -len("/chat/completions")]
        self.base_url = f"{parsed.scheme}://{parsed.netloc}{path or '/v1'}"
        self.host = parsed.hostname
        loopback = is_loopback(self.host)
        if not loopback and not allow_remote:
            raise ValueError(f"endpoint {url!r} is not on this machine (not a loopback address); "
                             "sending data to it needs --allow-remote")
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if self.api_key and parsed.scheme == "http" and not loopback:
            raise ValueError(f"endpoint {url!r}: refusing to send the API key from ${api_key_env} over plain http "
                             "to another machine; use https")
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._model = model
        self._model_lock = threading.Lock()
        self.supports_schema = True   # until the server rejects response_format

    @property
    def name(self) -> str:
        """The model name sent with each request (the server's first model when none was given)."""
        with self._model_lock:
            if self._model is None:
                listed = self._request("GET", "/models").get("data") or []
                ids = [m.get("id") for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
                if not ids:
                    raise EndpointError(f"{self.base_url}/models lists no model; pass the model name")
                self._model = ids[0]
            return self._model

    def _request(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError:
                    raise EndpointError(f"{url} answered with something that is not JSON: {payload[:200]!r}") from None
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code not in RETRY_STATUSES:
                    raise EndpointError(f"{url} answered HTTP {exc.code}: {message}") from None
                last = f"HTTP {exc.code}: {message}"
                retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
                    socket.timeout) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                time.sleep(min(self.max_backoff, max(delay, retry_after or 0.0)))
        raise EndpointError(f"{url} failed {self.max_retries + 1} times; the last: {last}")

    def _complete(self, messages, *, max_tokens, temperature, seed, schema) -> str:
        body = {"model": self.name, "messages": messages, "max_tokens": int(max_tokens),
                "temperature": float(temperature)}
        if seed is not None:
            body["seed"] = int(seed)
        if schema is not None and self.supports_schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        try:
            reply = self._request("POST", "/chat/completions", body)
        except EndpointError as exc:
            # A server without structured output rejects the field (400/422 naming it): remember that and
            # ask again with the schema in the prompt.
            if "response_format" in body and ("HTTP 400" in str(exc) or "HTTP 422" in str(exc)) \
                    and ("response_format" in str(exc) or "json_schema" in str(exc)):
                self.supports_schema = False
                return self._complete(_with_schema_instruction(messages, schema), max_tokens=max_tokens,
                                      temperature=temperature, seed=seed, schema=None)
            raise
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url}/chat/completions answered without choices[0].message.content: "
                                f"{json.dumps(reply)[:200]}") from None
        return content if isinstance(content, str) else ""


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        body = json.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body, dict) and body.get("detail"):
            return str(body["detail"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return raw[:200].decode("utf-8", errors="replace") or exc.reason or "no body"


def _seconds(value) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class LocalEndpoint(Endpoint):
    """An EyecareGPT checkpoint in this process (loaded on first use). Calls take turns on the model."""

    def __init__(self, directory, *, model=None, **load_options):
        self.directory = os.fspath(directory)
        self.name = os.path.basename(os.path.abspath(self.directory))
        self._model = model
        self._load_options = load_options
        self._lock = threading.Lock()
        # The engine constrains decoding to the schema (eyecare.structured); answers are still validated.
        self.supports_schema = True

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                from .model import EyecareGPT

                self._model = EyecareGPT.from_pretrained(self.directory, progress=False, **self._load_options)
            return self._model

    def _complete(self, messages, *, max_tokens, temperature, seed, schema) -> str:
        model = self.model
        texts, images = split_messages(messages, image_token=model.image_token, local_images=os.sep)
        options = {"json_schema": schema} if schema is not None and self.supports_schema else {}
        with self._lock:  # timings and the vision pass are per model: one request at a time
            return model.chat_messages(texts, images, max_new_tokens=max_tokens, temperature=temperature,
                                       seed=seed, **options)


def open_endpoint(target: str, *, model: Optional[str] = None, api_key_env: Optional[str] = "OPENAI_API_KEY",
                  allow_remote: bool = False, **options) -> Endpoint:
    """An Endpoint for ``local:DIR`` or an http(s) URL (see the module doc). `options` go to HTTPEndpoint
    (timeout, max_retries, backoff, max_backoff) or to EyecareGPT.from_pretrained for local models."""
    if target.startswith("local:"):
        directory = target[len("local:"):]
        if not os.path.isdir(directory):
            raise ValueError(f"{target!r}: {directory!r} is not a checkpoint folder")
        return LocalEndpoint(directory, **options)
    return HTTPEndpoint(target, model=model, api_key_env=api_key_env, allow_remote=allow_remote, **options)


def parallel(fn: Callable, items: Iterable, concurrency: int = 1) -> Iterator[tuple]:
    """Calls fn(item) for every item on `concurrency` threads, at most that many in flight, yielding
    (item, result, None) or (item, None, exception) as each call finishes (not in input order)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    running = {}
    try:
        while True:
            while len(running) < concurrency:
                item = next(items, _END)
                if item is _END:
                    break
                running[pool.submit(fn, item)] = item
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                exc = future.exception()
                yield (item, None, exc) if exc is not None else (item, future.result(), None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_END = object()
