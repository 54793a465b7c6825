# Entry points. Each target sets up (or refreshes) the virtualenv first, so on a fresh
# machine with Python 3.11-3.13 and pip, `make repro` and `make test` just work.
# Another interpreter in its own venv: make test-fast PYTHON=python3.13 VENV=.venv-3.13
VENV   ?= .venv
export VENV PYTHON
BIN    := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup trial repro test test-fast lint format bench compare check-results seed-study restore lock clean-venv

setup:
	@bash scripts/setup.sh

# The one-minute trial: the whole pipeline, both datasets, on a class-balanced subset for one
# epoch, as a DVC experiment named `trial` in a temporary workspace (the workspace and its
# results stay as they are; `dvc exp show` lists it, and the next trial replaces it;
# `dvc exp remove trial` drops it). A check that everything runs, not a result.
TRIAL_PARAMS := -S preprocess.max_train_samples=5000 -S preprocess.max_test_samples=1000 \
  -S train.epochs=1 -S train.lr_schedule.warmup_epochs=0 -S datasets.fashion_mnist.train.epochs=1 \
  -S train.batch_size=32
trial: setup          ## the whole pipeline on 5000 images for 1 epoch, in a temporary workspace
	@dvc exp remove trial >/dev/null 2>&1 || true
	dvc exp run --temp -n trial $(TRIAL_PARAMS)
	dvc exp show --drop '.*' --keep 'Experiment|Created|metrics/[a-z_]+\.json:(val_)?accuracy$$'

repro: setup          ## run the whole pipeline (both datasets)
	dvc repro
	dvc metrics show

# Test modules run in parallel, one worker per CPU (at most 4: each loads TensorFlow, and
# two modules hold most of the time), each module whole on one worker (the tiny pipeline
# is built once per session). PYTEST_WORKERS=0 runs them in this process, one by one.
PYTEST_WORKERS ?= logical
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test:                 ## set up (incl. Chromium where possible), then the whole suite
	@bash scripts/setup.sh --for-tests
	python -m pytest $(PYTEST_PARALLEL)

test-fast: setup      ## unit tests only: no DVC pipeline, no training (about 1 minute)
	python -m pytest $(PYTEST_PARALLEL) -m "not integration"

lint: setup           ## what CI enforces: ruff's rules and formatting; the CI workflow's schema
	ruff check .
	ruff format --check .
	check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	check-jsonschema --builtin-schema custom.github-workflows-require-timeout .github/workflows/*.yml

format: setup         ## apply ruff's formatting and safe fixes
	ruff format .
	ruff check --fix .

bench: setup          ## the keras.io convnet vs our train stage: speed, accuracy against time (docs/benchmark.json)
	dvc repro preprocess@mnist
	mnist-cnn-bench

compare: setup        ## the experiments of HEAD side by side (table; PNG with PNG=file.png)
	mnist-cnn-compare $(if $(PNG),--png $(PNG))

check-results: setup  ## after `make repro`: is each accuracy inside the committed seed band?
	mnist-cnn-check-results

# The seed study: the committed params once per seed, through DVC's queue (each run in its
# own temporary workspace; the run-cache shares what seeds have in common), each experiment
# named seed-<n>. Hours on 2 cores.
SEEDS ?= 42,1,2,3,4
comma := ,
seed-study: setup     ## queue the committed params once per seed in SEEDS (named seed-N), run 2 at a time
	for seed in $(subst $(comma), ,$(SEEDS)); do \
	  dvc exp run --queue -n seed-$$seed -S seed=$$seed || exit 1; \
	done
	dvc queue start -j 2

restore: setup        ## after a failed run: params and results back as committed (edits go to git stash)
	python -m mnist_cnn.tools.restore

# One universal lock (environment markers) for Python 3.11-3.13 on every platform, with
# the hashes of every file; the existing pins are kept unless pyproject.toml needs others.
# uv is the venv's own, hash-checked from requirements-tools.txt.
# requirements-cuda.lock: the same with TensorFlow's CUDA build (NVIDIA GPUs, Linux),
# constrained to the main lock's versions; install it with LOCK=requirements-cuda.lock.
lock: setup           ## re-pin requirements.lock and requirements-cuda.lock (hashes) with uv
	uv pip compile pyproject.toml --extra cpu --extra test --extra dev --generate-hashes \
	  --universal --python-version 3.11 --no-header --quiet --output-file requirements.lock
	uv pip compile pyproject.toml --extra cuda --extra test --extra dev --generate-hashes \
	  --universal --python-version 3.11 --no-header --quiet -c requirements.lock \
	  --output-file requirements-cuda.lock

clean-venv:
	rm -rf $(VENV)
