#!/usr/bin/env bash
# The paper-scale speed measurement on a lent GPU, in one call (see benchmarks/RESULTS.md for the recipe):
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=590)
# .whl holds diffusers, torch-fidelity and their small deps for Python 3.12 (the device has torch itself).
# Extra arguments go to both runs (a dry run here: bash benchmarks/gpu.sh --tiny).
# Everything lands under $OUT as it is measured, so a run cut short still brings back what it measured.
set -u
OUT=${OUT:-/tmp/mmdlib-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, torch_fidelity, mmdlib; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  || exit 1
# The headline first (5 steps, and the 50k-sample evaluation), then 20 and 10 steps.
timeout 330 python3 benchmarks/finetune_speed.py --budgets 5 "$@" --json "$OUT/budget5_eval.json" 2>&1 \
  | grep -v Warning | tee "$OUT/budget5_eval.log"
timeout 200 python3 benchmarks/finetune_speed.py --budgets 20,10 --iterations 5 --warmup 2 --eval-samples 0 \
  "$@" --json "$OUT/budget20_10.json" 2>&1 | grep -v Warning | tee "$OUT/budget20_10.log"
