#!/bin/sh
# make gpu-check: eyecare on a real GPU, in one go. It
#   1. builds the extension in place (python3 setup.py build_ext --inplace)                    ~1 min
#   2. prints the Vulkan devices (python3 -m eyecare.cli devices) and the one eyecare picks         seconds
#   3. runs the op tests, both model families' parity tests (Phi-3 and Qwen2 decoders against transformers, the
#      vision tower, whole chats) and tests/test_emulation.py on the GPU, validation layer with synchronization
#      validation on (EYECARE_VALIDATE=1): any validation message fails the test                  ~3 min
#   4. runs benchmarks/ops.py, vision.py and llm.py, each figure printed beside the device's peak measured in the
#      same run (FMA GFLOP/s, copy GB/s)                                                            ~2 min
# Under 8 minutes on an H100-class machine (the whole script stops at GPU_CHECK_SECONDS, default 450 s, per step).
# Needs the GPU's Vulkan driver, the Vulkan loader, glslang-tools and vulkan-validationlayers, and the Python test
# dependencies (make deps). EYECARE_DEVICE picks the device (index or name) when there are several.
set -eu
cd "$(dirname "$0")/.."
LIMIT="${GPU_CHECK_SECONDS:-450}"
PY="${PYTHON:-python3}"
step() { printf '\n=== gpu-check: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
started=$(date +%s)

step "1/4 build"
$PY setup.py -q build_ext --inplace >/dev/null
# Tests and benchmarks import the package built here (the machine's Python environment is left as it is).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "2/4 devices"
$PY -m eyecare.cli devices
$PY -c "import eyecare._core as c; d = c.device_info(); print('eyecare uses:', d['name'], '|', d['type'], '| subgroup', d['subgroup_size'], '| host-visible tensors', d['host_visible_tensors'], '| dispatches per submit', d['submit_dispatches'] or 'all')"
if $PY -c "import eyecare._core as c, sys; sys.exit(c.device_info()['type'] == 'cpu')"; then :; else
    echo "gpu-check: eyecare picked a CPU device; set EYECARE_DEVICE to the GPU (see the list above)" >&2; exit 1
fi

step "3/4 op and model tests, validation + synchronization validation on"
EYECARE_VALIDATE=1 timeout "$LIMIT" $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_emulation.py \
    tests/test_decoder.py tests/test_vision.py \
    "tests/test_model.py::test_greedy_chat_equals_transformers" -k "not so400m"

step "4/4 benchmarks (each figure beside the device's measured peak)"
timeout "$LIMIT" $PY benchmarks/ops.py
timeout "$LIMIT" $PY benchmarks/vision.py
timeout "$LIMIT" $PY benchmarks/llm.py

printf '\n=== gpu-check: done in %s s\n' "$(( $(date +%s) - started ))"
