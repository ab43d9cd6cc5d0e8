#!/usr/bin/env bash
# The main job end to end on the embedded default (Fashion-MNIST, small CPU settings):
# encode a few images with a fresh model, train DATH, evaluate its retrieval, export it to ONNX
# (fp32 + int8, each verified against PyTorch).
# Usage: bash .ci/main_job.sh [RUN_DIR]    (default runs/main-job); needs .ci/setup.sh first.
set -euo pipefail
run=${1:-runs/main-job}
bin=.venv/bin
step() { printf '\n== %s\n' "$*"; }
step "encode 8 Fashion-MNIST test images with a randomly initialised dath_alexnet_32"
"$bin/deephash-encode" --model dath_alexnet_32 --num 8
step "train dath_alexnet_32 on 1,024 Fashion-MNIST images at 64x64 (3 epochs, from scratch)"
# from scratch the quantisation term saturates every code to one vector within a few dozen steps
# (the papers start from ImageNet weights), so this CPU demo trains with gamma=0
"$bin/deephash-train" --model dath_alexnet_32 --data fashion-mnist --img-size 64 --subset 1024 \
    --batch-size 32 --epochs 3 --lr 1e-5 --loss-arg gamma=0 --out "$run"
step "evaluate: 500 test queries against 5,000 training images"
"$bin/deephash-eval" --checkpoint "$run" --query-subset 500 --db-subset 5000 --no-progress
step "export to ONNX (fp32 and int8), verified against PyTorch"
"$bin/deephash-export" --onnx --int8 --checkpoint "$run" --out "$run/onnx"
