"""The inference chain as atlas steps on a CPU: SCRIPTGPU -> ONNXCONV -> TRTPROFILE ->
TRTENGINE (TensorRT for RTX where it is installed, else skipped) -> TRTTEST, on a tiny model
and tiny synthetic set."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from atlas.handler import Context  # noqa: E402
from atlas.registry import Registry  # noqa: E402
from handlers.inference.onnx_conversion import OnnxConv, OnnxConvParams  # noqa: E402
from handlers.training.gpu_training import ScriptGpu  # noqa: E402
from handlers.inference.engine_build import TrtEngine  # noqa: E402
from handlers.inference.trt_profile import TrtProfile  # noqa: E402
from handlers.inference.benchmark import TrtTest  # noqa: E402
from helpers import atlas, task, write_task  # noqa: E402

REGISTRY = Registry.from_classes(ScriptGpu, OnnxConv, TrtProfile, TrtEngine, TrtTest)
SCRIPTGPU, ONNXCONV, PROFILE, ENGINE, BENCH = ("AG-DS-SCRIPTGPU-001", "AG-DS-ONNXCONV-001", "AG-DS-TRTPROFILE-001",
                                               "AG-DS-TRTENGINE-001", "AG-DS-TRTTEST-001")
DATA = {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA", "image_size": 32,
        "synthetic": {"train": 24, "val": 8, "test": 8}}


def project(root: Path) -> Path:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / "project.yaml").write_text(yaml.safe_dump(
        {"name": "xray", "data": DATA, "model": {"arch": "resnet18", "weights": "none", "freeze_until": None}}))
    write_task(root, task(SCRIPTGPU, "script_gpu", params={"epochs": 1, "batch_size": 16, "workers": 0,
                                                            "audit": False}))
    write_task(root, task(ONNXCONV, "onnx_conv", (SCRIPTGPU,), inputs={"checkpoint": f"{SCRIPTGPU}:model.pt"},
                          params={"exporter": "torchscript", "opset": 17}))
    write_task(root, task(PROFILE, "trt_profile", (ONNXCONV,), inputs={"onnx": f"{ONNXCONV}:model.onnx"},
                          params={"calibration_images": 8, "opt_batch": 4, "max_batch": 16}))
    write_task(root, task(ENGINE, "trt_engine", (ONNXCONV, PROFILE), requires=["tensorrt"], inputs={
        "onnx": f"{ONNXCONV}:model.onnx", "onnx_fp16": f"{PROFILE}:model_fp16.onnx",
        "onnx_int8": f"{PROFILE}:model_int8_qdq.onnx", "profile": f"{PROFILE}:profile.yaml"}))
    write_task(root, task(BENCH, "trt_test", (SCRIPTGPU, ONNXCONV, PROFILE, ENGINE), inputs={
        "checkpoint": f"{SCRIPTGPU}:model.pt", "onnx": f"{ONNXCONV}:model.onnx",
        "onnx_fp16": f"{PROFILE}:model_fp16.onnx", "onnx_int8": f"{PROFILE}:model_int8_qdq.onnx",
        "engines": {"from": f"{ENGINE}:engines/", "optional": True}},
        # torch.compile on a 2-core CPU compiles for about a minute per shape: the full chain
        # (atlas run AG-DS-TRTTEST-001) measures it; this test keeps to the quick backends
        params={"batch_sizes": [1, 4], "warmup_s": 0, "duration_s": 0.05, "min_iters": 2,
                "backends": ["pytorch-eager-fp32", "pytorch-fp16-channels-last", "onnxruntime-fp32",
                             "onnxruntime-fp16", "onnxruntime-int8", "tensorrt"]}))
    return root


def run(root: Path, *args: str):
    result = atlas(root, "run", "--json", *args, registry=REGISTRY)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only outcome")
def test_cpu_chain_ends_with_the_comparison_and_tensorrt_listed(tmp_path):
    root = project(tmp_path)
    code, report = run(root, BENCH)
    steps = report["steps"]
    assert code == 0, steps
    assert steps[ONNXCONV]["status"] == "succeeded" and "top-1 agreement 100.00%" in steps[ONNXCONV]["message"]
    assert steps[PROFILE]["status"] == "succeeded"
    rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    if rtx:     # TensorRT for RTX builds on a machine without a GPU
        assert steps[ENGINE]["status"] == "succeeded", steps[ENGINE]
        assert "TensorRT for RTX" in steps[ENGINE]["message"]
    else:
        assert steps[ENGINE]["status"] == "skipped" and "TensorRT not installed" in steps[ENGINE]["reason"]
    assert steps[BENCH]["status"] == "succeeded", steps[BENCH]

    out = root / ".atlas" / "out"
    profile = yaml.safe_load((out / PROFILE / "profile.yaml").read_text())
    assert {"10", "11"} <= set(profile["tensorrt"])
    assert "FP16" in profile["tensorrt"]["10"]["fp16"]["builder_flags"]
    assert profile["tensorrt"]["11"]["fp16"]["onnx"] == "model_fp16.onnx"
    assert profile["profile"]["min"][0] == 1 and profile["profile"]["max"][0] == 16
    assert set(profile["evaluation"]) == {"fp32", "fp16", "int8"}
    assert profile["quantization"]["weights"].startswith("int8 symmetric, per channel")
    assert (out / PROFILE / "calibration" / "images.npy").is_file()

    bench = json.loads((out / BENCH / "benchmark.json").read_text())
    measured = {(m["backend"], m["batch"]) for m in bench["measurements"]}
    for name in ("pytorch-eager-fp32", "pytorch-fp16-channels-last", "onnxruntime-fp32", "onnxruntime-int8"):
        assert {(name, 1), (name, 4)} <= measured, name      # FP16 runs on the CPU: measured, not excused
    missing = {u["backend"]: u["reason"] for u in bench["unavailable"]}
    table = (out / BENCH / "benchmark.md").read_text()
    shown = atlas(root, "show", BENCH, "--json", registry=REGISTRY).stdout
    if rtx:
        for precision in ("fp32", "fp16", "int8"):
            reason = missing[f"tensorrt-rtx-{precision}"]
            assert reason == ("built (TensorRT for RTX, for compute capability 8.0, 8.6, 8.9, 12.0), not runnable "
                              "here: no CUDA device (torch sees none)")
        assert "not runnable here" in table
    else:
        assert "TensorRT not installed" in missing["tensorrt"] and "TensorRT not installed" in table
        assert "tensorrt: not available: TensorRT not installed" in shown
    assert bench["accuracy"]["onnxruntime-fp32"]["agreement"] == 1.0
    assert "onnxruntime-int8" in table
    # the benchmark logs as it goes, and hands the report its charts and table
    log = json.loads(atlas(root, "show", BENCH, "--json", "--log", "500", registry=REGISTRY).stdout)["log_tail"]
    assert any(line.endswith(": pytorch-eager-fp32 at batch 1") and "benchmark 1/" in line for line in log)
    assert any("pytorch-eager-fp32 batch 1 (n/a (CPU)): p50 " in line for line in log)
    data = json.loads(atlas(root, "report", "--format", "json", "-o", "-", registry=REGISTRY).stdout)
    figures = {s["id"]: [f["name"] for f in s["figures"]] for s in data["steps"]}
    assert figures[BENCH] == ["throughput", "latency-p99", "latency-percentiles", "accuracy", "benchmark"]
    assert figures[PROFILE] == ["int8-sqnr", "precisions"]
    assert set(figures[SCRIPTGPU]) == {"training-loss", "training-scores"}
    html = root / "report.html"
    assert atlas(root, "report", "-o", str(html), registry=REGISTRY).exit_code == 0
    assert html.read_text().count('<div class="figure chart"') == 8

    code, report = run(root, BENCH)
    assert {s["status"] for s in report["steps"].values()} <= {"up-to-date", "skipped"}


def test_a_broken_export_fails_onnxconv(tmp_path, monkeypatch):
    """Parity is the step's verdict: an export that runs but answers wrongly fails it."""
    import torchvision

    from handlers.ml import onnx_export
    from handlers.ml.data import IMAGENET_MEAN, IMAGENET_STD
    from handlers.ml.training import save_checkpoint

    model = torchvision.models.resnet18(num_classes=2)
    meta = {"arch": "resnet18", "classes": DATA["classes"], "positive": 1, "image_size": 32,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "synthetic": True}
    save_checkpoint(model, tmp_path / "model.pt", meta)
    real_export = onnx_export.export_onnx

    def broken_export(model, meta, path, **kw):
        info = real_export(model, meta, path, **kw)
        proto = onnx.load(str(path))
        fc = next(t for t in proto.graph.initializer if tuple(t.dims) == (2, 512))
        fc.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(fc), fc.name))
        onnx.save(proto, str(path))
        return info

    monkeypatch.setattr(onnx_export, "export_onnx", broken_export)
    ctx = Context(ONNXCONV, OnnxConvParams(exporter="torchscript", opset=17), {"checkpoint": tmp_path / "model.pt"},
                  tmp_path / "out", tmp_path, {"data": DATA}, log=logging.getLogger("test"))
    result = OnnxConv().run(ctx)
    assert result.status == "failed" and result.message.startswith("ONNX parity failed")
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["parity"]["passed"] is False and record["parity"]["top1_agreement"] < 1.0


