#!/usr/bin/env bash
# The GPU efficiency table in one call on a lent GPU machine: from source, no network, under 8 minutes.
# Its python3 already has torch, timm and safetensors; nothing is installed. Writes
# export/efficiency-gpu.{md,json} (the rows and what each is, in deephash_zoo/export/gpu_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PYTHONPATH=. timeout 470 python3 -m deephash_zoo.export.gpu_bench --device cuda --budget 400 --out export "$@"
