"""int8 / int4 block-quantized weights: the quantizer against the formats' definitions, the packed layout's
round trip through the device, and the quantized kernels (matvec_q for decode, matmul_q for prefill and
vision) against NumPy dequantize-then-matmul.

Tolerances: the dequantized weights (float16 scale x small integer) are exact in float32, so the kernels
differ from a float64 reference of the same dequantized weights only by float32 accumulation, as the
float kernels do in test_ops.py."""
import math

import numpy as np
import pytest

import eyecare._core as core
from eyecare import quantize as Q
from eyecare.core import empty, tensor

rng = np.random.default_rng(7)
METHODS = ["int8", "int4"]


def reference_blocks(w: np.ndarray, method: str):
    """The block formats written out from their definition, one block at a time (slow, obvious):
    int8: d = max|w| / 127, q = round(w / d) in -127..127; int4: d = (the weight of largest magnitude) / -8,
    q = round(w / d) in -8..7; d stored as float16 and q rounded with the stored d."""
    n, k = w.shape
    nb = -(-k // 32)
    q = np.zeros((n, nb * 32), np.int64)
    d = np.zeros((n, nb), np.float16)
    for r in range(n):
        for b in range(nb):
            block = np.zeros(32, np.float64)
            part = w[r, b * 32:(b + 1) * 32].astype(np.float64)
            block[:len(part)] = part
            if method == "int8":
                scale = np.float16(np.abs(block).max() / 127.0)
                lo, hi = -127, 127
            else:
                scale = np.float16(block[np.abs(block).argmax()] / -8.0)
                lo, hi = -8, 7
            d[r, b] = scale
            if float(scale) != 0.0:
                q[r, b * 32:(b + 1) * 32] = np.clip(np.rint(block / float(scale)), lo, hi)
    return q, d


def values(q, d, k):
    return (q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1))[:, :k]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3, 32), (5, 7), (4, 70), (2, 96), (64, 64)])
def test_quantizer_follows_the_block_definition(method, shape):
    """int8 is the definition exactly. int4 may pick another scale than the definition's w_m / -8 (see
    eyecare/quantize.py), but its integers are the definition's rounding with that scale, and no block is
    further from the weights than the definition's."""
    w = rng.standard_normal(shape).astype(np.float32)
    w[0, :3] = [0.0, 5.0, -5.0]          # ties of magnitude: the first one sets the int4 scale's sign
    w[-1, -1] = 0.0
    packed, scales = Q.quantize(w, method)
    q_ref, d_ref = reference_blocks(w, method)
    n, k = shape
    assert packed.shape == Q.packed_shape(method, *shape) and packed.dtype == np.uint8
    assert scales.shape == (n, -(-k // 32)) and scales.dtype == np.float16
    q = Q.unpack(packed, method, k)
    got = Q.dequantize(packed, scales, method, k)
    np.testing.assert_array_equal(got, q * np.repeat(scales.astype(np.float32), 32, axis=1)[:, :k])
    if method == "int8":
        np.testing.assert_array_equal(scales.view(np.uint16), d_ref.view(np.uint16))
        np.testing.assert_array_equal(q, q_ref[:, :k])
    else:
        d = np.repeat(scales.astype(np.float64), 32, axis=1)[:, :k]
        np.testing.assert_array_equal(q, np.clip(np.rint(np.divide(w, d, out=np.zeros_like(d), where=d != 0)), -8, 7))
        pad = (-k) % 32
        err = np.pad((got - w.astype(np.float64)) ** 2, ((0, 0), (0, pad))).reshape(n, -1, 32).sum(-1)
        err_ref = np.pad((values(q_ref, d_ref, k) - w) ** 2, ((0, 0), (0, pad))).reshape(n, -1, 32).sum(-1)
        assert (err <= err_ref * (1 + 1e-6) + 1e-12).all()
        if shape == (64, 64):
            assert err.sum() < 0.95 * err_ref.sum()   # and clearly closer in all
    # the padding of the last block holds zeros
    np.testing.assert_array_equal(Q.unpack(packed, method, packed.shape[1] * (2 if method == "int4" else 1))[:, k:], 0)


def test_int4_nibble_order_and_sign():
    """Weight 2j in the low nibble of byte j, two's complement: -8..7 -> 0x8..0x7."""
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = [-8.0, 7.0, 1.0, -1.0]
    packed, scales = Q.quantize(w, "int4")
    assert float(scales[0, 0]) == 1.0
    assert packed[0, 0] == 0x78 and packed[0, 1] == 0xF1
    assert Q.unpack(packed, "int4", 4).tolist() == [[-8, 7, 1, -1]]


def test_quantizer_handles_bfloat16_bits_zero_blocks_and_rejects_nan():
    from eyecare.core import from_bfloat16, to_bfloat16

    w = rng.standard_normal((6, 64)).astype(np.float32)
    w[2] = 0.0
    bits = to_bfloat16(w)
    p1, s1 = Q.quantize(bits, "int8")
    p2, s2 = Q.quantize(from_bfloat16(bits), "int8")
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)
    assert (s1[2] == 0).all() and (p1[2] == 0).all()
    # a few rows at a time gives the same as all at once
    p3, s3 = Q.quantize(bits, "int8", rows_per_step=1)
    np.testing.assert_array_equal(p1, p3)
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(w, "int4")
    with pytest.raises(ValueError, match="int8' or 'int4"):
        Q.quantize(w, "int2")


@pytest.mark.parametrize("method", METHODS)
def test_packed_layout_round_trips_through_the_device(method):
    w = rng.standard_normal((37, 100)).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    t = Q.to_device(packed, scales, method, 100)
    assert t.dtype == method and t.shape == (37, 100)
    assert t.nbytes >= packed.nbytes + scales.nbytes
    p2, s2 = t.packed()
    np.testing.assert_array_equal(p2, packed)
    np.testing.assert_array_equal(s2.view(np.uint16), scales.view(np.uint16))
    with pytest.raises(TypeError, match="packed"):
        t.numpy()
    with pytest.raises(TypeError):
        tensor(w).packed()


def test_quantized_tensor_checks_its_parts():
    packed, scales = Q.quantize(rng.standard_normal((4, 64)).astype(np.float32), "int8")
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed[:, :32], scales, "int8", 64)   # truncated integers
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed, scales[:, :1], "int8", 64)    # too few scales
    with pytest.raises(ValueError, match="packed as"):
        core.quantized_tensor(packed, scales, "int4", 64)           # int8 bytes called int4
    with pytest.raises(ValueError, match="int8' or 'int4"):
        core.quantized_tensor(packed, scales, "int3", 64)


