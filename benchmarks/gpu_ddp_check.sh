#!/usr/bin/env bash
# Runs on a lent multi-GPU machine (device tool) from the repository root, after the staged
# wheels went into /tmp/site: DDP scaling of ResNet-50 training at 1, 2 and 4 processes
# through the DISTRIBUTED step's launcher and worker, then `atlas run AG-DS-DISTRIBUTED-001`.
set -uo pipefail
OUT=${OUT:-/tmp/atlas-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# NVLink multicast stays off on these machines (device KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
NGPU=$(nvidia-smi -L | wc -l)
{ date -u +%FT%TZ; nvidia-smi; nvidia-smi topo -m; } > "$OUT/machine.txt" 2>&1
NPROCS="1"; for n in 2 4 8; do [ "$n" -le "$NGPU" ] && NPROCS="$NPROCS $n"; done
timeout 420 python3 benchmarks/ddp_scaling.py --nproc $NPROCS --out "$OUT/ddp-scaling.json" \
  > "$OUT/ddp-scaling.log" 2>&1; echo "ddp_scaling exit $?" >> "$OUT/ddp-scaling.log"
{
  echo "## atlas run AG-DS-DISTRIBUTED-001 -v"; time timeout 240 python3 -m atlas run AG-DS-DISTRIBUTED-001 -v
  echo "exit code $?"
  echo "## atlas show AG-DS-DISTRIBUTED-001"; python3 -m atlas show AG-DS-DISTRIBUTED-001
} > "$OUT/distributed.txt" 2>&1
cp .atlas/out/AG-DS-DISTRIBUTED-001/scaling.json "$OUT/distributed-scaling.json" 2>/dev/null
cp .atlas/out/AG-DS-DISTRIBUTED-001/launch.md "$OUT/distributed-launch.md" 2>/dev/null
grep -E '^\{' "$OUT/ddp-scaling.log" | cut -c1-300; tail -2 "$OUT/ddp-scaling.log"
grep -E "exit code|succeeded|failed" "$OUT/distributed.txt" | head
