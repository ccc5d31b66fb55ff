#!/usr/bin/env bash
# The lent-GPU calls behind docs/benchmarks.md's issue 28 tables (the device tool: $OUT comes back). Each fits one
# call (600 s at most); run them back to back (the machine stays warm 30 s):
#   bash benchmarks/gpu_issue28.sh check   # a cold first run, then start-up timelines (also alone: startup)
#   bash benchmarks/gpu_issue28.sh throughput   # the default's steady throughput against the batch-16 bound
#   bash benchmarks/gpu_issue28.sh tests   # the GPU tests
#   bash benchmarks/gpu_issue28.sh tta     # time to each accuracy bar, every row, two runs
# The GPU image has no MLflow: its wheels travel in .whl (benchmarks/gpu_wheels.sh; carry), installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
OUT=${OUT:-/tmp/out}
DATA=/tmp/data
mkdir -p "$OUT" "$DATA"
H5=$DATA/tta_4096_256.h5
data() {  # the 4,096 × 256² near-eye benchmark file (benchmarks/_common.synthetic_file: 8 glints, seed 0)
    [ -f "$H5" ] || python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import synthetic_file; synthetic_file(Path('$DATA'), 'tta', 4096, 256)"
}
case "${1:-check}" in
check)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
    data
    # a first run on this machine: new store, empty decoded-data cache (the data file was just written)
    timeout 120 python3 benchmarks/time_to_accuracy.py --h5 "$H5" --cold --only default --max-epochs 12 \
        --workdir /tmp/cold 2>&1 | tee "$OUT/cold.log"
    bash "$0" startup
    ;;
startup)  # start-up timelines on a warm machine; with OLD=<a copy of the tree before a change>, the two alternate
    data
    ROOT=$PWD
    mkdir -p /tmp/su && cd /tmp/su
    timeout 60 python3 "$ROOT/benchmarks/startup.py" --h5 "$H5" --epochs 1 >/dev/null 2>&1  # the store, warm caches
    for i in 1 2; do
        for tree in ${OLD:-} "$ROOT"; do
            echo "== $tree, round $i"
            timeout 60 python3 "$tree/benchmarks/startup.py" --h5 "$H5" --epochs 4 2>&1 | tail -17
        done
    done | tee "$OUT/startup.log"
    ;;
throughput)
    timeout 240 python3 benchmarks/throughput.py --only c16_graphs,b_default,b_default \
        --epochs 4 --workdir /tmp/tp 2>&1 | tail -20 | tee "$OUT/throughput.log"
    ;;
tests)
    GLINT_TRACK_REQUIRE_GPU=1 timeout 560 python3 -m pytest -o addopts=-ra -q -p no:cacheprovider \
        tests/system/test_gpu.py 2>&1 | tail -40 | tee "$OUT/gpu_tests.log"
    ;;
tta)
    data
    timeout 570 python3 benchmarks/time_to_accuracy.py --h5 "$H5" --repeats 2 --max-epochs 12 --budget-s 100 \
        --only research,default,b64-cosine,b128-cosine,lightning --workdir /tmp/tta 2>&1 \
        | tee "$OUT/tta.log"
    ;;
esac
