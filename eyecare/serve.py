"""`eyecare serve`: an OpenAI-compatible HTTP server for one EyecareGPT checkpoint (Starlette + uvicorn,
the extra ``eyecare[serve]``).

    eyecare serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allow-local-images DIR]

Routes: ``POST /v1/chat/completions`` (text and image_url parts; max_tokens, temperature, top_p, seed,
stop, stream, response_format with json_schema; usage counts), ``GET /v1/models``, ``GET /health``.

Concurrency: the model answers one request at a time. Requests wait in arrival order for it (an
asyncio lock, FIFO) and each runs on a worker thread, so the server keeps accepting, streaming and
noticing disconnects meanwhile. A client that disconnects (while waiting, or mid-answer) has its
generation stopped at the next token and its turn given to the next request. Batching several
requests into one decode is not done.

Bad input never reaches a traceback: malformed JSON, unknown fields, bad values, bad messages or
images, an image over the pixel limit, a body over the size limit (checked from Content-Length and
while reading), a prompt longer than the context, a schema that cannot be compiled each get a 4xx
with an OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}``. With an API key,
every /v1 route needs ``Authorization: Bearer KEY`` (compared in constant time; 401 otherwise).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from .chat_messages import MessageError, split_messages

DEFAULT_MAX_BODY_BYTES = 32 << 20   # a few base64 images; --max-body-mb changes it
FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
          "stream", "stream_options", "response_format", "n", "user"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class APIError(Exception):
    """A request the server refuses: becomes an OpenAI-style error body with this status."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------------------
# Request validation (pure functions: the tests and the server share them)

def _number(body, name, low, high, *, integer=False, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise APIError(400, f"{name} must be {'an integer' if integer else 'a number'}", param=name)
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise APIError(400, f"{name} must be between {low} and {high}, not {value}", param=name)
    return value


def parse_request(body, *, model_name: str, max_context: int) -> dict:
    """The generation options of a /v1/chat/completions body (raises APIError for anything wrong)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise APIError(400, f"unknown field {unknown[0]!r} (this server takes: {', '.join(sorted(FIELDS))})",
                       param=unknown[0], code="unknown_field")
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(404, f"the model {model!r} does not exist here; this server has {model_name!r}",
                       param="model", code="model_not_found")
    if "messages" not in body:
        raise APIError(400, "messages is required", param="messages")
    n = _number(body, "n", 1, 1, integer=True, default=1)
    del n
    max_tokens = _number(body, "max_completion_tokens", 1, max_context, integer=True,
                         default=_number(body, "max_tokens", 1, max_context, integer=True, default=None))
    temperature = _number(body, "temperature", 0, 2, default=None)
    top_p = _number(body, "top_p", 0, 1, default=None)
    if top_p == 0:
        raise APIError(400, "top_p must be above 0", param="top_p")
    seed = _number(body, "seed", -2**63, 2**64 - 1, integer=True, default=None)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise APIError(400, "stop must be a non-empty string or a list of at most 4 of them", param="stop")
        stop = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise APIError(400, "stream_options may only hold include_usage", param="stream_options")
        include_usage = bool(stream_options.get("include_usage"))
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise APIError(400, "user must be a string", param="user")
    schema = _response_format(body.get("response_format"))
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": None if seed is None else seed % 2**64, "stop": stop, "stream": stream,
            "include_usage": include_usage, "json_schema": schema, "messages": body["messages"]}


def _response_format(value):
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise APIError(400, "response_format must be an object with a type", param="response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise APIError(400, f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                       param="response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
        raise APIError(400, "response_format.json_schema must be an object with a schema", param="response_format")
    return spec.get("schema", {})


# ------------------------------------------------------------------------------------------------
# One generation on the worker thread

class _Job:
    """A request's generation: runs on a thread, hands events to the event loop, stops when cancelled."""

    def __init__(self, server: "Server", texts, images, options):
        self.server = server
        self.texts, self.images, self.options = texts, images, options
        self.cancelled = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.thread: Optional[threading.Thread] = None
        self.holds_slot = False
        self.watcher: Optional[asyncio.Task] = None
        self.finished = False
        self.outcome: Optional[str] = None   # "completed", "cancelled" or "failed" once known

    def _put(self, kind, value=None):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def _run(self):
        model = self.server.model
        pieces = None
        try:
            pieces = model.chat_messages(self.texts, self.images, stream=True, **self.options)
            for piece in pieces:
                if self.cancelled.is_set():
                    break
                self._put("piece", piece)
            else:
                self._put("done", model.last_output)
                return
            self._put("cancelled")
        except BaseException as exc:  # every failure goes back to the request, never kills the server
            self._put("error", exc)
        finally:
            if pieces is not None:
                pieces.close()  # releases the model at once, even when stopped early

    def start(self):
        self.thread = threading.Thread(target=self._run, name="eyecare-generate", daemon=True)
        self.thread.start()

    async def next_event(self):
        event = await self.queue.get()
        if event[0] != "piece":
            self.outcome = {"done": "completed", "cancelled": "cancelled"}.get(event[0], "failed")
        return event

    async def finish(self):
        """Stops the generation (if running), waits until the model is free, gives the turn on."""
        if self.finished:
            return
        self.finished = True
        outcome = self.outcome or ("cancelled" if self.cancelled.is_set() else "failed")
        self.server.counts[outcome] += 1
        self.cancelled.set()
        if self.thread is not None:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, self.thread.join))
        if self.holds_slot:
            self.holds_slot = False
            self.server.slot.release()
        if self.watcher is not None:
            self.watcher.cancel()


