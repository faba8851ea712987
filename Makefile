# make demo : install what is missing, then run EyecareGPT on the sample images in examples/
# make test : install what is missing, then run the whole test suite (validation layer on), the GPU paths
#             (test-emulation, test-mesa25) and fuzz-smoke
# make test-emulation: the GPU-path subset (tests/gpu_paths.txt) with EYECARE_EMULATE=all, then with 16-lane subgroups
# make test-mesa25   : the GPU-path subset on Mesa 25.0's lavapipe (tools/mesa25.sh fetches it into build/mesa25)
# make gpu-check     : on a machine with a real GPU: build, devices, op and model tests, benchmarks (tools/gpu_check.sh)
# make bench: the throughput benchmarks (benchmarks/)
# make fuzz      : each libFuzzer harness (fuzz/) for FUZZ_SECONDS, growing the corpus in build/fuzz/corpus
# make fuzz-smoke: each harness for FUZZ_SMOKE_SECONDS from the checked-in seeds, after replaying fuzz/regressions
# make test-asan : the extension built with ASan + UBSan, running ASAN_TESTS under it (see docs/limits.md)

PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := mesa-vulkan-drivers libvulkan-dev glslang-tools vulkan-validationlayers libstb-dev vulkan-tools

# clang and its sanitizer/libFuzzer runtimes, for the fuzz harnesses; gcc's libasan (libgcc-12-dev) for test-asan.
FUZZ_DEBIAN_PACKAGES := clang-14 libclang-rt-14-dev libstb-dev
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 25
ASAN_TESTS ?= tests

.PHONY: demo test bench deps system-deps python-deps build clean fuzz fuzz-smoke fuzz-deps test-asan test-emulation \
	test-mesa25 gpu-check

# The subset of tests that covers every kernel at small sizes and both model families (and the vision tower): what
# runs again in the emulation modes and on the second driver (docs/devices.md). pytest reads the ids from the file.
GPU_PATH_TESTS := @tests/gpu_paths.txt

demo: deps
	$(PYTHON) -m eyecare.cli chat --image examples/bench/images/fundus.png --image examples/bench/images/oct.png \
		"Describe the findings in these images."

test: deps fuzz-deps
	$(PYTHON) -m pytest -q
	$(MAKE) test-emulation test-mesa25
	$(MAKE) fuzz-smoke

# Every GPU behaviour lavapipe can be made to show (docs/devices.md): discrete memory, GPU workgroups, small limits,
# split submits all at once; then lavapipe's 16-lane subgroups (LP_NATIVE_VECTOR_WIDTH=512) besides its usual 8.
test-emulation: deps
	EYECARE_EMULATE=all $(PYTHON) -m pytest -q -p no:cacheprovider $(GPU_PATH_TESTS)
	LP_NATIVE_VECTOR_WIDTH=512 $(PYTHON) -m pytest -q -p no:cacheprovider $(GPU_PATH_TESTS)

# A second, newer driver (Mesa 25.0's lavapipe from Debian bookworm-backports, not installed: extracted into
# build/mesa25 and selected with VK_ICD_FILENAMES), validation layer on.
test-mesa25: deps
	vars="$$(tools/mesa25.sh)" && env $$vars $(PYTHON) -m pytest -q -p no:cacheprovider $(GPU_PATH_TESTS)

gpu-check:
	tools/gpu_check.sh

bench: deps
	$(PYTHON) benchmarks/ops.py
	$(PYTHON) benchmarks/vision.py --layers 3
	$(PYTHON) benchmarks/llm.py
	$(PYTHON) benchmarks/data.py

deps: system-deps python-deps

# Debian's Vulkan loader, lavapipe (Vulkan on the CPU), the shader compiler, the validation layer, stb, and
# vulkaninfo (vulkan-tools), which the tests compare eyecare.devices() with.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# torch==2.13.0 first: that pin takes the CPU build (a looser one would pull a multi-GB CUDA build).
python-deps:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[bench,data,ray,test]"

build:
	$(PYTHON) setup.py build_ext --inplace

fuzz-deps:
	@missing=""; for p in $(FUZZ_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

fuzz: fuzz-deps
	fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke: fuzz-deps
	fuzz/run.sh $(FUZZ_SMOKE_SECONDS) --fresh

# The sanitized extension is built in a copy of the tree (build/asan/tree), so that the normal build stays usable and
# the tests' child processes, which import the package next to their test files, get the sanitized one too.
# Python is not built with ASan, so libasan is preloaded, with libstdc++ after it (otherwise ASan cannot find the real
# __cxa_throw and aborts when torch or matplotlib throw a C++ exception). detect_leaks=0: CPython keeps its own
# allocations until exit, so leak reports would be its, not eyecare's (eyecare's device memory is checked by
# tests/test_hardening.py, its host allocations by the fuzz harnesses, which do detect leaks).
# allocator_may_return_null=1: malloc returns NULL when out of memory, as libc does (the driver-OOM test needs that).
# UBSan reports are fatal (-fno-sanitize-recover).
test-asan: deps
	rm -rf build/asan/tree && mkdir -p build/asan/tree
	tar -c --exclude=./build --exclude=./.git --exclude='*.so' --exclude=__pycache__ . | tar -x -C build/asan/tree
	cd build/asan/tree && EYECARE_SANITIZE=address,undefined CFLAGS="-fno-sanitize-recover=undefined" \
		$(PYTHON) setup.py -q build_ext --inplace
	cd build/asan/tree && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so.6)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:allocator_may_return_null=1 \
		UBSAN_OPTIONS=print_stacktrace=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

clean:
	rm -rf build eyecare/*.so *.egg-info
