#!/usr/bin/env bash
# The lent-GPU calls behind docs/benchmarks.md's label-efficiency table (issue 35) and the default's time to an
# accurate model with it (issue 39). Each fits one call (600 s at most); run them back to back:
#   bash benchmarks/gpu_issue35.sh le    # label efficiency at 256²: the two repeats side by side (two processes)
#   bash benchmarks/gpu_issue35.sh tta   # augmentation's cost per batch; time to each accuracy bar, default vs before
#   bash benchmarks/gpu_issue35.sh tests # the GPU tests that cover the training step (graphs, determinism)
#   bash benchmarks/gpu_issue35.sh final # after a change to the recipe: augmentation, tta and 1,024 frames in one call
# "before" is the tree before issue 35 (commit 33ec8f2), its package copied into the ignored .before/ (carry
# [".whl", ".before"]; `echo /.before/ >> .git/info/exclude` once):
#   git worktree add /tmp/b 33ec8f2 && rm -rf .before && mkdir .before && cp -r /tmp/b/glint_track .before/
# The GPU image has no MLflow: its wheels travel in .whl (benchmarks/gpu_wheels.sh), installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
OUT=${OUT:-/tmp/out}
BEFORE=$PWD/.before
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/machine.txt"
case "${1:-le}" in
le)
    for r in 1 2; do
        timeout 560 python3 benchmarks/label_efficiency.py --size 256 --counts 32,64,128,256,1024 --only-repeat $r \
            --before "$BEFORE" --workdir /tmp/le$r > "$OUT/le$r.log" 2>&1 &
    done
    wait
    tail -n 14 "$OUT"/le1.log "$OUT"/le2.log
    ;;
tta)
    timeout 100 python3 benchmarks/augmentation.py --size 256 --batch 16 2>&1 | tail -6 | tee "$OUT/augmentation.log"
    python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import synthetic_file; synthetic_file(Path('/tmp/data'), 'tta', 4096, 256)" 2>/dev/null \
        || { mkdir -p /tmp/data && python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import synthetic_file; synthetic_file(Path('/tmp/data'), 'tta', 4096, 256)"; }
    timeout 420 python3 benchmarks/time_to_accuracy.py --h5 /tmp/data/tta_4096_256.h5 --repeats 2 --budget-s 120 \
        --only default,before --before "$BEFORE" --workdir /tmp/tta 2>&1 | tee "$OUT/tta.log" | tail -16
    ;;
final)  # time to each bar (default vs before, two runs each), the augmentation's cost, label efficiency at 1,024
    mkdir -p /tmp/data && python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import synthetic_file; synthetic_file(Path('/tmp/data'), 'tta', 4096, 256)"
    timeout 300 python3 benchmarks/time_to_accuracy.py --h5 /tmp/data/tta_4096_256.h5 --repeats 2 --budget-s 100 \
        --only default,before --before "$BEFORE" --workdir /tmp/tta > "$OUT/tta.log" 2>&1
    tail -n 16 "$OUT/tta.log"
    timeout 60 python3 benchmarks/augmentation.py --size 256 --batch 16 2>&1 | tail -7 | tee "$OUT/augmentation.log"
    timeout 110 python3 benchmarks/label_efficiency.py --size 256 --counts 1024 --only-repeat 1 --before "$BEFORE" \
        --workdir /tmp/le1024 > "$OUT/le1024.log" 2>&1
    tail -n 4 "$OUT/le1024.log"
    ;;
tta1)  # little device time left: one run of each row, then the augmentation's cost
    mkdir -p /tmp/data && python3 -c "import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import synthetic_file; synthetic_file(Path('/tmp/data'), 'tta', 4096, 256)"
    timeout 200 python3 benchmarks/time_to_accuracy.py --h5 /tmp/data/tta_4096_256.h5 --repeats 1 --budget-s 90 \
        --only default,before --before "$BEFORE" --workdir /tmp/tta > "$OUT/tta.log" 2>&1
    tail -n 8 "$OUT/tta.log"
    timeout 40 python3 benchmarks/augmentation.py --size 256 --batch 16 --steps 20 2>&1 | tail -7 | tee "$OUT/augmentation.log"
    ;;
tests)
    GLINT_TRACK_REQUIRE_GPU=1 timeout 560 python3 -m pytest -o addopts=-ra -q -p no:cacheprovider \
        tests/system/test_gpu.py -k "defaults or deterministic or cuda_graphs" 2>&1 | tail -30 | tee "$OUT/gpu_tests.log"
    ;;
esac
