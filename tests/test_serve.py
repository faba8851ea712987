"""`eyecare serve`, for real: the server runs in a subprocess on a free loopback port with a tiny model, and
is talked to with the official `openai` client (and raw HTTP where the client hides the wire). Answers
are compared with the same checkpoint's model.chat in this process: greedy text, streaming pieces,
schema-constrained JSON, seeded sampling, concurrent clients; a client that disconnects mid-stream
has its generation stopped; every bad input gets its 4xx with an OpenAI-style error body."""
import base64
import http.client
import io
import json
import os
import socket
import threading

import jsonschema
import openai
import pytest
from PIL import Image

from eyecare.model import EyecareGPT
from eyecare.tiny import make_tiny
from served import KEY, ROOT, start_server, stop_server

FUNDUS = os.path.join(ROOT, "examples", "bench", "images", "fundus.png")   # 128 x 128
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["grade", "eye"],
          "properties": {"grade": {"type": "integer", "minimum": 0, "maximum": 4},
                         "eye": {"enum": ["left", "right"]}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = str(make_tiny(root / "tiny", "phi3", dtype="float32"))
    images = root / "images"
    images.mkdir()
    (images / "fundus.png").write_bytes(open(FUNDUS, "rb").read())
    served = start_server(model_dir, "--api-key", KEY, "--allow-local-images", str(images), "--max-body-mb", "1",
                          "--max-pixels", "20000")
    model = EyecareGPT.from_pretrained(model_dir, progress=False)
    yield served, model, images
    model.close()
    stop_server(served)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def png(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 60, 30)).save(out, "PNG")
    return out.getvalue()


def test_greedy_answers_equal_model_chat_with_usage(setup):
    served, model, _ = setup
    client = served.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    image = open(FUNDUS, "rb").read()
    reply = client.chat.completions.create(model="tiny", max_tokens=10, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                     {"type": "text", "text": "Describe it."}]}])
    assert reply.choices[0].message.content == model.chat("Describe it.", images=[image], system="Be brief.",
                                                          max_new_tokens=10)
    out = model.last_output
    assert reply.usage.prompt_tokens == out.prompt_tokens and reply.usage.completion_tokens == len(out.token_ids)
    assert reply.choices[0].finish_reason == {"length": "length", "eos": "stop"}[out.finish_reason]
    # Sampling with a seed, top_p and a stop string: the same answer as in process.
    reply = client.chat.completions.create(model="tiny", max_tokens=16, temperature=0.9, top_p=0.9, seed=7, stop=["e"],
                                           messages=[{"role": "user", "content": "Is there glaucoma?"}])
    assert reply.choices[0].message.content == model.chat("Is there glaucoma?", max_new_tokens=16, temperature=0.9,
                                                          top_p=0.9, seed=7, stop=["e"])


