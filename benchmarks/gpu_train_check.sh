#!/usr/bin/env bash
# Runs on a lent single-GPU machine (device tool) from the repository root, after the
# staged wheels (pydantic, hatchling, libcst) went into /tmp/site: installs atlas, measures
# ResNet-50 training throughput, runs the SCRIPTGPU chain on the GPU and the training
# tests (GPU tests included). Everything lands in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/atlas-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
{ date -u +%FT%TZ; nvidia-smi; lscpu | head -20; } > "$OUT/machine.txt" 2>&1
timeout 330 python3 benchmarks/train_throughput.py --compile --out "$OUT/train-throughput.json" \
  > "$OUT/throughput.log" 2>&1; echo "throughput exit $?" >> "$OUT/throughput.log"
{
  echo "## atlas run AG-DS-SCRIPTGPU-001 -v"; time timeout 150 python3 -m atlas run AG-DS-SCRIPTGPU-001 -v
  echo "exit code $?"
  echo "## atlas show AG-DS-SCRIPTGPU-001"; python3 -m atlas show AG-DS-SCRIPTGPU-001
} > "$OUT/scriptgpu.txt" 2>&1
cp .atlas/out/AG-DS-SCRIPTGPU-001/training.json "$OUT/scriptgpu-training.json" 2>/dev/null
{ echo "## pytest -m gpu"; timeout 200 python3 -m pytest -q -m gpu -rs -p no:cacheprovider
  echo "## pytest training tests"; timeout 200 python3 -m pytest -q -rs -p no:cacheprovider \
    tests/test_ml_training.py tests/test_ml_models.py tests/test_ml_data.py tests/test_training_steps.py \
    tests/test_training_audit.py; } > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/throughput.log"; grep -E "exit code|succeeded|failed" "$OUT/scriptgpu.txt" | head; tail -3 "$OUT/tests.txt"
