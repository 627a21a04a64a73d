#!/usr/bin/env bash
# One GPU session, on a machine with torch but maybe without pydantic (wheels in .whl/):
# training throughput against the baseline (bench/train.py), then a pre-training run of
# CONFIG for EPOCHS epochs (at most TRAIN_SECONDS), in one process without Ray.
#   OUT=/tmp/out bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/pdeserve-gpu}
CONFIG=${CONFIG:-paper-sys1}
EPOCHS=${EPOCHS:-20}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
DEVICE=${DEVICE:-cuda}
BENCH=${BENCH:-1}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
gpu_facts "$OUT/gpu.txt"
spectral=auto
if [ "$BENCH" = 1 ]; then
  $PY -m bench.train --device "$DEVICE" --name train-gpu 2>&1 | tee "$OUT/bench.log"
  cp bench/results/train-gpu.json "$OUT/"
  spectral=$($PY -c "import json; r = json.load(open('bench/results/train-gpu.json'))['results']; print(r['fno-16m']['best'].split('-')[1])" 2>/dev/null || echo auto)
fi
gpu=--gpu; [ "$DEVICE" = cpu ] && gpu=
SECONDS=0
timeout "$TRAIN_SECONDS" $PY -m training.pretrain --config "$CONFIG" --no-ray $gpu \
  --epochs "$EPOCHS" --spectral "$spectral" --storage /tmp/pdeserve-runs --run-name "gpu-$CONFIG" \
  --quiet 2>&1 | tee "$OUT/train.log"
echo "pre-training: exit ${PIPESTATUS[0]} after ${SECONDS}s (spectral $spectral)" | tee -a "$OUT/train.log"
cp /tmp/pdeserve-runs/"gpu-$CONFIG"/metrics.jsonl "$OUT/" 2>/dev/null
cp /tmp/pdeserve-runs/"gpu-$CONFIG"/model/card.json "$OUT/" 2>/dev/null
exit 0
