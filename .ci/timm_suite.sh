#!/usr/bin/env bash
# Run timm's own model test suite (tests/test_models.py from the sdist of the pinned timm) over
# every model deephash_zoo registers. The suite is downloaded at run time, never copied here.
# Usage: .ci/timm_suite.sh [extra pytest args]     (uses $PYTHON, default .venv/bin/python)
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")  # absolute: we cd below
version=$("$PYTHON" -c 'import timm; print(timm.__version__)')
work=${TIMM_SUITE_DIR:-.cache/timm-suite}
mkdir -p "$work"
if [ ! -f "$work/timm-$version/tests/test_models.py" ]; then
    "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "timm==$version" -d "$work"
    tar -xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/tests"
fi
# GITHUB_ACTIONS=1 is how timm's CI runs it: it skips the tests that download weights.
cd "$work/timm-$version"
GITHUB_ACTIONS=1 "$PYTHON" -m pytest -p deephash_zoo -p no:cacheprovider -q tests/test_models.py \
    -k 'dath or admth or dmlh' "$@"
