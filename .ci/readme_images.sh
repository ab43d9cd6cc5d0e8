#!/usr/bin/env bash
# Regenerate the README's pictures from a trained checkpoint (default runs/zoo-fmnist/dath_alexnet_32, which
# deephash-zoo build trains; runs/main-job, from .ci/main_job.sh, works too): docs/retrieval_grid.png (deephash-eval's grid: 6 seeded test queries, each
# with its top 10 of 5,000 training images) and docs/demo.png (the demo page in headless Chromium,
# over the default Fashion-MNIST index that deephash-demo builds in RUN/demo-index).
# Usage: bash .ci/readme_images.sh [RUN_DIR]    (needs .ci/setup.sh first, run as root for Chromium)
set -euo pipefail
run=${1:-runs/zoo-fmnist/dath_alexnet_32}
bin=.venv/bin
mkdir -p docs
tmp=$(mktemp -d docs/.eval.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$bin/deephash-eval" --checkpoint "$run" --query-subset 500 --db-subset 5000 --no-progress --out "$tmp"
mv "$tmp/retrieval_grid.png" docs/retrieval_grid.png
"$bin/deephash-demo" --checkpoint "$run" --db-subset 5000 --screenshot docs/demo.png --screenshot-size 1280x860
