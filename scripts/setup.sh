#!/usr/bin/env bash
# Set up lsb-mm on a fresh machine: the Debian data the tests, demo and reproductions read (man
# pages, Tux Paint stamps, Fashion-MNIST), Chromium and its driver for the search page's browser test
# (when apt is available), and the Python package with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS="manpages manpages-dev tuxpaint-stamps-default dataset-fashion-mnist chromium chromium-driver"
missing=""
for p in $DEBS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get install -y -q --no-install-recommends $missing
  else
    echo "note: install the Debian packages$missing for the real data (man pages, Tux Paint stamps, Fashion-MNIST)" \
         "and the browser test (chromium, chromium-driver);" \
         "lsb-mm demo and the tests that need them say so" >&2
  fi
fi

PY=${PYTHON:-python3}
$PY -m pip install -q -e ".[dev]"
$PY -c "import lsb_mm, faiss, torch; print(f'lsb-mm {lsb_mm.__version__} ready: torch {torch.__version__}, faiss {faiss.__version__} (GPUs seen by faiss: {faiss.get_num_gpus()})')"
