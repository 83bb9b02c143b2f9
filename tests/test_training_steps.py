"""SCRIPTGPU and PROTOTYPE as atlas steps: a real worker process, real (tiny) training,
outputs published, metrics stored, findings reported, reruns decided by the fingerprint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from atlas.registry import Registry  # noqa: E402
from handlers.research.prototype import Prototype  # noqa: E402
from handlers.training.gpu_training import ScriptGpu  # noqa: E402
from helpers import atlas, task, write_task  # noqa: E402

REGISTRY = Registry.from_classes(ScriptGpu, Prototype)
SCRIPTGPU, PROTOTYPE = "AG-DS-SCRIPTGPU-001", "AG-DS-PROTOTYPE-001"
REPO = Path(__file__).resolve().parents[1]
TINY = {"epochs": 2, "batch_size": 16, "workers": 0}


def project(where: Path, **data) -> Path:
    (where / "tasks").mkdir(parents=True, exist_ok=True)
    defaults = {"name": "xray", "data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "image_size": 32,
                                         "synthetic": {"train": 24, "val": 8, "test": 8}, **data},
                "model": {"arch": "resnet18", "weights": "none", "freeze_until": None}}
    (where / "tasks" / "project.yaml").write_text(yaml.safe_dump(defaults))
    return where


def run(root: Path, *args: str):
    result = atlas(root, "run", "--json", *args, registry=REGISTRY)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
def test_scriptgpu_trains_audits_and_reruns_only_when_something_changed(tmp_path):
    root = project(tmp_path)
    shutil.copytree(REPO / "model_training_scripts", root / "model_training_scripts")
    write_task(root, task(SCRIPTGPU, "script_gpu", params=TINY))
    code, report = run(root, SCRIPTGPU)
    step = report["steps"][SCRIPTGPU]
    assert code == 0, step
    assert step["status"] == "succeeded" and "[SYNTHETIC DATA]" in step["message"]
    assert "audit:" in step["message"]
    out = root / ".atlas" / "out" / SCRIPTGPU
    summary = json.loads((out / "training.json").read_text())
    assert summary["synthetic"] is True and summary["arch"] == "resnet18"
    history = summary["history"]
    assert 1 <= summary["best_epoch"] <= len(history)
    best = min(history, key=lambda h: h["val_loss"])         # the checkpoint kept is the lowest val loss
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_loss"] == best["val_loss"]
    per_epoch = -(-sum(summary["images"]["train"]) // TINY["batch_size"])      # the DataLoader keeps the short batch
    assert summary["optimizer_steps"] == len(history) * per_epoch and summary["loader"] == "dataloader"
    assert (out / "model.pt").is_file()
    assert {"report.md", "report.json", "changes.diff", "patched"} <= {p.name for p in (out / "audit").iterdir()}
    shown = json.loads(atlas(root, "show", SCRIPTGPU, "--json", registry=REGISTRY).stdout)
    text = json.dumps(shown)
    assert "val_auc" in text and "test_accuracy" in text
    if not torch.cuda.is_available():
        assert "no CUDA device: trained on the CPU" in text

    assert run(root, SCRIPTGPU)[1]["steps"][SCRIPTGPU]["status"] == "up-to-date"
    # the data settings live in tasks/project.yaml, not in the manifest: still a change
    project(tmp_path, image_size=40)
    plan = json.loads(atlas(root, "plan", "--json", registry=REGISTRY).stdout)
    assert "project:data" in json.dumps(plan)
    # an edited user script re-runs the audit (and so the step)
    project(tmp_path)
    (root / "model_training_scripts" / "train.py").write_text("x = 1\n")
    plan = json.loads(atlas(root, "plan", "--json", registry=REGISTRY).stdout)
    assert "file:model_training_scripts" in json.dumps(plan)


def test_scriptgpu_missing_class_folder_fails_with_the_path_and_keeps_nothing(tmp_path):
    data = tmp_path / "xrays"
    for split in ("train", "val", "test"):
        (data / split / "NORMAL").mkdir(parents=True)
        (data / split / "NORMAL" / "a.png").write_bytes(b"not used")
    root = project(tmp_path / "p", root=str(data))
    write_task(root, task(SCRIPTGPU, "script_gpu", params={**TINY, "audit": False}))
    code, report = run(root, SCRIPTGPU)
    step = report["steps"][SCRIPTGPU]
    assert code == 1 and step["status"] == "failed"
    assert str(data / "train" / "PNEUMONIA") in step["message"]
    assert not (root / ".atlas" / "out" / SCRIPTGPU).exists()


def test_imagenet_unavailable_fails_with_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")   # refused at once: no network
    root = project(tmp_path / "p")
    write_task(root, task(SCRIPTGPU, "script_gpu", params={**TINY, "audit": False, "weights": "imagenet"}))
    code, report = run(root, SCRIPTGPU)
    step = report["steps"][SCRIPTGPU]
    assert code == 1, step
    assert "ImageNet weights for resnet18" in step["message"]


@pytest.mark.slow
def test_prototype_is_compared_with_the_baseline_on_the_same_images(tmp_path):
    root = project(tmp_path)
    write_task(root, task(PROTOTYPE, "prototype", params={**TINY, "epochs": 1, "arch": "efficientnet_b0",
                                                          "subset_per_class": 8}))
    code, report = run(root, PROTOTYPE)
    step = report["steps"][PROTOTYPE]
    assert code == 0, step
    assert "baseline resnet18" in step["message"]
    out = root / ".atlas" / "out" / PROTOTYPE
    rows = json.loads((out / "prototype.json").read_text())["rows"]
    assert [r["arch"] for r in rows] == ["efficientnet_b0", "resnet18"]
    table = (out / "comparison.md").read_text()
    assert "SYNTHETIC DATA" in table and "efficientnet_b0" in table and "8 per class" in table
