#!/usr/bin/env bash
# Install everything deephash-zoo needs on a fresh Debian machine (idempotent): the Fashion-MNIST package
# (real data for demos and tests), Chromium (renders the demo page in its browser test and the README
# screenshot; Debian's package, no browser download) and a virtual environment in .venv with the package
# and all its extras. Run from the repository root.
set -euo pipefail
missing=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages: run 'sudo apt-get install ${missing[*]}' (or set FASHION_MNIST_DIR;" \
             "without Chromium the demo's browser test is skipped)" >&2
    fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e '.[export,retrieval,convert,coco,cards,demo,fast,dev]'