# M <= 8 runs matvec_q (decode), more runs matmul_q (prefill, vision). K not a multiple of 32 takes the
# kernels' partial-block paths; N not a multiple of 16 (matvec rows per workgroup) or of 64 (GEMM columns
# per workgroup) leaves workgroups partly idle.
SHAPES = [(1, 64, 33), (1, 3072, 70), (2, 7, 5), (4, 100, 17), (8, 1153, 21), (9, 32, 1), (33, 96, 67), (70, 45, 130)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_quantized_matmul_matches_dequantize_then_matmul(method, M, K, N):
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    y = empty((M, N))
    core.op_matmul(tensor(x), Q.to_device(packed, scales, method, K), tensor(b, "bfloat16"), y)
    from eyecare.core import from_bfloat16, to_bfloat16

    want = x.astype(np.float64) @ Q.dequantize(packed, scales, method, K).astype(np.float64).T + from_bfloat16(to_bfloat16(b))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=2e-6 * math.sqrt(K))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("M", [1, 6, 24])
def test_quantized_matmul_accumulates(method, M):
    K, N = 80, 48
    w = rng.standard_normal((N, K)).astype(np.float32)
    x, r = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((M, N)).astype(np.float32)
    packed, scales = Q.quantize(w, method)
    y = tensor(r)
    core.op_matmul(tensor(x), Q.to_device(packed, scales, method, K), None, y, True)
    want = r + x.astype(np.float64) @ Q.dequantize(packed, scales, method, K).astype(np.float64).T
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-4)


