#!/usr/bin/env bash
# Issue 7's GPU run: one transfer experiment (default data-scaling) at --scale gpu, its
# points JOBS at a time in worker processes without Ray, stopped after LIMIT seconds.
# What comes back in $OUT: NAME.json and its plots when every point finished, and always
# points.tgz (every finished point, resumable: extract it into the --out of a rerun),
# registry.tgz (the pre-trained bases) and the log.
#   OUT=/tmp/out bash bench/gpu_transfer.sh
set -uo pipefail
OUT=${OUT:-/tmp/pdeserve-gpu}
EXPERIMENT=${EXPERIMENT:-data-scaling}
SCALE=${SCALE:-gpu}
JOBS=${JOBS:-8}
LIMIT=${LIMIT:-420}
GPU=${GPU---gpu}  # GPU= for a dry run on CPU
RUN=${RUN:-/tmp/pdeserve-experiments}
mkdir -p "$OUT" "$RUN"
source "$(dirname "$0")/gpu_env.sh"
gpu_facts "$OUT/gpu.txt"
[ -f resume/points.tgz ] && tar xzf resume/points.tgz -C "$RUN"
[ -f resume/registry.tgz ] && tar xzf resume/registry.tgz -C "$RUN"
SECONDS=0
timeout "$LIMIT" $PY -m experiments "$EXPERIMENT" --out "$RUN" --scale "$SCALE" \
  --no-ray $GPU --jobs "$JOBS" > "$OUT/experiment.log" 2>&1
echo "experiment: exit $? after ${SECONDS}s" | tee -a "$OUT/experiment.log"
tail -40 "$OUT/experiment.log"
(cd "$RUN" && tar czf "$OUT/points.tgz" points runs/*.log 2>/dev/null)
(cd "$RUN" && tar czf "$OUT/registry.tgz" registry 2>/dev/null)
cp "$RUN/$EXPERIMENT.json" "$RUN/$EXPERIMENT.png" "$RUN/$EXPERIMENT-savings.png" "$OUT/" 2>/dev/null
exit 0
