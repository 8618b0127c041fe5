# backdrop: the two commands in the README are `make demo` and `make test`.
# Both start by installing everything into .venv (idempotent, a few seconds when up to date).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# see platform/backdrop/__init__.py: spinning OpenMP threads livelock processes sharing 2 cores
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install system-deps demo serve test test-fast clean checkpoint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU install path: torch pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA
# build). For a GPU machine, install your CUDA torch build first; `pip` keeps it.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'

# Headless Chromium for the try-it page test (Debian packages; CI starts on a fresh machine).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/backdrop demo --workdir runs/demo

# The HTTP service (serve_apps/README.md): models:/backdrop@champion from the MLflow registry.
serve: install
	$(BIN)/serve run serve_apps/config.yaml

test: install system-deps
	$(BIN)/python -m pytest -v -n 2 --durations=25 --timeout=900 tests

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --durations=25 -m "not slow" tests

# Remakes checkpoints/tiny-64 (checkpoints/README.md): the VAE and base UNet refit on the broad
# procedural prior, continuing from the checkpoint before it (commit $(PREV)), then CG and PG on
# the demo catalog. About 57 min on a quiet 2-core machine; the result lands in runs/checkpoint.
PREV ?= 6d1e834
checkpoint: install
	rm -rf runs/checkpoint && mkdir -p runs/checkpoint/prev
	git archive $(PREV) checkpoints/tiny-64 | tar -x -C runs/checkpoint/prev
	$(BIN)/backdrop synth --prior --rows 20000 --output runs/checkpoint/prior
	$(BIN)/backdrop train --config recipes/tiny-64-prior.yaml
	$(BIN)/backdrop synth --output runs/checkpoint/catalog
	$(BIN)/backdrop train --config recipes/tiny-64-demo.yaml

clean:
	rm -rf runs .pytest_cache