def test_quantized_weights_are_refused_where_no_kernel_reads_them():
    packed, scales = Q.quantize(rng.standard_normal((8, 32)).astype(np.float32), "int8")
    wq = Q.to_device(packed, scales, "int8", 32)
    x = tensor(rng.standard_normal((2, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="embedding table must be float32, float16 or bfloat16, not int8"):
        core.op_embedding(tensor(np.array([0, 1], np.int32)), wq, empty((2, 32)))
    bias = Q.to_device(*Q.quantize(rng.standard_normal((1, 32)).astype(np.float32), "int4"), "int4", 32)
    with pytest.raises(ValueError, match="bias must be float32, float16 or bfloat16, not int4"):
        core.op_matmul(x, tensor(rng.standard_normal((32, 32)).astype(np.float32)), bias, empty((2, 32)))
    with pytest.raises(ValueError, match="columns"):
        core.op_matmul(tensor(rng.standard_normal((2, 31)).astype(np.float32)), wq, None, empty((2, 8)))


# --------------------------------------------------------------------------------------------------
# Models: a quantized decoder against transformers holding the same (dequantized) weights


def _dequantized_reference(model, method, lm_head=False):
    """transformers' model in f32 holding bf16-rounded weights (as the bf16 checkpoint stores them), with
    every linear layer eyecare quantizes replaced by the values of its blocks (the quantizer is checked
    against the formats' definition above; here the loading, fusing and kernels are under test)."""
    import torch
    from tiny_llm import reference_with_dtype

    ref = reference_with_dtype(model, torch.bfloat16)
    quant = Q.Quantization(method, lm_head=lm_head)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 2 and quant.applies(name):
                packed, scales = Q.quantize(p.numpy(), method)
                p.copy_(torch.from_numpy(Q.dequantize(packed, scales, method, p.shape[1])))
    return ref


@pytest.mark.parametrize("family", ["phi3", "qwen2"])
@pytest.mark.parametrize("method", METHODS)
def test_quantized_decoder_matches_transformers_with_the_same_weights(tmp_path, family, method):
    """Load-time quantization of a bf16 checkpoint: prefill and decode logits equal transformers' with the
    dequantized weights, to the float decoder's tolerance (test_decoder.py). Qwen2's hidden size of 112 is
    no multiple of 32, so its rows end in partial blocks, and its q/k/v are quantized apart and fused."""
    import torch
    from test_decoder import check_prefill_and_decode
    from tiny_llm import phi3_model, qwen2_model, save_checkpoint

    from eyecare import LanguageModel

    model = (phi3_model if family == "phi3" else qwen2_model)(seed=3)
    save_checkpoint(model, str(tmp_path), dtype=torch.bfloat16)
    lm = LanguageModel.from_pretrained(tmp_path, quantize=method, kv_cache_dtype="float32")  # the f32 cache: weights alone differ
    try:
        kinds = {n: t.dtype for n, t in lm._weights.items()}
        assert kinds["model.layers.0.self_attn.qkv_proj.weight"] == method
        assert kinds["model.layers.1.mlp.down_proj.weight"] == method
        assert kinds["lm_head.weight"] == "bfloat16" and kinds["model.embed_tokens.weight"] == "bfloat16"
        check_prefill_and_decode(lm, _dequantized_reference(model, method), prompt_len=40, steps=6)
    finally:
        lm.close()


def test_quantized_lm_head(tmp_path):
    import torch
    from test_decoder import check_prefill_and_decode
    from tiny_llm import qwen2_model, save_checkpoint

    from eyecare import LanguageModel

    model = qwen2_model(seed=4)
    save_checkpoint(model, str(tmp_path), dtype=torch.bfloat16)
    with LanguageModel.from_pretrained(tmp_path, quantize="int8", quantize_lm_head=True, kv_cache_dtype="float32") as lm:
        assert lm._weights["lm_head.weight"].dtype == "int8" and lm._weights["model.embed_tokens.weight"].dtype == "bfloat16"
        check_prefill_and_decode(lm, _dequantized_reference(model, "int8", lm_head=True), prompt_len=12, steps=3)
    with pytest.raises(ValueError, match="need quantize="):
        LanguageModel.from_pretrained(tmp_path, quantize_lm_head=True)


# --------------------------------------------------------------------------------------------------
# EyecareGPT: a quantized checkpoint written by the converter, end to end


def _read_all(path):
    from eyecare.safetensors import open_safetensors

    with open_safetensors(path) as ckpt:
        return {n: ((np.array(ckpt.get(n)), "BF16") if ckpt.info(n)[0] == "BF16" else np.array(ckpt.get(n)))
                for n in ckpt.names()}


def _rewrite(src, dst, tensors, config_change=None):
    """A copy of checkpoint directory src with other tensors (and config.json entries)."""
    import json
    import shutil

    from eyecare.safetensors import save_safetensors

    shutil.copytree(src, dst)
    save_safetensors(tensors, dst / "model.safetensors")
    if config_change:
        config = json.loads((dst / "config.json").read_text())
        config.update(config_change)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _dequantized_copy(src, dst):
    """The quantized checkpoint's weights as the float32 values they stand for, under their plain names (a
    checkpoint transformers can load as the reference)."""
    import json

    from eyecare.config import DecoderConfig
    from eyecare.core import from_bfloat16
    from eyecare.model import _expected_tensors

    config = json.loads((src / "config.json").read_text())
    quant = Q.Quantization.from_config(config)
    shapes = _expected_tensors(config, DecoderConfig.from_dict(config["text_config"]))
    stored = _read_all(src)
    tensors = {}
    for name, value in stored.items():
        if name.endswith(".scales"):
            continue
        if name.endswith(".qweight"):
            base = name[:-len(".qweight")]
            k = shapes[base + ".weight"][1]
            tensors[base + ".weight"] = Q.dequantize(value, stored[base + ".scales"], quant.method, k)
        else:
            tensors[name] = from_bfloat16(value[0]) if isinstance(value, tuple) else value.astype(np.float32)
    del config["quantization"]
    return _write_plain(src, dst, tensors, config)


def _write_plain(src, dst, tensors, config):
    import json
    import shutil

    from eyecare.safetensors import save_safetensors

    shutil.copytree(src, dst)
    save_safetensors(tensors, dst / "model.safetensors")
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module", params=["phi3", "qwen2"])
def quantized_tiny(request, tmp_path_factory):
    """A bf16 tiny EyecareGPT and its int4 conversion (LLM and vision tower quantized)."""
    from eyecare.convert import convert_checkpoint
    from eyecare.tiny import make_tiny

    root = tmp_path_factory.mktemp(f"q-{request.param}")
    src = make_tiny(root / "bf16", request.param, dtype="bfloat16", seed=5)
    convert_checkpoint(src, root / "int4", quantize="int4", quantize_vision=True)
    return root / "bf16", root / "int4"


def test_quantized_eyecaregpt_equals_transformers_with_the_dequantized_weights(quantized_tiny, tmp_path):
    """int4 LLM and vision tower: greedy answers about an image are transformers' (SigLIP + LDC + LLM in
    f32, reference.py) holding the values the packed blocks stand for."""
    from eyecare.model import EyecareGPT
    from reference import IMAGES, Reference

    bf16, int4 = quantized_tiny
    model = EyecareGPT.from_pretrained(int4, progress=False)
    try:
        assert model.language._weights["model.layers.1.mlp.gate_up_proj.weight"].dtype == "int4"
        ref = Reference.from_checkpoint(_dequantized_copy(int4, tmp_path / "dequantized"), model.config)
        model.chat("Describe the findings.", images=IMAGES[:1], max_new_tokens=10)
        got, want = model.last_output.token_ids, ref.greedy(model, "Describe the findings.", IMAGES[:1], 10)
        assert got == want[:len(got)] and (len(got) == len(want) or want[len(got)] in model.language.eos_token_ids)
        inputs = model.processor(IMAGES[:1])
        want_tokens = ref.image_tokens(inputs["pixel_values"], inputs["image_grids"])[0].numpy()
        np.testing.assert_allclose(model.encode_images(IMAGES[:1])[0], want_tokens, rtol=1e-4, atol=1e-4)
    finally:
        model.close()


def test_load_time_quantization_equals_the_converted_checkpoint(quantized_tiny):
    """from_pretrained(quantize=...) on the bf16 checkpoint loads the very blocks the converter wrote."""
    from eyecare.model import EyecareGPT

    bf16, int4 = quantized_tiny
    a = EyecareGPT.from_pretrained(int4, progress=False)
    b = EyecareGPT.from_pretrained(bf16, progress=False, quantize="int4", quantize_vision=True)
    try:
        for name, t in a.language._weights.items():
            u = b.language._weights[name]
            assert t.dtype == u.dtype, name
            if t.dtype == "int4":
                for x, y in zip(t.packed(), u.packed()):
                    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
        from reference import IMAGES

        np.testing.assert_array_equal(a.forward("Describe.", IMAGES[:1]), b.forward("Describe.", IMAGES[:1]))
    finally:
        a.close()
        b.close()


def _hostile(quantized_tiny, tmp_path, change, config_change=None):
    from eyecare.model import EyecareGPT

    _, int4 = quantized_tiny
    tensors = _read_all(int4)
    change(tensors)
    path = _rewrite(int4, tmp_path / "hostile", tensors, config_change)
    return lambda **kw: EyecareGPT.from_pretrained(path, progress=False, **kw)


LAYER = "language_model.model.layers.0."


@pytest.mark.parametrize("what,change,message", [
    ("wrong scale shape", lambda t: t.update({LAYER + "self_attn.o_proj.scales": t[LAYER + "self_attn.o_proj.scales"][:, :1]}),
     "o_proj.scales is"),
    ("truncated packed data", lambda t: t.update({LAYER + "mlp.down_proj.qweight": t[LAYER + "mlp.down_proj.qweight"][:, :-16]}),
     "down_proj.qweight is"),
    ("packed data of another dtype", lambda t: t.update({LAYER + "mlp.down_proj.qweight": t[LAYER + "mlp.down_proj.qweight"].view(np.int8)}),
     "expected U8"),
    ("scales missing", lambda t: t.pop(LAYER + "mlp.down_proj.scales"), "missing: " + LAYER + "mlp.down_proj.scales"),
    ("a float weight beside its packed one", lambda t: t.update({LAYER + "mlp.down_proj.weight": np.zeros((64, 128), np.float32)}),
     "unexpected"),
])
@pytest.mark.filterwarnings("ignore:.*tensors the model does not use")
def test_hostile_quantized_checkpoints_raise_format_error(quantized_tiny, tmp_path, what, change, message):
    load = _hostile(quantized_tiny, tmp_path, change)
    with pytest.raises(core.FormatError, match=message.replace(".", r"\.")):
        load()


def test_truncated_quantized_file_and_bad_quantization_config(quantized_tiny, tmp_path):
    import shutil

    from eyecare.model import EyecareGPT

    _, int4 = quantized_tiny
    cut = tmp_path / "cut"
    shutil.copytree(int4, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) - 100])
    with pytest.raises(core.FormatError):
        EyecareGPT.from_pretrained(cut, progress=False)
    bad = _hostile(quantized_tiny, tmp_path / "b", lambda t: None, {"quantization": {"method": "int3", "block_size": 32}})
    with pytest.raises(core.FormatError, match="quantization"):
        bad()
    other_block = _hostile(quantized_tiny, tmp_path / "c", lambda t: None, {"quantization": {"method": "int4", "block_size": 64}})
    with pytest.raises(core.FormatError, match="block_size"):
        other_block()
    with pytest.raises(ValueError, match="quantized to int4; it cannot be loaded as int8"):
        EyecareGPT.from_pretrained(int4, progress=False, quantize="int8")


