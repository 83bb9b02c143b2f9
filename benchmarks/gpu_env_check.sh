#!/usr/bin/env bash
# Runs on a lent GPU machine (device tool) from the repository root, after the `core`
# wheels were installed into /tmp/site: installs atlas, then records `atlas env`,
# `atlas run AG-DS-LIBTEST-001` (twice: the second must be up to date), the step details,
# the status report and the test suite (GPU tests included) under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/atlas-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1      # hatchling (for the install) lives there
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . || exit 1
atlas() { python3 -m atlas "$@"; }
{
  echo "## date: $(date -u +%FT%TZ)"
  echo "## nvidia-smi"; nvidia-smi
  echo "## python: $(python3 --version)"
  echo "## atlas env (wall time below)"; time atlas env
  echo "## atlas validate / plan (wall time)"; time atlas validate; time atlas plan AG-DS-LIBTEST-001
  echo "## atlas run AG-DS-LIBTEST-001 -v"; time atlas run AG-DS-LIBTEST-001 -v; echo "exit code $?"
  echo "## second run (must be up to date)"; atlas run AG-DS-LIBTEST-001; echo "exit code $?"
  echo "## atlas show AG-DS-LIBTEST-001"; atlas show AG-DS-LIBTEST-001 --log 40
  echo "## atlas show AG-DS-CUDASETUP-001"; atlas show AG-DS-CUDASETUP-001
} > "$OUT/run.txt" 2>&1
atlas env --json > "$OUT/env.json"
atlas report --format md > "$OUT/report.md"
cp .atlas/out/AG-DS-LIBTEST-001/report.json "$OUT/libtest_report.json"
cp .atlas/out/AG-DS-CUDASETUP-001/SETUP.md "$OUT/cudasetup_SETUP.md"
{ echo "## pytest -m gpu"; python3 -m pytest -q -m gpu -rs -p no:cacheprovider
  echo "## pytest (whole suite)"; python3 -m pytest -q -rs -p no:cacheprovider; } > "$OUT/tests.txt" 2>&1
tail -5 "$OUT/tests.txt"; grep -E "exit code|succeeded|up-to-date" "$OUT/run.txt" | head -20
