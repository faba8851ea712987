"""The `eyecare` command line in a subprocess: each command exits 0 with sensible output, and bad input
(a missing path, a file that is not an image, a directory that is not a checkpoint) exits non-zero
with one clear line and no traceback."""
import os
import subprocess
import sys

import pytest

IMAGE = "examples/bench/images/fundus.png"


def run(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "eyecare.cli", *args], capture_output=True, text=True, timeout=600,
                          env=full_env)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    result = run("make-tiny", str(out), "--family", "qwen2")
    assert result.returncode == 0, result.stderr
    assert "meaningless" in result.stdout
    return out


def test_devices():
    result = run("devices")
    assert result.returncode == 0 and "[0]" in result.stdout
    import eyecare

    first = eyecare.devices()[0]
    assert f"uuid {first['uuid']}  pci {first['pci_bus_id'] or 'not reported'}" in result.stdout


def test_info(tiny):
    result = run("info", str(tiny))
    assert result.returncode == 0, result.stderr
    assert "qwen2" in result.stdout and "parameters" in result.stdout
    assert "device memory with max_context 4096, max_batch 1, max_views 16: " in result.stdout


def test_chat_streams_an_answer_and_timings(tiny):
    result = run("chat", "--model", str(tiny), "--image", IMAGE, "--image", "examples/bench/images/oct.png",
                 "--max-new-tokens", "5", "Describe these images.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "vision" in result.stderr and "decode" in result.stderr


def test_chat_without_a_model_says_the_answer_is_meaningless(tmp_path):
    result = run("chat", "--image", IMAGE, "--max-new-tokens", "3", "Hello?", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "meaningless" in result.stderr and (tmp_path / "eyecare" / "tiny-phi3" / "config.json").is_file()


def test_missing_image(tiny):
    assert_one_line_error(run("chat", "--model", str(tiny), "--image", "no/such.png", "Hi"), "no/such.png")


def test_not_an_image(tiny, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    assert_one_line_error(run("chat", "--model", str(tiny), "--image", str(bad), "Hi"), "error")


def test_not_a_checkpoint(tmp_path):
    assert_one_line_error(run("info", str(tmp_path)), "config.json")
    assert_one_line_error(run("chat", "--model", str(tmp_path / "missing"), "Hi"), "missing")


def test_convert_needs_its_inputs(tmp_path):
    assert_one_line_error(run("convert", str(tmp_path / "out")), "--vision")
    assert_one_line_error(run("convert", str(tmp_path / "out"), "--llava", str(tmp_path / "nothing")), "config.json")
