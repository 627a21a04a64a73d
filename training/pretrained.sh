#!/usr/bin/env bash
# The bundled default model, from data generation to publish, in one recipe:
#   1. held-out test sets at 128x128, seed 1234 (never used in training): the three
#      constant-coefficient systems (N_TEST each) and the field laws (N_TEST_FIELDS each:
#      Poisson smooth and two-phase media of contrast 1..10 and 10..100, Helmholtz with
#      w varying by up to 30%),
#   2. pre-training in two stages (each generates its own data):
#      a. the constant-coefficient mix, training/configs/mixed-small.yaml (CONFIG_CONSTANT),
#      b. from that model (--init), the mix with the field variants: the GPU variant,
#         training/configs/pretrained.yaml, where torch sees a GPU; else the CPU variant,
#         mixed-fields-small (CONFIG),
#   3. export to ONNX (constant and fields graphs, spectral weights in float16: the 15 MB
#      budget) with the test errors and the error
#      targets in the card, published as `default`.
#
#   bash training/pretrained.sh            # GPU if there is one, else CPU
#
# Resumable: RUN names the run (RUN_CONSTANT the first stage's, default RUN-constant); run
# the same command with the same RUN again after a kill and pre-training goes on from its
# last checkpoint (test sets and a finished first stage are kept).
# Knobs (environment): CONFIG, CONFIG_CONSTANT, EPOCHS (stage b), TRAIN_SECONDS (stop
# stage b after, keeping the best epoch), N_TEST, N_TEST_FIELDS, TEST_DIR, REGISTRY (default models), NAME
# (default), RUNS, RUN, PY, NO_RAY (1: one process; default 1 on a GPU, 0 on CPU: two Ray
# Train workers share the 2 cores better), NOTES (text for the card; default: the scale
# reached), MODEL_DIR (publish this trained model directory instead of training: steps 1
# and 3 only).
set -euo pipefail
PY=${PY:-python3}
REGISTRY=${REGISTRY:-models}
NAME=${NAME:-default}
RUNS=${RUNS:-runs}
N_TEST=${N_TEST:-4096}
N_TEST_FIELDS=${N_TEST_FIELDS:-512}
TEST_DIR=${TEST_DIR:-data/pretrained-test}
TRAIN_SECONDS=${TRAIN_SECONDS:-0}
export PYTHONUNBUFFERED=1

gpu=""
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then gpu=--gpu; fi
if [ -n "$gpu" ]; then
  CONFIG=${CONFIG:-pretrained}; NO_RAY=${NO_RAY:-1}; scale="GPU scale"
else
  CONFIG=${CONFIG:-mixed-fields-small}; NO_RAY=${NO_RAY:-0}; scale="CPU scale"
fi
RUN=${RUN:-$CONFIG-$(date +%Y%m%d-%H%M%S)}
CONFIG_CONSTANT=${CONFIG_CONSTANT:-mixed-small}
RUN_CONSTANT=${RUN_CONSTANT:-$RUN-constant}
extra=()
[ -n "${EPOCHS:-}" ] && extra+=(--epochs "$EPOCHS")
[ "$NO_RAY" = 1 ] && extra+=(--no-ray)

# The card's error targets: mean relative L2 at 128^2 on the test sets below.
targets=(
  poisson=1.5e-2 advection_diffusion=3e-2 helmholtz=3e-2
  "poisson-smooth(1,10)=2e-2" "poisson-smooth(10,100)=5e-2" "poisson-two-phase(1,10)=3e-2"
  "helmholtz-smooth(0,0.3)=5e-2"
)
tests=()
testset() {  # NAME N SYSTEM [datagen options]
  local name=$1 n=$2; shift 2
  if [ ! -f "$TEST_DIR/$name/test.h5" ]; then
    $PY -m pdeserve.cli datagen "$@" --out "$TEST_DIR/$name" --n-train 1 --n-val 1 \
      --n-test "$n" --seed 1234 --resolution 128 --quiet
  fi
  tests+=("$TEST_DIR/$name/test.h5")
}
for system in poisson advection_diffusion helmholtz; do testset "$system" "$N_TEST" "$system"; done
for law in smooth two-phase; do
  testset "poisson-$law-1-10" "$N_TEST_FIELDS" poisson --field "$law" --contrast 1 10
  testset "poisson-$law-10-100" "$N_TEST_FIELDS" poisson --field "$law" --contrast 10 100
done
testset helmholtz-smooth-0-0.3 "$N_TEST_FIELDS" helmholtz --field smooth --variation 0 0.3

publish() {  # MODEL_DIR NOTES
  $PY -m training.export --checkpoint "$1" --name "$NAME" --registry "$REGISTRY" \
    --test "${tests[@]}" --targets "${targets[@]}" --float16 --notes "$2"
}
if [ -n "${MODEL_DIR:-}" ]; then
  publish "$MODEL_DIR" "${NOTES:-$scale: $MODEL_DIR; test sets at 128x128, seed 1234}"
  exit
fi

SECONDS=0
base="$RUNS/$RUN_CONSTANT/model"
if [ ! -f "$base/card.json" ]; then
  noray=(); [ "$NO_RAY" = 1 ] && noray=(--no-ray)
  $PY -m training.pretrain --config "$CONFIG_CONSTANT" $gpu --storage "$RUNS" \
    --run-name "$RUN_CONSTANT" --quiet "${noray[@]}"
fi
echo "stage a ($CONFIG_CONSTANT, $base) done after ${SECONDS}s"
extra+=(--init "$base")
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
history="$RUNS/$RUN/metrics.jsonl"
if [ ! -f "$model/card.json" ]; then  # stopped early: the best epoch of the last checkpoint
  model=$(ls -dt "$RUNS/$RUN"/checkpoints/latest/best "$RUNS/$RUN"/checkpoint_*/best 2>/dev/null | head -1)
  [ -n "$model" ] && [ -f "$model/card.json" ] || { echo "no model was saved" >&2; exit 1; }
  history="$model/../metrics.jsonl"
fi
epochs=$(grep -c '"epoch"' "$history" 2>/dev/null || echo "?")  # not the resume events
publish "$model" "${NOTES:-$scale: $CONFIG_CONSTANT (run $RUN_CONSTANT), then $CONFIG from it, $epochs epochs (run $RUN); test sets at 128x128, seed 1234, never used in training.}"
