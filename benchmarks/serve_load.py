"""`eyecare serve` under load, on loopback: requests/s and time to first token (TTFT) for 1 and 4
concurrent clients, each sending streaming chat requests one after another.

The server (a subprocess, `eyecare serve --port 0`) answers one request at a time, so the bound for
requests/s is the model's own rate in process (1 / the time of one model.chat with the same prompt and
max_tokens, the best of 20), and the bound for TTFT with one client is the in-process time to the
first piece (the best of 20); both are measured in the same run and printed beside the server's figures. With 4 clients TTFT includes
the wait for a turn.

    python benchmarks/serve_load.py                       # a tiny random model, 16-token answers
    python benchmarks/serve_load.py --model DIR --max-tokens 64 --requests 8
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(model_dir: str):
    proc = subprocess.Popen([sys.executable, "-m", "eyecare.cli", "serve", "--model", model_dir, "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    host, port = line.split("http://", 1)[1].split("/v1", 1)[0].rsplit(":", 1)
    return proc, host, int(port)


def one_request(host, port, body: bytes):
    """(TTFT, total seconds) of one streaming request."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = None
    for line in response:
        if first is None and line.startswith(b"data: {") and b'"content": "' in line and b'"content": ""' not in line:
            first = time.perf_counter() - start
        if line.strip() == b"data: [DONE]":
            break
    conn.close()
    total = time.perf_counter() - start
    return (first if first is not None else total), total


def load(host, port, body, clients: int, per_client: int):
    results, lock = [], threading.Lock()

    def client():
        for _ in range(per_client):
            r = one_request(host, port, body)
            with lock:
                results.append(r)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return len(results) / wall, statistics.median(r[0] for r in results) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", metavar="DIR", help="checkpoint (default: a tiny random phi3 model made here)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=24, help="requests per load level (default 24)")
    args = ap.parse_args(argv)

    from eyecare.model import EyecareGPT
    from eyecare.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(make_tiny(f"{tmp}/tiny", "phi3"))
        question = "Describe the findings in this fundus photograph."
        # The bound, in process: the same request without HTTP.
        model = EyecareGPT.from_pretrained(model_dir, progress=False)
        model.chat(question, max_new_tokens=args.max_tokens)
        times, firsts = [], []
        for _ in range(20):
            t = time.perf_counter()
            pieces = model.chat(question, max_new_tokens=args.max_tokens, stream=True)
            next(pieces)
            firsts.append(time.perf_counter() - t)
            for _ in pieces:
                pass
            times.append(time.perf_counter() - t)
        model.close()
        bound_rps, bound_ttft = 1 / min(times), min(firsts) * 1e3  # the best seen: the machine may be shared

        proc, host, port = start(model_dir)
        try:
            body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": args.max_tokens,
                               "stream": True}).encode()
            one_request(host, port, body)  # warm
            print(f"eyecare serve on loopback, {args.max_tokens}-token streamed answers; in process the model "
                  f"answers {bound_rps:.1f} requests/s with its first piece after {bound_ttft:.1f} ms")
            for clients in (1, 4):
                rps, ttft = load(host, port, body, clients, max(1, args.requests // clients))
                print(f"  {clients} client{'s' if clients > 1 else ' '}: {rps:6.1f} requests/s "
                      f"({100 * rps / bound_rps:5.1f} % of the in-process {bound_rps:.1f}); median TTFT {ttft:7.1f} ms "
                      f"(in process {bound_ttft:.1f} ms)")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
