# Entry points. Each target sets up (or refreshes) the virtualenv first, so on a fresh
# machine with Python 3.11 and pip, `make repro` and `make test` just work.
VENV   := .venv
BIN    := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast lint format bench compare seed-study restore lock clean-venv

setup:
	@bash scripts/setup.sh

repro: setup          ## run the whole pipeline (both datasets)
	dvc repro
	dvc metrics show

test:                 ## set up (incl. Chromium where possible), then the whole suite (7-9 min)
	@bash scripts/setup.sh --for-tests
	python -m pytest

test-fast: setup      ## unit tests only: no DVC pipeline, no training (about 1 minute)
	python -m pytest -m "not integration"

lint: setup           ## what CI enforces: ruff's rules and ruff's formatting
	ruff check .
	ruff format --check .

format: setup         ## apply ruff's formatting and safe fixes
	ruff format .
	ruff check --fix .

bench: setup          ## the keras.io convnet as published vs our train stage, throughput, time to accuracy (~21 min)
	dvc repro preprocess@mnist
	mnist-cnn-bench

compare: setup        ## the experiments of HEAD side by side (table; PNG with PNG=file.png)
	mnist-cnn-compare $(if $(PNG),--png $(PNG))

# The seed study: the committed params once per seed, through DVC's queue (each run in its
# own temporary workspace; the run-cache shares what seeds have in common). Hours on 2 cores.
SEEDS ?= 42,1,2,3,4
seed-study: setup     ## queue the committed params once per seed in SEEDS, run 2 at a time
	dvc exp run --queue -S 'seed=$(SEEDS)'
	dvc queue start -j 2

restore: setup        ## after a failed run: params and results back as committed
	git checkout HEAD -- params.yaml dvc.lock metrics plots
	dvc checkout --force

lock:                 ## re-pin requirements.lock (hashes) from pyproject.toml with uv
	rm -rf /tmp/lock-venv && python3 -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install --quiet uv==0.13.9
	/tmp/lock-venv/bin/uv pip compile pyproject.toml --extra cpu --extra test --extra dev \
	  --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --no-header --output-file requirements.lock

clean-venv:
	rm -rf $(VENV)
