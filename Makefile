# neural-style — two commands do everything on a fresh machine:
#   make run    set up, get weights, run the daemon (`neural-style serve`) in the foreground
#   make test   set up and run every test
# and `make demo` stylizes CONTENT with STYLE into OUT once (CPU ≈ 1 min).
SHELL := /bin/bash
.DEFAULT_GOAL := run

VENV        ?= .venv
PYTHON_BOOT ?= python3
TORCH_PINS  := torch==2.11.0 torchvision==0.26.0 safetensors numpy nvidia-cuda-crt==13.0.88
PY          := $(abspath $(VENV))/bin/python
BIN         := target/release/neural-style

# libtorch comes from the venv's torch wheel (tch =0.24.0 ↔ torch 2.11.0); the binary gets an
# rpath to it, so it runs without LD_LIBRARY_PATH.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
export NEURAL_STYLE_PYTHON := $(PY)
export NEURAL_STYLE_BIN := $(abspath $(BIN))

SAMPLES        := .cache/samples
CONTENT        ?= $(SAMPLES)/content.png
STYLE          ?= $(SAMPLES)/style.png
OUT            ?= out/stylized.png
SIZE           ?= 256
ITERATIONS     ?= 150
RUN_FLAGS      ?=
RANDOM_WEIGHTS := .cache/vgg19-random-seed0.safetensors

.PHONY: setup build run demo test weights samples bench bench-suite bench-gpu install install-unit install-gimp fmt clippy clean

$(VENV)/.installed:
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
	touch $@

setup: $(VENV)/.installed

build: setup
	cargo build --release --workspace

samples: build
	@[ -f $(SAMPLES)/content.png ] || $(BIN) samples $(SAMPLES)

# Pretrained weights into the data directory; offline, seeded random weights instead (labelled
# NOT PRETRAINED everywhere they are used).
weights: build
	@$(BIN) weights fetch || { \
	  echo "*** could not fetch the pretrained VGG19 weights (offline?): continuing with seeded RANDOM weights — results are NOT representative ***"; \
	  $(BIN) weights random --seed 0 --out $(RANDOM_WEIGHTS) --if-missing; }

# The weights flag: the pretrained file when present, else the seeded random one.
WEIGHTS_FLAG = $$(W=$$($(BIN) weights path); if [ -z "$$NEURAL_STYLE_WEIGHTS" ] && [ ! -f "$$W" ]; then echo "--weights $(RANDOM_WEIGHTS)"; fi)

run: weights
	$(BIN) serve $(WEIGHTS_FLAG) $(SERVE_FLAGS)

demo: weights samples
	@mkdir -p $(dir $(OUT))
	$(BIN) run --content $(CONTENT) --style $(STYLE) --output $(OUT) --size $(SIZE) --iterations $(ITERATIONS) $(WEIGHTS_FLAG) $(RUN_FLAGS)
	@echo "output: $(abspath $(OUT))"

test: build
	python3 -m unittest discover -s plugin-gimp/tests -v
	cargo test --release --workspace
	cargo clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --workspace
	cargo fmt --all -- --check

# Benchmarks against PyTorch in the same run (not tests: timings vary with the machine).
# TTL_FLAGS e.g. "--weights ~/.local/share/neural-style/vgg19-features.safetensors".
TTL_IMAGES := ../shared/images
TTL_FLAGS ?= $(if $(wildcard $(TTL_IMAGES)/tubingen.jpg),--content $(TTL_IMAGES)/tubingen.jpg --style $(TTL_IMAGES)/starry_night.jpg,)
bench: build
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet matplotlib
	@mkdir -p docs/bench
	$(BIN) bench --sizes 256,512
	$(BIN) bench --latency
	$(BIN) bench --loop --sizes 64,128 --json > docs/bench/loop.json
	$(BIN) bench --time-to-loss $(TTL_FLAGS) --plot docs/bench/time_to_loss.png --json > docs/bench/time_to_loss.json

# The schedule suite (issue #12): 16 cases at 128 px and 4 at 256 px against PyTorch's L-BFGS,
# about 45 minutes on a 2-core CPU. SUITE_FLAGS e.g. "--only content" or "--suite-full".
bench-suite: build
	$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet matplotlib
	@mkdir -p docs/bench
	$(BIN) bench --suite --images $(TTL_IMAGES) --table docs/bench/suite.md --plot docs/bench/suite.png --json $(SUITE_FLAGS) > docs/bench/suite.json

# The GPU measurements (on a machine with CUDA): scripts/gpu-check.sh writes docs/bench/gpu/.
bench-gpu: build
	scripts/gpu-check.sh $(BIN)

PREFIX ?= $(HOME)/.local
install: build
	install -D -m 0755 $(BIN) $(PREFIX)/bin/neural-style
	@echo "installed $(PREFIX)/bin/neural-style (it loads libtorch from $(abspath $(VENV)); keep that venv)"

# GIMP 3 user plug-ins folder (Linux; see README for macOS and Windows)
GIMP_PLUGINS ?= $(HOME)/.config/GIMP/3.0/plug-ins
install-gimp:
	install -d $(GIMP_PLUGINS)/neural-style
	install -m 0755 plugin-gimp/neural-style/neural-style.py $(GIMP_PLUGINS)/neural-style/neural-style.py
	install -m 0644 plugin-gimp/neural-style/ns_protocol.py $(GIMP_PLUGINS)/neural-style/ns_protocol.py
	@echo "installed the GIMP plug-in into $(GIMP_PLUGINS)/neural-style; restart GIMP: Filters → Neural Style…"

install-unit: install
	install -D -m 0644 daemon/systemd/neural-style.service $(HOME)/.config/systemd/user/neural-style.service
	@echo "now: systemctl --user daemon-reload && systemctl --user enable --now neural-style"

fmt:
	cargo fmt --all

clippy: build
	cargo clippy --release --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf out .cache/samples   # .cache/gimp-root (the GIMP test root) is kept: rm -rf it by hand
