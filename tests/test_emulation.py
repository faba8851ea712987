"""EYECARE_EMULATE makes lavapipe take the paths of GPUs this machine does not have (docs/devices.md). Each mode is
run in a child process (the mode is read when the device context is made) by tests/emulation_probe.py, which checks
matmul/matvec, embedding, attention, the reductions and a chain of dependent ops against NumPy; here each mode must
get the same results as the default and show, in the runtime's counters, that it really took its path. The
validation layer (with synchronization validation) is on in the child too, and must say nothing."""
import json
import os
import subprocess
import sys

import pytest

import eyecare._core as core

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = {"matvec": 1e-5, "matmul": 1e-5, "matmul_long_x": 1e-5, "matvec_unaligned": 1e-5, "embedding": 0.0, "attention": 1e-5,
             "rmsnorm": 1e-5, "layernorm": 1e-5, "softmax": 1e-5, "argmax": 0.0, "argmax_chunked": 0.0, "chain": 0.0,
             "attention_f16_split_k": 1e-5, "attention_prefill_f16": 1e-5, "rmsnorm_matvec": 1e-5, "silu_mul_matvec": 1e-5,
             "rope_kv": 1e-3}


def probe(mode, **env):
    child_env = dict(os.environ, EYECARE_VALIDATE="1", **env)
    child_env.pop("EYECARE_EMULATE", None)
    if mode:
        child_env["EYECARE_EMULATE"] = mode
    child_env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), child_env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, os.path.join(HERE, "emulation_probe.py")], env=child_env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Vulkan validation" not in run.stderr, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["validation_messages"] == 0
    for name, limit in TOLERANCE.items():
        assert result["errors"][name] <= limit, (mode, name, result["errors"][name])
    return result


@pytest.fixture(scope="module")
def default():
    return probe(None)


def test_default_mode_takes_the_device_s_own_paths(default):
    c, d = default["counters"], default["device"]
    assert d["emulate"] == []
    if d["type"] == "cpu":
        # lavapipe: mapped memory, one-subgroup workgroups, views that fit, one submit per batch
        assert d["host_visible_tensors"] is True
        assert c["staging_copies"] == 0 and c["multi_subgroup_dispatches"] == 0 and c["split_views"] == 0
        assert default["batch_submits"] == 1
    else:
        # a GPU (make gpu-check): its real paths, the ones the emulation modes stand in for here
        assert c["multi_subgroup_dispatches"] >= 4
        assert d["host_visible_tensors"] or c["staging_copies"] >= 20
    # Barriers only where a dispatch depends on an earlier one: the chain of 12 adds on one tensor needs one
    # between each pair, but not one per dispatch of the whole probe.
    assert 12 <= c["barriers"] < c["dispatches"]


def test_discrete_memory_moves_every_tensor_through_staging():
    r = probe("discrete-memory")
    assert r["device"]["host_visible_tensors"] is False
    # every upload and download of the probe is a staged copy
    assert r["counters"]["staging_copies"] >= 20


def test_gpu_workgroups_run_reductions_over_several_subgroups():
    r = probe("gpu-workgroups")
    assert r["counters"]["multi_subgroup_dispatches"] >= 4  # rmsnorm, layernorm, softmax, argmax


def test_small_limits_split_texel_views():
    r = probe("small-limits")
    d = r["device"]
    assert d["max_texel_buffer_elements"] == 1 << 20 and d["max_storage_buffer_range"] == 16 << 20
    assert r["counters"]["split_views"] >= 8  # matvec, matmul, unaligned matvec, embedding, attention: pieces each


def test_split_submits_submit_a_batch_in_pieces():
    r = probe("split-submits")
    assert r["batch_submits"] >= 3  # 13 commands in pieces of 4 dispatches


def test_submit_size_is_configurable_and_checked():
    r = probe(None, EYECARE_SUBMIT_DISPATCHES="2")
    assert r["device"]["submit_dispatches"] == 2 and r["batch_submits"] >= 6


def test_unknown_mode_is_a_clear_error():
    env = dict(os.environ, EYECARE_EMULATE="discrete-memory,fast-gpu")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", "import eyecare._core as c; c.device_info()"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "unknown mode 'fast-gpu'" in run.stderr and "split-submits" in run.stderr


def test_the_current_process_reports_its_mode():
    info = core.device_info()
    if os.environ.get("LP_NATIVE_VECTOR_WIDTH") == "512" and info["name"].startswith("llvmpipe"):
        assert info["subgroup_size"] == 16  # make test-emulation's second run: lavapipe's 16-lane subgroups
    if "mesa25" in os.environ.get("VK_ICD_FILENAMES", ""):
        assert info["api_version"].startswith("1.4.")  # make test-mesa25: Mesa 25's lavapipe, not the system's 22.3
    wanted = os.environ.get("EYECARE_EMULATE", "")
    if not wanted:
        assert info["emulate"] == []
    else:
        expected = {"discrete-memory", "gpu-workgroups", "small-limits", "split-submits"} if wanted == "all" else set(wanted.split(","))
        assert set(info["emulate"]) == expected
