#!/usr/bin/env bash
# Run timm's own model test suite (tests/test_models.py from the sdist of the pinned timm) over
# every model deephash_zoo registers. The suite is downloaded at run time, never copied here.
# Usage: .ci/timm_suite.sh [extra pytest args]     (uses $PYTHON, default .venv/bin/python)
#
# The registered names are split into $TIMM_SUITE_CHUNKS groups (default 4), each run by its own pytest
# process, as many at once as there are cores (at most 2 by default: $TIMM_SUITE_JOBS). Why: one process
# over all 30 names held 21.5 GB at its peak (the suite keeps what each model's tests built until it
# exits, about 0.7 GB a model), near a 24 GB machine's limit; a group of 7-8 held 4.8 GB. Two groups at
# a time, one thread each, also finished sooner on 2 cores (118 s against 188 s in one process, AMD EPYC).
# Prints each group's summary, then one total line; exits non-zero if any failed.
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
chunks=${TIMM_SUITE_CHUNKS:-4}
cores=$(nproc)  # honours OMP_NUM_THREADS: 1 inside a pytest-xdist worker of the test suite (its share)
jobs=${TIMM_SUITE_JOBS:-$(( cores < 2 ? 1 : 2 ))}
threads=$(( cores / jobs > 0 ? cores / jobs : 1 ))
# One -k expression per group: the registered names dealt round-robin, so the multi-length models
# (the slowest) land in different groups. Names are matched exactly, as test-id parameters: `[1-NAME]`,
# and `[1-NAME.TAG]` for the tests run once per pretrained tag.
mapfile -t groups < <("$PYTHON" - "$chunks" <<'EOF'
import sys

import timm

import deephash_zoo  # noqa: F401  (registers the models)

names = sorted(timm.list_models(['dath*', 'admth*', 'dmlh*']))
chunks = max(1, min(int(sys.argv[1]), len(names)))
for i in range(chunks):
    print(' or '.join(f'-{name}] or -{name}.' for name in names[i::chunks]))
EOF
)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
cd "$work/timm-$version"
run_group() {  # $1: group number, $2: its -k expression; the extra pytest args follow
    local n=$1 expr=$2
    shift 2
    # GITHUB_ACTIONS=1 is how timm's CI runs it: it skips the tests that download weights.
    if GITHUB_ACTIONS=1 OMP_NUM_THREADS=$threads "$PYTHON" -m pytest -p deephash_zoo -p no:cacheprovider -q \
        tests/test_models.py -k "$expr" "$@" > "$logs/$n.log" 2>&1; then
        echo 0 > "$logs/$n.rc"
    else
        echo $? > "$logs/$n.rc"
    fi
}
for i in "${!groups[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_group "$i" "${groups[$i]}" "$@" &
done
wait  # every group; each one's exit status is in its .rc file
passed=0 skipped=0 failed=0
for i in "${!groups[@]}"; do
    summary=$(tail -n 1 "$logs/$i.log")
    echo "group $((i + 1))/${#groups[@]} (${groups[$i]}): $summary"
    rc=$(cat "$logs/$i.rc" 2>/dev/null || echo 1)
    if [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        tail -n 60 "$logs/$i.log"
    fi
    passed=$((passed + $(grep -oE '[0-9]+ passed' <<< "$summary" | grep -oE '[0-9]+' || echo 0)))
    skipped=$((skipped + $(grep -oE '[0-9]+ skipped' <<< "$summary" | grep -oE '[0-9]+' || echo 0)))
done
echo "timm suite: $passed passed, $skipped skipped in ${#groups[@]} groups, $failed group(s) failed"
[ "$failed" = 0 ]
