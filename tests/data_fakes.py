"""Stand-ins for the data engine's language model: a rule-following fake that answers each agent's
prompt from its text, in-process (FakeEndpoint) or as an OpenAI-compatible server on a loopback port
(FakeServer), which can SIGKILL a process at its N-th request (for the resume test)."""
import json
import os
import re
import signal
import threading
from loopback_server import LoopbackServer, QuietHandler

from eyecare.endpoint import Endpoint


def fake_answer(messages, schema) -> str:
    """What a faithful model would answer each agent: findings and impression cut from the report, two
    questions about them, and 'supported' unless the item mentions UNSUPPORTED or CONTRADICTED."""
    prompt = messages[-1]["content"]
    properties = set(schema.get("properties", {}))
    if properties == {"findings", "impression"}:
        report = prompt.split("Report:\n", 1)[1]
        findings, _, impression = report.partition("Impression:")
        return json.dumps({"findings": findings.replace("SYNTHETIC.", "").strip(),
                           "impression": impression.strip() or "none stated"})
    if properties == {"questions"}:
        findings = re.search(r"Findings of an? [^:]+:\n(.*?)\n\nImpression: (.*?)\n", prompt, re.S)
        first = findings.group(1).split(". ")[0].rstrip(".") + "."
        return json.dumps({"questions": [
            {"question": "What does the image show?", "answer": first},
            {"question": "What is the impression?", "answer": findings.group(2)}]})
    if properties == {"verdict", "reason"}:
        item = prompt.split("Question:", 1)[1]
        for word, verdict in (("UNSUPPORTED", "unsupported"), ("CONTRADICTED", "contradicted")):
            if word in item:
                return json.dumps({"verdict": verdict, "reason": f"the item says {word.lower()}"})
        return json.dumps({"verdict": "supported", "reason": "the report says so"})
    raise AssertionError(f"unexpected schema {schema}")


class FakeEndpoint(Endpoint):
    """In-process; `overrides` maps an agent's schema property to a function(messages) -> raw text."""

    name = "fake-model"

    def __init__(self, overrides=None):
        self.overrides = overrides or {}
        self.calls = []
        self._lock = threading.Lock()

    def _complete(self, messages, *, max_tokens, temperature, seed, schema):
        with self._lock:
            self.calls.append((messages, schema))
        for key, fn in self.overrides.items():
            if key in schema.get("properties", {}):
                return fn(messages)
        return fake_answer(messages, schema)


class FakeServer:
    """OpenAI-compatible /v1/chat/completions answering with fake_answer; with kill_pid and kill_at set,
    SIGKILLs that process when the kill_at-th completion request arrives (and never answers it)."""

    def __init__(self, kill_pid=None, kill_at=None):
        self.requests = 0
        self.kill_pid, self.kill_at = kill_pid, kill_at
        self.lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                if outer.kill_at is not None and n == outer.kill_at:
                    os.kill(outer.kill_pid, signal.SIGKILL)
                    return
                schema = body["response_format"]["json_schema"]["schema"]
                text = fake_answer(body["messages"], schema)
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"}]}).encode()
                self.send_json(200, data)

        self.http = LoopbackServer(Handler)
        self.url = self.http.url

    def close(self):
        self.http.close()