@pytest.mark.slow
@pytest.mark.gpu
def test_gpu_chain_times_every_backend_with_and_without_the_copy(tmp_path):
    """The same chain where CUDA exists: CUDA-event timings in both input placements, the
    ONNX Runtime backends on the provider they really ran on, engines listed or timed."""
    root = project(tmp_path)
    code, report = run(root, BENCH)
    steps = report["steps"]
    assert code == 0 and steps[BENCH]["status"] == "succeeded", steps
    bench = json.loads((root / ".atlas" / "out" / BENCH / "benchmark.json").read_text())
    eager = {(m["batch"], m["h2d"], m["timer"]) for m in bench["measurements"] if m["backend"] == "pytorch-eager-fp32"}
    assert {(1, False, "cuda-events"), (1, True, "cuda-events")} <= eager
    assert any(m["backend"] == "pytorch-fp16-channels-last" for m in bench["measurements"])
    engines = [u for u in bench["unavailable"] if u["backend"].startswith("tensorrt")]
    timed = {m["backend"] for m in bench["measurements"] if m["backend"].startswith("tensorrt")}
    if importlib.util.find_spec("tensorrt_rtx") is not None:
        # built; either timed (an RTX-class GPU) or refused in the runtime's own words (e.g. Hopper)
        for precision in ("fp32", "fp16", "int8"):
            name = f"tensorrt-rtx-{precision}"
            refused = [u["reason"] for u in engines if u["backend"] == name]
            assert name in timed or (refused and "not runnable here: TensorRT for RTX" in refused[0]), (name, engines)
