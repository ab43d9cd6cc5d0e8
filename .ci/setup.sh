#!/usr/bin/env bash
# Install everything deephash-zoo needs on a fresh Debian machine (idempotent):
# the Fashion-MNIST package (real data for demos and tests) and a virtual environment in .venv
# with the package and all its extras. Run from the repository root.
set -euo pipefail
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set FASHION_MNIST_DIR" >&2
    fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[export,retrieval,convert,dev]'
