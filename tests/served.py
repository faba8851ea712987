"""Starting `eyecare serve` in a subprocess for the tests (tests/test_serve.py, tests/test_bench_judge.py)."""
import http.client
import os
import subprocess
import sys
import threading

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "test-key-5f1c"


class Served:
    def __init__(self, proc, host, port, log):
        self.proc, self.host, self.port, self.log = proc, host, port, log
        self.base_url = f"http://{host}:{port}/v1"

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=300, **kw)

    def raw(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data


def start_server(model_dir, *args):
    """Starts `eyecare serve --port 0` and reads the port from the line it prints once listening."""
    log = open(os.path.join(os.path.dirname(model_dir), "server.log"), "w+")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "eyecare.cli", "serve", "--model", model_dir, "--port", "0",
                             *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    threading.Thread(target=lambda: [log.write(x) or log.flush() for x in proc.stderr], daemon=True).start()
    assert line.startswith("eyecare serve: model"), line + (proc.stderr.read() if proc.poll() is not None else "")
    assert "loopback only" in line
    host, port = line.split("http://", 1)[1].split("/v1", 1)[0].rsplit(":", 1)
    return Served(proc, host, int(port), log)


def stop_server(served):
    served.proc.terminate()
    served.proc.wait(timeout=60)
    served.log.seek(0)
    text = served.log.read()
    assert "Traceback" not in text and "Vulkan validation" not in text, text
