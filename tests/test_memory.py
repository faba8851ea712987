"""Device memory: eyecare.memory's figure (what `eyecare info` prints) against what loading the model really
allocates; max_device_memory= and max_batch > 1 through EyecareGPT."""
import json
import re

import pytest

import eyecare
from eyecare import _core
from eyecare.memory import device_memory
from eyecare.model import EyecareGPT
from eyecare.tiny import make_tiny
from reference import IMAGES
from test_hardening import run_python

OPTIONS = [dict(max_views=5), dict(max_context=300, max_batch=3, max_views=2)]


def in_use():
    return _core.device_info()["memory_in_use"]


@pytest.fixture(scope="module", params=["phi3", "qwen2"])
def tiny(request, tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "batch3"])
def test_the_figure_is_what_loading_allocates(tiny, options):
    need = device_memory(tiny, **options)
    before = in_use()
    model = EyecareGPT.from_pretrained(tiny, progress=False, **options)
    try:
        assert in_use() - before == need.total
        model.chat("Describe.", images=IMAGES, max_new_tokens=4)  # generation allocates nothing more
        assert in_use() - before == need.total
    finally:
        model.close()
    assert in_use() == before
    # Each part is there: the KV cache is layers x batch x context x (2 x KV width) float32.
    t = json.loads((tiny / "config.json").read_text())["text_config"]
    kv_width = t.get("num_key_value_heads", t["num_attention_heads"]) * t["hidden_size"] // t["num_attention_heads"]
    assert need.kv_cache == t["num_hidden_layers"] * options.get("max_batch", 1) * options.get("max_context", 4096) * \
        2 * kv_width * 4
    assert need.weights > 0 and need.activations > 0 and need.vision_scratch > 0


def test_info_prints_the_figure(qwen2, capsys):
    from eyecare.cli import main

    assert main(["info", str(qwen2), "--max-context", "300", "--max-batch", "3", "--max-views", "2"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"device memory with max_context 300, max_batch 3, max_views 2: ([\d.]+) MiB", out)
    before = in_use()
    with EyecareGPT.from_pretrained(qwen2, progress=False, **OPTIONS[1]):
        allocated = in_use() - before
    assert m and abs(float(m.group(1)) - allocated / 2**20) <= 0.05, (out, allocated)


def test_max_batch_3_answers_each_request_as_alone(qwen2):
    requests = [{"question": "Describe.", "images": IMAGES[:1]}, "Is the retina attached?",
                {"question": "Compare them.", "images": IMAGES}, {"question": "And this one?", "images": IMAGES[1:]}]
    with EyecareGPT.from_pretrained(qwen2, progress=False, max_batch=3, max_views=4) as model:
        together = model.generate(requests, max_new_tokens=6)  # a group of three, then one
        outputs, timings = model.last_output, model.timings
        alone = [model.chat(r, max_new_tokens=6) if isinstance(r, str) else
                 model.chat(r["question"], images=r["images"], max_new_tokens=6) for r in requests]
    assert together == alone and [o.text for o in outputs] == alone
    assert timings["requests"] == 4 and timings["tokens"] == sum(len(o.token_ids) for o in outputs)


def test_max_device_memory_holds_the_model_and_refuses_less(qwen2):
    # A fresh process: the budget caps everything the process holds, so nothing else may be loaded.
    need = device_memory(qwen2, max_context=300, max_views=2).total
    code = f"""
        import eyecare
        from eyecare.model import EyecareGPT
        path = {str(qwen2)!r}
        with EyecareGPT.from_pretrained(path, progress=False, max_context=300, max_views=2) as m:
            free = m.chat("Describe.", images=[{IMAGES[0]!r}], max_new_tokens=5)
        with EyecareGPT.from_pretrained(path, progress=False, max_context=300, max_views=2,
                                        max_device_memory={need + 4096}) as m:
            assert m.chat("Describe.", images=[{IMAGES[0]!r}], max_new_tokens=5) == free
            print("reserved", eyecare._core.device_info()["memory_reserved"])
        try:
            EyecareGPT.from_pretrained(path, progress=False, max_context=300, max_views=2,
                                       max_device_memory={need - 64 * 1024})
        except eyecare.DeviceMemoryError as e:
            print("refused:", str(e).splitlines()[0])
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    reserved = int(re.search(r"reserved (\d+)", result.stdout).group(1))
    assert reserved <= need + 4096
    assert "refused: device memory budget exceeded" in result.stdout, result.stdout