def test_cli_convert_quantize_and_info(quantized_tiny, tmp_path, capsys):
    import json

    from eyecare.cli import main

    bf16, _ = quantized_tiny
    assert main(["convert", str(tmp_path / "q8"), "--checkpoint", str(bf16), "--quantize", "int8"]) == 0
    config = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert config["quantization"] == {"method": "int8", "block_size": 32, "vision": False, "lm_head": False}
    from eyecare.safetensors import open_safetensors

    with open_safetensors(tmp_path / "q8") as ckpt:
        assert ckpt.metadata()["quantization"] == "int8"
        assert ckpt.info("language_model.model.layers.0.mlp.down_proj.qweight")[0] == "U8"
        assert "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight" in ckpt   # vision stays bf16
        assert "language_model.lm_head.weight" in ckpt
    capsys.readouterr()
    assert main(["info", str(tmp_path / "q8")]) == 0
    out = capsys.readouterr().out
    assert "quantized int8" in out and "int8+vision" in out and "int4 " not in out and "bf16 " not in out
    assert main(["convert", str(tmp_path / "x"), "--checkpoint", str(bf16), "--quantize-vision"]) == 1
    assert "need --quantize" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "y"), "--checkpoint", str(tmp_path / "q8"), "--quantize", "int4"]) == 1
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("mode,counter", [(None, None), ("small-limits", "split_views"), ("gpu-workgroups", ""),
                                          ("discrete-memory", "staging_copies")])
def test_quantized_kernels_under_the_emulation_modes(mode, counter):
    """Weights past the texel reach (small-limits: 16 MiB) are read in pieces of rows (counted in split_views),
    GPU-shaped workgroups (gpu-workgroups: matmul_q 64 lanes wide, 8 subgroups, so x is read without the
    subgroup broadcast) and staged uploads of both parts (discrete-memory) give the same products."""
    import json
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, EYECARE_VALIDATE="1", PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    env.pop("EYECARE_EMULATE", None)
    if mode:
        env["EYECARE_EMULATE"] = mode
    run = subprocess.run([sys.executable, os.path.join(here, "quantize_probe.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["validation_messages"] == 0
    assert len(result["errors"]) == 4 and max(result["errors"].values()) < 2e-5, result["errors"]
    if counter:
        assert result["counters"][counter] > 0
    elif counter is None:
        assert result["counters"]["split_views"] == 0 and result["counters"]["staging_copies"] == 0
