# make demo : install what is missing, then run EyecareGPT on the sample images in examples/
# make test : install what is missing, then run the whole test suite (validation layer on)
# make bench: the throughput benchmarks (benchmarks/)

PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := mesa-vulkan-drivers libvulkan-dev glslang-tools vulkan-validationlayers libstb-dev

.PHONY: demo test bench deps system-deps python-deps build clean

demo: deps
	$(PYTHON) -m eyecare.cli chat --image examples/bench/images/fundus.png --image examples/bench/images/oct.png \
		"Describe the findings in these images."

test: deps
	$(PYTHON) -m pytest -q

bench: deps
	$(PYTHON) benchmarks/ops.py
	$(PYTHON) benchmarks/vision.py --layers 3
	$(PYTHON) benchmarks/llm.py

deps: system-deps python-deps

# Debian's Vulkan loader, lavapipe (Vulkan on the CPU), the shader compiler, the validation layer, stb.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# torch==2.13.0 first: that pin takes the CPU build (a looser one would pull a multi-GB CUDA build).
python-deps:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[bench,test]"

build:
	$(PYTHON) setup.py build_ext --inplace

clean:
	rm -rf build eyecare/*.so *.egg-info
