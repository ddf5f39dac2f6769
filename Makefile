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

.PHONY: demo test bench samples system-deps clean help

help:
	@echo "make demo   - set up .venv and run the pipeline on the bundled sample corpus"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - run the benchmarks in bench/ (prints numbers vs baselines)"
	@echo "make samples - regenerate the bundled sample corpus (needs espeak-ng)"

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
	touch $(STAMP)

$(VENV): $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m blspdata.demo

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

samples: $(STAMP)
	$(BIN)/python samples/make_samples.py

clean:
	rm -rf $(VENV) demo-out bench-out