def _api_error_of(exc: BaseException) -> APIError:
    """The 4xx an exception from the model means, or a 500 that says nothing of the internals."""
    from .structured import GrammarError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, MessageError):
        return APIError(400, str(exc), param="messages")
    if isinstance(exc, GrammarError):
        return APIError(400, str(exc), param="response_format")
    if isinstance(exc, MemoryError):
        return APIError(503, "the device has no memory left for this request", kind="server_error")
    if isinstance(exc, ValueError):  # eyecare.FormatError (a bad image), limits, a prompt over the context
        message = str(exc)
        code = "context_length_exceeded" if "max_context" in message else None
        return APIError(400, message, param="messages", code=code)
    return APIError(500, "the server failed to answer this request (see its log)", kind="server_error")


# ------------------------------------------------------------------------------------------------
# The application

class Server:
    """The model, the turn (slot) for it, and the options; ``app`` is the ASGI application."""

    def __init__(self, model, *, model_name: str, api_key: Optional[str] = None, local_images: Optional[str] = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        self.model = model
        self.model_name = model_name
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.local_images = local_images
        self.max_body_bytes = int(max_body_bytes)
        self.created = int(time.time())
        self._slot: Optional[asyncio.Lock] = None
        # What /health reports: requests answered, stopped because their client left, failed; waiting now.
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "waiting": 0}

        async def http_error(request, exc):
            return self._error(APIError(exc.status_code, exc.detail or "not found", kind="invalid_request_error"))

        async def any_error(request, exc):
            return self._error(_api_error_of(exc))

        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ], exception_handlers={HTTPException: http_error, Exception: any_error})

    @property
    def slot(self) -> asyncio.Lock:
        if self._slot is None:  # made inside the server's event loop
            self._slot = asyncio.Lock()
        return self._slot

    @property
    def max_context(self) -> int:
        return self.model.language.max_context

    def _error(self, err: APIError):
        from starlette.responses import JSONResponse

        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(error_body(err.status, err.message, err.kind, err.param, err.code), status_code=err.status,
                            headers=headers)

    def _authorize(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), self.api_key)
        if not ok:
            raise APIError(401, "a valid API key is required (Authorization: Bearer KEY)" if given else
                           "missing API key (Authorization: Bearer KEY)", kind="invalid_request_error",
                           code="invalid_api_key")

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "requests": dict(self.counts)})

    async def models(self, request):
        from starlette.responses import JSONResponse

        try:
            self._authorize(request)
        except APIError as err:
            return self._error(err)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "eyecare"}]})

    async def _read_body(self, request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                raise APIError(400, "Content-Length is not a number") from None
            if declared_n > self.max_body_bytes:
                raise APIError(413, f"the body ({declared_n} bytes) is over the limit of {self.max_body_bytes} bytes "
                                    "(eyecare serve --max-body-mb)", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise APIError(413, f"the body is over the limit of {self.max_body_bytes} bytes "
                                    "(eyecare serve --max-body-mb)", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def chat_completions(self, request):
        try:
            self._authorize(request)
            raw = await self._read_body(request)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise APIError(400, f"the body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
            params = parse_request(body, model_name=self.model_name, max_context=self.max_context)
            try:
                texts, images = split_messages(params["messages"], image_token=self.model.image_token,
                                               local_images=self.local_images)
            except MessageError as exc:
                raise APIError(400, str(exc), param="messages") from None
        except APIError as err:
            return self._error(err)
        options = {"max_new_tokens": params["max_tokens"] or 512, "temperature": params["temperature"],
                   "top_p": params["top_p"], "seed": params["seed"], "stop": params["stop"],
                   "json_schema": params["json_schema"]}
        if params["max_tokens"] is None:
            options["max_new_tokens"] = min(512, self.max_context)
        job = _Job(self, texts, images, options)
        job.watcher = asyncio.ensure_future(_watch_disconnect(request.receive, job))
        try:
            self.counts["waiting"] += 1
            try:
                await self.slot.acquire()
            finally:
                self.counts["waiting"] -= 1
            job.holds_slot = True
            if job.cancelled.is_set():  # the client left while waiting for its turn
                await job.finish()
                from starlette.responses import Response

                return Response(status_code=499)
            job.start()
            first = await job.next_event()
            if first[0] == "error":
                await job.finish()
                return self._error(_api_error_of(first[1]))
        except BaseException:
            await job.finish()
            raise
        ident = "chatcmpl-" + uuid.uuid4().hex
        if params["stream"]:
            return _EventStream(job, first, ident, self.model_name, params["include_usage"])
        return await self._complete(job, first, ident)

    async def _complete(self, job: _Job, event, ident: str):
        from starlette.responses import JSONResponse, Response

        text = []
        try:
            while event[0] == "piece":
                text.append(event[1])
                event = await job.next_event()
        finally:
            await job.finish()
        if event[0] == "cancelled":
            return Response(status_code=499)
        if event[0] == "error":
            return self._error(_api_error_of(event[1]))
        out = event[1]
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": int(time.time()), "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "logprobs": None, "finish_reason": FINISH.get(out.finish_reason, "stop")}],
            "usage": _usage(out)})


