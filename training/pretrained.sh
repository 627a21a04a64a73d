#!/usr/bin/env bash
# The bundled default model, from data generation to publish, in one recipe:
#   1. held-out test sets (4,096 per system, seed 1234: never used in training),
#   2. pre-training (training/configs/pretrained.yaml; it generates its own data),
#   3. export to ONNX with the test errors in the card, published as `default`.
#
#   bash training/pretrained.sh            # GPU if there is one, else CPU
# Knobs (environment): CONFIG (default pretrained; mixed-small is the CPU-sized one),
# EPOCHS, TRAIN_SECONDS (stop pre-training after, keeping the best epoch), N_TEST,
# REGISTRY (default models), NAME (default), RUNS, RUN, PY, NO_RAY (1: one process;
# default 1), NOTES (text for the card), MODEL_DIR (publish this trained model
# directory instead of training: steps 1 and 3 only).
set -euo pipefail
PY=${PY:-python3}
CONFIG=${CONFIG:-pretrained}
REGISTRY=${REGISTRY:-models}
NAME=${NAME:-default}
RUNS=${RUNS:-runs}
RUN=${RUN:-pretrained-$(date +%Y%m%d-%H%M%S)}
N_TEST=${N_TEST:-4096}
TEST_DIR=${TEST_DIR:-data/pretrained-test}
TRAIN_SECONDS=${TRAIN_SECONDS:-0}
export PYTHONUNBUFFERED=1

gpu=""
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then gpu=--gpu; fi
extra=()
[ -n "${EPOCHS:-}" ] && extra+=(--epochs "$EPOCHS")
[ "${NO_RAY:-1}" = 1 ] && extra+=(--no-ray)

tests=()
for system in poisson advection_diffusion helmholtz; do
  if [ ! -f "$TEST_DIR/$system/test.h5" ]; then
    $PY -m pdeserve.cli datagen "$system" --out "$TEST_DIR/$system" --n-train 1 --n-val 1 \
      --n-test "$N_TEST" --seed 1234 --resolution 128 --quiet
  fi
  tests+=("$TEST_DIR/$system/test.h5")
done

if [ -n "${MODEL_DIR:-}" ]; then
  $PY -m training.export --checkpoint "$MODEL_DIR" --name "$NAME" --registry "$REGISTRY" \
    --test "${tests[@]}" ${NOTES:+--notes "$NOTES"}
  exit
fi

SECONDS=0
status=0
if [ "$TRAIN_SECONDS" -gt 0 ]; then
  timeout --signal=INT "$TRAIN_SECONDS" $PY -m training.pretrain --config "$CONFIG" $gpu \
    --storage "$RUNS" --run-name "$RUN" --quiet "${extra[@]}" || status=$?
else
  $PY -m training.pretrain --config "$CONFIG" $gpu --storage "$RUNS" --run-name "$RUN" \
    --quiet "${extra[@]}" || status=$?
fi
echo "pre-training ended with status $status after ${SECONDS}s"
model="$RUNS/$RUN/model"
if [ ! -f "$model/card.json" ]; then  # stopped early: the best epoch so far
  model="$RUNS/$RUN/checkpoints/latest/best"
  [ -f "$model/card.json" ] || { echo "no model was saved" >&2; exit 1; }
fi
$PY -m training.export --checkpoint "$model" --name "$NAME" --registry "$REGISTRY" \
  --test "${tests[@]}" ${NOTES:+--notes "$NOTES"}
