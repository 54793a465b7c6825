# Entry points. Each target sets up (or refreshes) the virtualenv first, so on a
# fresh machine with Python 3.11 and pip, `make repro` and `make test` just work.
VENV   := .venv
BIN    := $(VENV)/bin
# Stage commands in dvc.yaml call `python`: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test bench lock clean-venv

setup:
	@bash scripts/setup.sh

repro: setup          ## run the whole pipeline (both datasets)
	dvc repro
	dvc metrics show

test:                 ## set up (incl. Chromium where possible), then the whole test suite
	@bash scripts/setup.sh --for-tests
	python -m pytest

bench: setup          ## throughput and time-to-accuracy vs the keras.io convnet (~9 min)
	dvc repro preprocess@mnist
	python -m stages.bench

lock:                 ## re-pin requirements.txt from requirements.in in a scratch venv
	rm -rf /tmp/lock-venv && python3 -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install --quiet -r requirements.in
	/tmp/lock-venv/bin/pip freeze --exclude-editable > requirements.txt

clean-venv:
	rm -rf $(VENV)
