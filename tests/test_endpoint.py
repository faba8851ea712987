"""eyecare.endpoint and eyecare.jsonl: retries and backoff, structured output and its fallback, validation
with bounded retries, the loopback rule, parallel calls, and the append-only log.

The HTTP side talks to a scripted OpenAI-style server on a loopback port (http.server, one canned
answer per request), so that each failure an endpoint can produce (429, 500, a rejected
response_format, malformed JSON) is produced for real over a socket."""
import json
import threading
from loopback_server import LoopbackServer, QuietHandler

import pytest

from eyecare.endpoint import EndpointError, HTTPEndpoint, is_loopback, open_endpoint, parallel
from eyecare.jsonl import AppendLog, read_rows

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["score"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Rate it."}]


def _completion(text):
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


class Scripted:
    """A server that answers each request with the next (status, body[, headers]) of its script."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(QuietHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append({"method": self.command, "path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                status, payload, *headers = outer.script.pop(0)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_json(status, data, headers[0] if headers else None)

            do_GET = do_POST = _answer

        self.http = LoopbackServer(Handler)
        self.url = self.http.url

    def close(self):
        self.http.close()


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def _endpoint(server, **options):
    return HTTPEndpoint(server.url, model="judge", api_key_env=None, backoff=0.001, max_backoff=0.01, **options)


def test_json_with_structured_output_is_parsed_and_sent_with_the_schema(scripted):
    server = scripted([_completion('{"score": 4}')])
    reply = _endpoint(server).chat_json(MESSAGES, SCHEMA)
    assert (reply.value, reply.error, reply.attempts) == ({"score": 4}, None, 1)
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "judge"
    assert sent["body"]["response_format"] == {"type": "json_schema",
                                              "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


def test_429_and_500_are_retried_then_the_answer_is_used(scripted):
    server = scripted([(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
                       (503, {"error": {"message": "busy"}}), _completion("hello")])
    assert _endpoint(server).chat(MESSAGES) == "hello"
    assert len(server.requests) == 3


def test_retries_are_bounded_and_the_last_error_is_named(scripted):
    server = scripted([(500, {"error": {"message": "boom"}})] * 3)
    with pytest.raises(EndpointError, match=r"failed 3 times; the last: HTTP 500: boom"):
        _endpoint(server, max_retries=2).chat(MESSAGES)
    assert len(server.requests) == 3


def test_a_client_error_is_not_retried(scripted):
    server = scripted([(401, {"error": {"message": "bad key"}})])
    with pytest.raises(EndpointError, match="HTTP 401: bad key"):
        _endpoint(server).chat(MESSAGES)
    assert len(server.requests) == 1


def test_a_server_without_response_format_gets_the_schema_in_the_prompt(scripted):
    server = scripted([(400, {"error": {"message": "unknown field response_format"}}), _completion('{"score": 2}'),
                       _completion('{"score": 3}')])
    endpoint = _endpoint(server)
    assert endpoint.chat_json(MESSAGES, SCHEMA).value == {"score": 2}
    assert endpoint.chat_json(MESSAGES, SCHEMA).value == {"score": 3}
    assert not endpoint.supports_schema
    for request in server.requests[1:]:
        assert "response_format" not in request["body"]
        assert json.dumps(SCHEMA) in request["body"]["messages"][-1]["content"]


def test_invalid_answers_are_sent_back_then_recorded_as_a_failure(scripted):
    server = scripted([_completion("not json"), _completion('{"score": 9}'), _completion('{"grade": 1}')])
    reply = _endpoint(server).chat_json(MESSAGES, SCHEMA, attempts=3)
    assert reply.value is None and reply.attempts == 3 and reply.text == '{"grade": 1}'
    assert reply.error.startswith("no valid JSON after 3 attempts: the last does not match the schema")
    second = server.requests[1]["body"]["messages"]
    assert second[1] == {"role": "assistant", "content": "not json"}
    assert second[2]["content"].startswith("That answer is not JSON")
    third = server.requests[2]["body"]["messages"]
    assert "9 is greater than the maximum of 5" in third[-1]["content"]


def test_a_fenced_answer_is_accepted(scripted):
    server = scripted([_completion('```json\n{"score": 5}\n```')])
    assert _endpoint(server).chat_json(MESSAGES, SCHEMA).value == {"score": 5}


def test_the_model_name_comes_from_the_server_when_not_given(scripted, monkeypatch):
    monkeypatch.setenv("EYECARE_TEST_KEY", "sk-test")
    server = scripted([(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]}), _completion("ok")])
    endpoint = HTTPEndpoint(server.url, api_key_env="EYECARE_TEST_KEY", backoff=0.001)
    assert endpoint.chat(MESSAGES) == "ok"
    assert server.requests[0]["path"] == "/v1/models" and server.requests[1]["body"]["model"] == "tiny"
    assert server.requests[1]["auth"] == "Bearer sk-test"


def test_a_refused_connection_is_an_endpoint_error_after_the_retries():
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        endpoint = HTTPEndpoint(f"http://127.0.0.1:{port}", model="m", api_key_env=None, max_retries=1, backoff=0.001)
        assert endpoint.base_url == f"http://127.0.0.1:{port}/v1"
        with pytest.raises(EndpointError, match="failed 2 times"):
            endpoint.chat(MESSAGES)


def test_remote_hosts_need_allow_remote(monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.1.2.3") and not is_loopback("192.0.2.7")
    with pytest.raises(ValueError, match="needs --allow-remote"):
        open_endpoint("http://192.0.2.7:8000/v1")
    assert open_endpoint("https://192.0.2.7/v1", allow_remote=True, model="m").base_url == "https://192.0.2.7/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with pytest.raises(ValueError, match="over plain http"):
        open_endpoint("http://192.0.2.7:8000/v1", allow_remote=True)
    with pytest.raises(ValueError, match="expected http"):
        open_endpoint("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        open_endpoint("local:/no/such/folder")


def test_parallel_keeps_at_most_concurrency_calls_in_flight_and_returns_every_outcome():
    lock, state = threading.Lock(), {"now": 0, "most": 0}
    release = threading.Event()

    def work(i):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            if state["most"] == 3:
                release.set()
        release.wait(10)
        with lock:
            state["now"] -= 1
        if i == 5:
            raise ValueError("five")
        return i * i

    outcomes = {item: (result, exc) for item, result, exc in parallel(work, range(8), concurrency=3)}
    assert state["most"] == 3
    assert {i: r for i, (r, e) in outcomes.items() if e is None} == {i: i * i for i in range(8) if i != 5}
    assert str(outcomes[5][1]) == "five"


def test_append_log_survives_a_cut_last_line_and_refuses_foreign_files(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    with AppendLog(path) as log:
        log.append({"id": "a", "x": 1})
        log.append({"id": "b", "x": "é"})
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "x"')  # a kill in the middle of a write
    assert [r["id"] for r in read_rows(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b'"x"')
    assert [r["id"] for r in read_rows(path, repair=True)] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n")
    (tmp_path / "junk.jsonl").write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"junk.jsonl:2: not a judgment line \(no 'id'\)"):
        read_rows(tmp_path / "junk.jsonl", what="judgment")
    with pytest.raises(KeyError):
        read_rows(tmp_path / "junk.jsonl", error=KeyError)


def test_a_local_model_answers_as_chat_does_with_schema_valid_json_and_a_cut_answer_is_a_recorded_failure(tmp_path):
    from eyecare.endpoint import image_part
    from eyecare.model import EyecareGPT
    from eyecare.tiny import make_tiny

    path = make_tiny(tmp_path / "tiny", "phi3", dtype="float32")
    model = EyecareGPT.from_pretrained(path, progress=False)
    image = open(__file__.rsplit("/", 2)[0] + "/examples/bench/images/fundus.png", "rb").read()
    endpoint = open_endpoint(f"local:{path}", model=model)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [image_part(image), {"type": "text", "text": "Describe it."}]}]
    expected = model.chat("Describe it.", images=[image], system="Be brief.", max_new_tokens=12)
    assert endpoint.chat(messages, max_tokens=12) == expected
    # Decoding constrained to the schema: even a random tiny model answers valid JSON at once.
    assert endpoint.supports_schema
    reply = endpoint.chat_json(MESSAGES, SCHEMA, attempts=2, max_tokens=16)
    assert reply.error is None and reply.attempts == 1 and reply.value["score"] in range(1, 6)
    assert reply.text == model.chat("Rate it.", json_schema=SCHEMA, max_new_tokens=16)
    # An answer cut short by max_tokens is not JSON: a recorded failure after the attempts, not an exception.
    reply = endpoint.chat_json(MESSAGES, SCHEMA, attempts=2, max_tokens=3)
    assert reply.value is None and reply.attempts == 2
    assert reply.error.startswith("no valid JSON after 2 attempts: the last not JSON")
