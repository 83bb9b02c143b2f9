"""Every path a manifest or a param names stays inside the project (links count by where
they lead); the external dataset root the project defaults name is the one exception.
And a handler's required inputs are checked at validation, located."""
from __future__ import annotations

import os

import pytest

from atlas.registry import Registry
from handlers.inference.onnx_conversion import OnnxConv
from handlers.research.manual import Manual
from handlers.training.gpu_training import ScriptGpu
from helpers import atlas, task, write_project

M, S, O = "AG-T-M-001", "AG-T-S-001", "AG-T-O-001"
REAL = Registry.from_classes(Manual, ScriptGpu, OnnxConv)


def problems(root, registry=REAL) -> list[str]:
    result = atlas(root, "validate", registry=registry)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("tasks/")]


@pytest.mark.parametrize("evidence, why", [
    ("../../etc/passwd", "climbs out of the project with '..'"),
    ("/etc/passwd", "is absolute; give a path relative to the project"),
    ("notes/../../../x", "climbs out of the project with '..'"),
])
def test_manual_evidence_outside_the_project_is_a_located_error(tmp_path, evidence, why):
    root = write_project(tmp_path, task(M, "manual", params={"evidence": ["notes.md", evidence]}))
    found = problems(root)
    assert len(found) == 1 and found[0].startswith(f"tasks/{M}.yaml:") and why in found[0]
    assert found[0].endswith("[params.evidence[1]]")


def test_a_link_out_of_the_project_counts_as_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = write_project(tmp_path / "p", task(M, "manual", params={"evidence": ["link.txt"]}),
                         task(S, "script_gpu", params={"scripts": "scripts"}))
    os.symlink(outside / "secret.txt", root / "link.txt")
    os.symlink(outside, root / "scripts")
    found = problems(root)
    assert any(f"tasks/{M}.yaml:" in p and "outside the project" in p and "[params.evidence[0]]" in p for p in found)
    assert any(f"tasks/{S}.yaml:" in p and "outside the project" in p and "[params.scripts]" in p for p in found)
    # a link that stays inside is fine
    (root / "link.txt").unlink()
    (root / "notes.txt").write_text("mine")
    os.symlink(root / "notes.txt", root / "link.txt")
    assert [p for p in problems(root) if f"{M}.yaml" in p] == []


def test_a_script_folder_outside_and_weights_outside_are_errors(tmp_path):
    root = write_project(tmp_path, task(S, "script_gpu", params={"scripts": "../other", "weights": "/tmp/w.pth"}))
    found = problems(root)
    assert any("[params.scripts]" in p and "climbs out" in p for p in found)
    assert any("[params.weights]" in p and "absolute" in p for p in found)
    (root / "tasks" / "project.yaml").write_text("name: p\nmodel:\n  weights: ../w.pth\n")
    assert any(p.startswith("tasks/project.yaml:3:") and "[model.weights]" in p for p in problems(root))


def test_the_dataset_root_may_be_outside(tmp_path):
    data = tmp_path / "xrays"
    data.mkdir()
    root = write_project(tmp_path / "p", task(M, "manual"))
    (root / "tasks" / "project.yaml").write_text(f"name: p\ndata:\n  root: {data}\nmodel:\n  weights: imagenet\n")
    assert atlas(root, "validate", registry=REAL).exit_code == 0


def test_an_input_that_climbs_out_of_its_source_is_an_error(tmp_path):
    root = write_project(tmp_path, task("AG-T-A-001", "echo"),
                         task("AG-T-B-001", "copy", ("AG-T-A-001",), inputs={"src": "AG-T-A-001:out/../../../x"}))
    result = atlas(root, "validate")
    assert result.exit_code == 3
    line = next(x for x in result.stderr.splitlines() if x.startswith("tasks/AG-T-B-001.yaml:"))
    assert "climbs out" in line and "[inputs.src]" in line


def test_a_missing_required_input_is_reported_where_it_belongs(tmp_path):
    root = write_project(tmp_path, task(O, "onnx_conv"))
    found = problems(root)
    assert found == [f"tasks/{O}.yaml:1:1: input 'checkpoint' is required by handler onnx_conv (usually "
                     f"AG-DS-SCRIPTGPU-001:model.pt (a training step's checkpoint)) [inputs.checkpoint]"]
    write_project(tmp_path, task(S, "script_gpu"), task(O, "onnx_conv", (S,), inputs={"other": f"{S}:model.pt"}))
    found = problems(root)
    assert len(found) == 1 and found[0].startswith(f"tasks/{O}.yaml:") and "'checkpoint' is required" in found[0]
    assert not found[0].startswith(f"tasks/{O}.yaml:1:1:")                      # at the inputs key
