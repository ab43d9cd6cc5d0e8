#!/usr/bin/env bash
# The main job end to end on the embedded default (Fashion-MNIST, small CPU settings): encode a few images
# with a fresh model, pretrain an AlexNet trunk (in place of ImageNet weights), train DATH from it with the
# scratch recipe, evaluate its retrieval against the random-codes level, export it to ONNX (fp32 + int8,
# each verified against PyTorch).
# Usage: bash .ci/main_job.sh [RUN_DIR]    (default runs/main-job); needs .ci/setup.sh first.
set -euo pipefail
run=${1:-runs/main-job}
bin=.venv/bin
step() { printf '\n== %s\n' "$*"; }
step "encode 8 Fashion-MNIST test images with a randomly initialised dath_alexnet_32"
"$bin/deephash-encode" --model dath_alexnet_32 --num 8
step "pretrain an AlexNet trunk as a classifier on 10,000 Fashion-MNIST training images at 64x64 (4 epochs)"
"$bin/deephash-pretrain" --trunk alexnet --data fashion-mnist --img-size 64 --subset 10000 --epochs 4 \
    --out "$run-pretrain"
step "train dath_alexnet_32 from that trunk on the same images (recipe scratch, 2 epochs)"
"$bin/deephash-train" --model dath_alexnet_32 --recipe scratch --init "$run-pretrain/trunk.safetensors" \
    --data fashion-mnist --img-size 64 --subset 10000 --epochs 2 --out "$run"
step "evaluate: 1,000 test queries against 5,000 training images, beside the random-codes level"
"$bin/deephash-eval" --checkpoint "$run" --query-subset 1000 --db-subset 5000 --no-progress
step "export to ONNX (fp32 and int8), verified against PyTorch"
"$bin/deephash-export" --onnx --int8 --checkpoint "$run" --out "$run/onnx"
