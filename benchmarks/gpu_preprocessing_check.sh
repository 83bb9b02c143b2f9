#!/usr/bin/env bash
# Runs on a lent single-GPU machine (device tool) from the repository root, after the staged
# wheels (core, dali, ortgpu, tensorrt-rtx) went into /tmp/site. One phase per call, so each
# fits the 10-minute limit; .atlas/ stays on the warm machine between calls:
#   bash benchmarks/gpu_preprocessing_check.sh install # the project into /tmp/site, machine facts
#   bash benchmarks/gpu_preprocessing_check.sh tests   # pytest -m gpu
#   bash benchmarks/gpu_preprocessing_check.sh steps   # atlas run AG-DS-CUPY-001, AG-DS-DALI-001
#   bash benchmarks/gpu_preprocessing_check.sh chain   # atlas run AG-DS-TRTTEST-001 at 224 px (SCRIPTGPU with loader auto = DALI)
# Everything lands in $OUT: <phase>.tgz and <phase>.txt (the tool brings back at most 8 files).
set -uo pipefail
PHASE=${1:?phase: tests | steps | chain}
OUT=${OUT:-/tmp/atlas-gpu-out}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# GPU-sized settings in this copy only: the manifests in the repository stay CPU-sized
sed -i "s/^  image_size: .*/  image_size: ${IMAGE_SIZE:-224}/" tasks/project.yaml
sed -i "s/^  duration_s: .*/  duration_s: ${DURATION:-0.5}/" tasks/AG-DS-TRTTEST-001.yaml
sed -i "s/^  max_point_s: .*/  max_point_s: 120/" tasks/AG-DS-TRTTEST-001.yaml    # a compile per batch size on the GPU

case "$PHASE" in
install)
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
    { date -u +%FT%TZ; nvidia-smi; lscpu | head -20
      python3 -c "import torch, onnx, onnxruntime as o; print('torch', torch.__version__, 'onnx', onnx.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"
      python3 -c "import nvidia.dali as d; print('dali', d.__version__)"
      python3 -c "import cupy; print('cupy', cupy.__version__)"
      python3 -c "import tensorrt_rtx as t; print('tensorrt_rtx', t.__version__)"
      python3 -m atlas env
    } > "$OUT/install.txt" 2>&1
    cp "$OUT/install.txt" "$WORK/machine.txt"
    ;;
tests)
    timeout 560 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests > "$WORK/pytest-gpu.txt" 2>&1
    echo "pytest exit $?" >> "$WORK/pytest-gpu.txt"
    tail -40 "$WORK/pytest-gpu.txt" > "$OUT/tests.txt"
    ;;
steps)
    { echo "## atlas run AG-DS-CUPY-001"; time timeout 200 python3 -m atlas run AG-DS-CUPY-001; echo "exit $?"
      echo "## atlas run AG-DS-DALI-001"; time timeout 380 python3 -m atlas run AG-DS-DALI-001; echo "exit $?"
      python3 -m atlas show AG-DS-DALI-001; python3 -m atlas show AG-DS-CUPY-001
    } > "$WORK/steps.txt" 2>&1
    for f in AG-DS-CUPY-001/cupy.json AG-DS-CUPY-001/report.md AG-DS-DALI-001/dali.json AG-DS-DALI-001/report.md; do
        cp ".atlas/out/$f" "$WORK/$(dirname "$f" | tr A-Z a-z)-$(basename "$f")" 2>/dev/null
    done
    grep -E "^(✓|✗|-|=) AG-DS|    · |^exit|^real" "$WORK/steps.txt" > "$OUT/steps.txt"
    ;;
chain)
    { echo "## atlas run AG-DS-TRTTEST-001"; time timeout 560 python3 -m atlas run AG-DS-TRTTEST-001; echo "exit $?"
      python3 -m atlas show AG-DS-TRTTEST-001
    } > "$WORK/chain.txt" 2>&1
    for f in AG-DS-SCRIPTGPU-001/training.json AG-DS-TRTPROFILE-001/evaluation.json AG-DS-TRTPROFILE-001/profile.yaml \
             AG-DS-TRTTEST-001/benchmark.json AG-DS-TRTTEST-001/benchmark.md AG-DS-TRTENGINE-001/engines/model_int8.json; do
        cp ".atlas/out/$f" "$WORK/$(dirname "$f" | tr A-Z/ a-z-)-$(basename "$f")" 2>/dev/null
    done
    grep -E "^(✓|✗|-|=) AG-DS|    · |^exit|^real" "$WORK/chain.txt" > "$OUT/chain.txt"
    ;;
*) echo "unknown phase $PHASE" >&2; exit 2 ;;
esac
tar czf "$OUT/$PHASE.tgz" -C "$WORK" .
cat "$OUT/$PHASE.txt"