def test_streamed_pieces_join_to_the_answer_and_end_with_done(setup):
    served, model, _ = setup
    messages = [{"role": "user", "content": "What does the OCT show?"}]
    expected = model.chat("What does the OCT show?", max_new_tokens=14)
    stream = served.client().chat.completions.create(model="tiny", max_tokens=14, messages=messages, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1
    assert chunks[-1].usage.completion_tokens == len(model.last_output.token_ids)
    status, body = served.raw("POST", "/v1/chat/completions", json.dumps(
        {"messages": messages, "max_tokens": 14, "stream": True}), {"Content-Type": "application/json"})
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and events[-1] == "data: [DONE]"
    joined = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert joined == expected


def test_response_format_json_schema_gives_the_constrained_answer(setup):
    served, model, _ = setup
    reply = served.client().chat.completions.create(
        model="tiny", max_tokens=40, messages=[{"role": "user", "content": "Grade it."}],
        response_format={"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA, "strict": True}})
    text = reply.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)
    assert text == model.chat("Grade it.", json_schema=SCHEMA, max_new_tokens=40)
    assert reply.choices[0].finish_reason == "stop"


def test_concurrent_clients_each_get_their_own_answer(setup):
    served, model, _ = setup
    questions = [f"Question {i}: is the optic disc pink?" for i in range(4)]
    expected = [model.chat(q, max_new_tokens=8) for q in questions]
    got = [None] * 4

    def ask(i):
        got[i] = served.client().chat.completions.create(
            model="tiny", max_tokens=8, messages=[{"role": "user", "content": questions[i]}]).choices[0].message.content
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_a_client_that_disconnects_mid_stream_stops_its_generation(setup):
    served, model, _ = setup
    before = json.loads(served.raw("GET", "/health")[1])["requests"]
    # At least 1000 numbers: this answer cannot end early on its own.
    long_schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1000}
    body = json.dumps({"messages": [{"role": "user", "content": "Count."}], "max_tokens": 3000, "stream": True,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": long_schema}}})
    sock = socket.create_connection((served.host, served.port))
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    received = b""
    while received.count(b"data: ") < 3:  # the role chunk and two pieces
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()
    # Requests take turns: this one starts only once the abandoned generation has stopped and freed the model.
    reply = served.client().chat.completions.create(model="tiny", max_tokens=6,
                                                    messages=[{"role": "user", "content": "Next."}])
    assert reply.choices[0].message.content == model.chat("Next.", max_new_tokens=6)
    after = json.loads(served.raw("GET", "/health")[1])["requests"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 1 and after["waiting"] == 0


def test_local_images_only_inside_the_allowed_folder(setup):
    served, model, images = setup
    client = served.client()
    reply = client.chat.completions.create(model="tiny", max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(images / "fundus.png")}}, {"type": "text", "text": "And?"}]}])
    assert reply.choices[0].message.content == model.chat("And?", images=[FUNDUS], max_new_tokens=6)
    for url, message in [(FUNDUS, "outside the allowed image folder"), ("../images/../../x.png", "outside"),
                         ("https://example.com/a.png", "remote image URLs are not fetched")]:
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}])


def _error(served, body, headers=None):
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    status, data = served.raw("POST", "/v1/chat/completions", raw, {"Content-Type": "application/json", **(headers or {})})
    error = json.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, error


def test_every_bad_input_gets_its_4xx_and_the_server_survives(setup):
    served, model, _ = setup
    hello = [{"role": "user", "content": "Hi"}]
    fundus = open(FUNDUS, "rb").read()

    def with_image(data):
        return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(data)}}]}]}

    cases = [
        (b"{not json", 400, "not valid JSON"),
        ({"messages": hello, "temperature": 0.2, "logit_bias": {}}, 400, "unknown field 'logit_bias'"),
        ({"messages": hello, "max_tokens": 0}, 400, "max_tokens must be between 1"),
        ({"messages": hello, "temperature": "hot"}, 400, "temperature must be a number"),
        ({"messages": hello, "model": "gpt-4"}, 404, "does not exist here"),
        ({"messages": "Hi"}, 400, "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, 400, "role must be one of"),
        ({}, 400, "messages is required"),
        (with_image(b"this is not an image at all"), 400, "cannot decode image"),
        (with_image(fundus[:len(fundus) // 2]), 400, "image"),
        (with_image(png(200, 200)), 400, "over the limit of 20000 pixels"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
         400, "base64 is malformed"),
        ({"messages": hello, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}},
         400, "not a valid JSON Schema"),
        ({"messages": hello, "response_format": {"type": "xml"}}, 400, "response_format.type must be"),
        ({"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 4000}, 400, "max_context"),
        ({"messages": hello, "pad": "x" * (1 << 20)}, 413, "over the limit of 1048576 bytes"),
    ]
    for body, status, message in cases:
        got_status, error = _error(served, body)
        assert (got_status, message in error["message"]) == (status, True), (body if len(str(body)) < 300 else "...", error)
    status, error = _error(served, {"messages": hello}, {"Authorization": "Bearer wrong-key"})
    assert status == 401 and error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").chat.completions.create(model="tiny", messages=hello)
    conn = http.client.HTTPConnection(served.host, served.port, timeout=60)
    conn.request("GET", "/v1/models")  # no Authorization header at all
    assert conn.getresponse().status == 401
    conn.close()
    # Still serving, with the right answer.
    reply = served.client().chat.completions.create(model="tiny", max_tokens=5, messages=hello)
    assert reply.choices[0].message.content == model.chat("Hi", max_new_tokens=5)
    assert served.proc.poll() is None
