"""`atlas run -j N` on a machine with several GPUs: parallel GPU steps get distinct devices."""
from __future__ import annotations

import json
import time

import pytest

from helpers import run_json, task, write_project

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 or more CUDA devices")
def test_parallel_gpu_steps_get_their_own_cuda_visible_devices(tmp_path):
    ids = ["AG-T-GPUA-001", "AG-T-GPUB-001"]
    root = write_project(tmp_path, *(task(t, "which_gpu") for t in ids))
    started = time.monotonic()
    code, report = run_json(root, *ids, "-j", "2")
    assert code == 0, report
    seen = [json.loads((root / ".atlas/out" / t / "gpu.json").read_text()) for t in ids]
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in seen) == ["0", "1"]
    assert all(s["visible_count"] == 1 for s in seen)
    assert seen[0]["uuid"] != seen[1]["uuid"]
    assert [s["devices"] for s in seen] in ([[0], [1]], [[1], [0]])
    print(f"two GPU steps under -j 2 in {time.monotonic() - started:.1f}s:", seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_without_j_a_gpu_step_sees_every_gpu(tmp_path):
    root = write_project(tmp_path, task("AG-T-GPUA-001", "which_gpu"))
    code, report = run_json(root, "AG-T-GPUA-001")
    assert code == 0, report
    seen = json.loads((root / ".atlas/out/AG-T-GPUA-001/gpu.json").read_text())
    assert seen["visible_count"] == torch.cuda.device_count()
    assert seen["devices"] == list(range(torch.cuda.device_count()))
