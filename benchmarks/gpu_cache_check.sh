#!/usr/bin/env bash
# Runs on a lent single-GPU machine (device tool) from the repository root, after the staged
# core wheels went into /tmp/site. The main job from a cached project, and what a changed
# manifest does to it; then the GPU tests. One phase per call (each fits the 10-minute limit):
#   bash benchmarks/gpu_cache_check.sh chain   # install, validate (cache), atlas run AG-DS-TRTTEST-001,
#                                              # one manifest edited: validate, plan, no-op run
#   bash benchmarks/gpu_cache_check.sh tests   # pytest -m gpu
#   bash benchmarks/gpu_cache_check.sh cpu     # the CPU tests of loading manifests (two cores,
#                                              # YAML bounds, fuzzing) on that machine's Python and PyYAML
# Everything lands in $OUT.
set -uo pipefail
PHASE=${1:?phase: chain | tests | cpu}
OUT=${OUT:-/tmp/atlas-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
parsed() {   # how many manifests the load behind an atlas command reads (0: a cache hit)
    python3 -c "from pathlib import Path; from atlas.project_cache import open_project; \
p = open_project(Path('.').resolve()); print('manifests read by the load:', p.parsed, 'of', len(p.steps))"
}

case "$PHASE" in
chain)
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
    { date -u +%FT%TZ; nvidia-smi; python3 -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt" 2>&1
    # GPU-sized settings in this copy only: the manifests in the repository stay CPU-sized
    sed -i "s/^  image_size: .*/  image_size: ${IMAGE_SIZE:-224}/" tasks/project.yaml
    sed -i "s/^  duration_s: .*/  duration_s: ${DURATION:-0.5}/" tasks/AG-DS-TRTTEST-001.yaml
    sed -i "s/^  max_point_s: .*/  max_point_s: 120/" tasks/AG-DS-TRTTEST-001.yaml
    sleep 2.2                    # a file changed in the last 2 s is not trusted to the cache
    {
        echo "## atlas validate (full load, writes the cache)"; python3 -m atlas validate; parsed
        echo "## atlas run AG-DS-TRTTEST-001 (from the cache; the steps that run load in full)"
        time timeout 470 python3 -m atlas run AG-DS-TRTTEST-001; echo "exit $?"
        echo "## one manifest edited (a comment appended to AG-DS-ONNXCONV-001)"
        echo "# edited on the GPU machine" >> tasks/AG-DS-ONNXCONV-001.yaml
        parsed
        echo "## atlas validate"; time python3 -m atlas validate
        echo "## atlas plan AG-DS-TRTTEST-001"; time python3 -m atlas plan AG-DS-TRTTEST-001
        echo "## atlas run AG-DS-TRTTEST-001 (no-op)"; time python3 -m atlas run AG-DS-TRTTEST-001; echo "exit $?"
        python3 -m atlas status
    } > "$OUT/chain-full.txt" 2>&1
    grep -vE "epoch [0-9]+/[0-9]+|^  AG-DS-[A-Z]+-001: .*[0-9]+/[0-9]+$" "$OUT/chain-full.txt" > "$OUT/chain.txt"
    tail -60 "$OUT/chain.txt"
    ;;
tests)
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
    timeout 560 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests > "$OUT/pytest-gpu.txt" 2>&1
    echo "pytest exit $?" >> "$OUT/pytest-gpu.txt"
    tail -30 "$OUT/pytest-gpu.txt"
    ;;
cpu)
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
    python3 -c "import sys, yaml; from yaml import _yaml; print('Python', sys.version.split()[0], '| PyYAML', \
yaml.__version__, '| libyaml', _yaml.get_version_string(), '| CPUs', len(__import__('os').sched_getaffinity(0)))" \
        > "$OUT/pytest-cpu-loading.txt" 2>&1
    timeout 540 python3 -m pytest -q -p no:cacheprovider -rs tests/test_two_cores.py tests/test_yamlpos.py \
        tests/test_manifest_bounds.py tests/test_loader.py tests/test_validate_fuzz.py tests/test_project_cache.py \
        tests/test_faults.py >> "$OUT/pytest-cpu-loading.txt" 2>&1
    echo "pytest exit $?" >> "$OUT/pytest-cpu-loading.txt"
    tail -30 "$OUT/pytest-cpu-loading.txt"
    ;;
*) echo "unknown phase $PHASE" >&2; exit 2 ;;
esac
