# Sourced by the GPU scripts: a machine with torch but maybe without pydantic gets the
# wheels carried in .whl/ (see the device notes in README.md), and the repo on PYTHONPATH.
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the repo, where it is not installed
if [ -d .whl ] && ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
gpu_facts() {  # the card and torch, into $1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$1"
  $PY -c "import torch; print('torch', torch.__version__)" | tee -a "$1"
}
