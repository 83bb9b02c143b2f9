#!/usr/bin/env bash
# Runs on a lent single-GPU machine (device tool) from the repository root, after the staged
# wheels (pydantic, hatchling, libcst) went into /tmp/site: installs atlas and runs the
# inference chain AG-DS-SCRIPTGPU-001 -> ... -> AG-DS-TRTTEST-001 at 224 px on the GPU, so
# the benchmark harness meets every backend that exists there. Everything lands in $OUT
# (results.tgz + summary.txt: the tool brings back at most 8 files).
#   IMAGE_SIZE (224) and DURATION (seconds per benchmark point, 1.0) override the defaults.
set -uo pipefail
OUT=${OUT:-/tmp/atlas-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
{ date -u +%FT%TZ; nvidia-smi; lscpu | head -20
  python3 -c "import torch, onnx, onnxruntime as o; print('torch', torch.__version__, 'onnx', onnx.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
  python3 -c "import onnxscript; print('onnxscript', onnxscript.__version__)" 2>&1 | tail -1
  python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
} > "$WORK/machine.txt" 2>&1

# GPU-sized settings: the real input size, and a shorter timed window per point so the whole
# chain fits one call. The manifests in the repository stay CPU-sized.
sed -i "s/^  image_size: .*/  image_size: ${IMAGE_SIZE:-224}/" tasks/project.yaml
sed -i "s/^  duration_s: .*/  duration_s: ${DURATION:-1.0}/" tasks/AG-DS-TRTTEST-001.yaml
{
  echo "## atlas run AG-DS-TRTTEST-001"; time timeout 520 python3 -m atlas run AG-DS-TRTTEST-001
  echo "exit code $?"
  echo "## atlas show AG-DS-TRTTEST-001"; python3 -m atlas show AG-DS-TRTTEST-001
} > "$WORK/chain.txt" 2>&1
for f in AG-DS-TRTTEST-001/benchmark.json AG-DS-TRTTEST-001/benchmark.md AG-DS-TRTPROFILE-001/profile.yaml \
         AG-DS-TRTPROFILE-001/evaluation.md AG-DS-ONNXCONV-001/export.json AG-DS-SCRIPTGPU-001/training.json; do
  cp ".atlas/out/$f" "$WORK/$(dirname "$f" | tr A-Z a-z)-$(basename "$f")" 2>/dev/null
done
tar czf "$OUT/results.tgz" -C "$WORK" .
{ grep -E "^(✓|✗|-|=) AG-DS|    · |exit code|^real" "$WORK/chain.txt"; } > "$OUT/summary.txt"
cat "$OUT/summary.txt"