def _usage(out) -> dict:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": len(out.token_ids),
            "total_tokens": out.prompt_tokens + len(out.token_ids)}


async def _watch_disconnect(receive, job: _Job):
    """Cancels the job when the client goes away (the body has been read: the next message is that)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()
            return


class _EventStream:
    """An ASGI response sending OpenAI chat.completion.chunk events, then ``data: [DONE]``."""

    def __init__(self, job: _Job, first, ident: str, model_name: str, include_usage: bool):
        self.job, self.first, self.ident, self.model_name = job, first, ident, model_name
        self.include_usage = include_usage
        self.created = int(time.time())

    def _chunk(self, delta: dict, finish=None, usage=None) -> bytes:
        body = {"id": self.ident, "object": "chat.completion.chunk", "created": self.created, "model": self.model_name,
                "choices": [] if usage is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                                          "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode("utf-8") + b"\n\n"

    async def __call__(self, scope, receive, send):
        job = self.job
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})
        try:
            await send({"type": "http.response.body", "body": self._chunk({"role": "assistant", "content": ""}),
                        "more_body": True})
            event = self.first
            while event[0] == "piece":
                if job.cancelled.is_set():
                    return
                await send({"type": "http.response.body", "body": self._chunk({"content": event[1]}), "more_body": True})
                event = await job.next_event()
            if event[0] == "cancelled":
                return
            if event[0] == "error":
                err = _api_error_of(event[1])
                data = {"error": error_body(err.status, err.message, err.kind, err.param, err.code)["error"]}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(data).encode() + b"\n\n",
                            "more_body": True})
            else:
                out = event[1]
                await send({"type": "http.response.body", "more_body": True,
                            "body": self._chunk({}, finish=FINISH.get(out.finish_reason, "stop"))})
                if self.include_usage:
                    await send({"type": "http.response.body", "body": self._chunk({}, usage=_usage(out)),
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            await job.finish()


# ------------------------------------------------------------------------------------------------
# The command

def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          allow_local_images: Optional[str] = None, max_body_mb: float = DEFAULT_MAX_BODY_BYTES / 2**20,
          max_pixels: Optional[int] = None, max_context: int = 4096, model_name: Optional[str] = None,
          log_level: str = "warning") -> int:
    """Loads the checkpoint and serves it until interrupted (the `eyecare serve` command)."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("eyecare serve needs the [serve] extra: pip install 'eyecare[serve]'") from None
    from .endpoint import is_loopback
    from .model import EyecareGPT

    if allow_local_images is not None and not os.path.isdir(allow_local_images):
        raise ValueError(f"--allow-local-images {allow_local_images!r} is not a folder")
    if not (max_body_mb > 0):
        raise ValueError("--max-body-mb must be positive")
    model = EyecareGPT.from_pretrained(model_dir, max_context=max_context, progress=False)
    if max_pixels is not None:
        model.processor.max_pixels = int(max_pixels)
    name = model_name or os.path.basename(os.path.abspath(model_dir))
    server = Server(model, model_name=name, api_key=api_key, local_images=allow_local_images,
                    max_body_bytes=int(max_body_mb * 2**20))
    # The socket is bound and listening before the line below is printed, so a client (or a test that
    # reads the line to learn the port of --port 0) can connect at once: uvicorn then serves it.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    if is_loopback(host):
        reach = "loopback only: other machines cannot connect (--host 0.0.0.0 to change that)"
    else:
        reach = "REACHABLE FROM OTHER MACHINES" + ("" if api_key else " and without an API key (--api-key)")
    print(f"eyecare serve: model {name!r} at {where} ({reach}); requests take turns on the model; "
          f"bodies up to {server.max_body_bytes} bytes, images up to {model.processor.max_pixels} pixels"
          + (f"; local images from {os.path.abspath(allow_local_images)}" if allow_local_images else ""),
          file=sys.stderr, flush=True)
    config = uvicorn.Config(server.app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        model.close()
    return 0
