"""Real engines from TensorRT for RTX, built ahead of time on this machine (no GPU needed):
small ONNX models (a conv net in FP32 and FP16, and its INT8 Q/DQ form) parse and build,
a broken model fails naming its node and the parser's message, the record describes the
real engine, and AG-DS-TRTENGINE-001 picks TensorRT for RTX where full TensorRT cannot build.
Skipped where `tensorrt_rtx` is not installed (pip install 'atlas-runner[tensorrt-rtx]')."""
from __future__ import annotations

import logging

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX not installed (pip install tensorrt-rtx-cu13)")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")

from atlas.handler import Context  # noqa: E402
from handlers.inference.engine_build import TrtEngine, TrtEngineParams  # noqa: E402
from handlers.inference.trt.builder import RTX_DEFAULT_TARGETS, build_engine  # noqa: E402
from handlers.inference.trt.choose import Found  # noqa: E402
from handlers.inference.trt.errors import TrtError  # noqa: E402
from handlers.inference.trt.profile import (ONNX_FILES, PRECISIONS, batch_profile, build_settings,  # noqa: E402
                                            settings_for, write_profile)
from handlers.inference.trt.record import EngineRecord, find_engines  # noqa: E402
from handlers.ml.onnx_export import export_onnx  # noqa: E402
from handlers.ml.quantize import inspect_qdq, quantize_int8, to_fp16  # noqa: E402

SIZE = 32
META = {"arch": "resnet18", "classes": ["NORMAL", "PNEUMONIA"], "positive": 1, "image_size": SIZE,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "synthetic": True}
LOG = logging.getLogger("test_trt_rtx")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """model.onnx, model_fp16.onnx and model_int8_qdq.onnx of a small ResNet, as TRTPROFILE writes them."""
    folder = tmp_path_factory.mktemp("rtx")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    export_onnx(model, META, folder / ONNX_FILES["fp32"], opset=17, exporter="torchscript", checkpoint_sha256="x",
                log=LOG)
    to_fp16(folder / ONNX_FILES["fp32"], folder / ONNX_FILES["fp16"])
    calibration = np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    quantize_int8(folder / ONNX_FILES["fp32"], folder / ONNX_FILES["int8"], calibration, method="minmax",
                  quantizer="onnxruntime", log=LOG)
    return folder


def rtx_entry(precision: str) -> dict:
    settings = settings_for(build_settings(batch_profile("input", 3, SIZE, 1, 4, 8), dict(ONNX_FILES), 0.25,
                                           PRECISIONS), trt.__version__, "tensorrt-rtx")
    return {**settings, **settings[precision]}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_model_trtprofile_writes_builds_into_an_engine(models, tmp_path, precision):
    entry = rtx_entry(precision)
    engine = tmp_path / f"model_{precision}.engine"
    record = build_engine(models / entry["onnx"], engine, precision, entry, None, LOG, family="tensorrt-rtx")
    assert engine.stat().st_size == record.size_bytes > 100_000       # a real plan, not a few bytes
    assert record.family == "tensorrt-rtx" and record.tensorrt_version == trt.__version__
    assert record.builder == "python-api" and record.strongly_typed and record.builder_flags == []
    assert record.target_compute_capabilities == list(RTX_DEFAULT_TARGETS)
    assert record.timing_cache == {}                      # TensorRT for RTX has no use for one
    assert record.onnx == entry["onnx"] and record.layers["count"] > 20
    kinds = record.layers["by_type_and_output"]
    if precision == "int8":                               # the Q/DQ pairs are there for the builder to fuse
        assert any(k.startswith("QUANTIZE:INT8") for k in kinds) and any(k.startswith("DEQUANTIZE") for k in kinds)
    elif precision == "fp16":
        assert any(k.startswith("CONVOLUTION:HALF") for k in kinds)
    else:
        assert any(k.startswith("CONVOLUTION:FLOAT") for k in kinds)


def test_the_int8_model_keeps_its_bias_in_float_for_the_parser(models):
    """TensorRT's parsers refuse a DequantizeLinear of an int32 bias (measured: TensorRT for RTX
    1.7 stops at conv1.weight_bias_DequantizeLinear); the quantizer keeps biases in float."""
    report = inspect_qdq(models / ONNX_FILES["int8"])
    assert report.problems() == [] and report.per_channel_weights > 0 and report.per_tensor_weights == 0
    graph = onnx.load(str(models / ONNX_FILES["int8"])).graph
    inits = {t.name: t for t in graph.initializer}
    dq_of_int32 = [n.name for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == onnx.TensorProto.INT32]
    assert dq_of_int32 == []


def test_explicit_targets_are_set_and_recorded(models, tmp_path):
    entry = rtx_entry("fp16")
    record = build_engine(models / entry["onnx"], tmp_path / "e.engine", "fp16", entry, None, LOG,
                          family="tensorrt-rtx", targets=("8.9",))
    assert record.target_compute_capabilities == ["8.9"]
    with pytest.raises(TrtError) as caught:
        build_engine(models / entry["onnx"], tmp_path / "f.engine", "fp16", entry, None, LOG,
                     family="tensorrt-rtx", targets=("9.9",))
    assert "cannot build for compute capability 9.9" in caught.value.message and "8.9" in caught.value.hint


def test_a_model_the_parser_rejects_names_the_node_and_the_reason(tmp_path):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])
    node = onnx.helper.make_node("NoSuchOperator", ["input"], ["logits"], name="/head/NoSuchOperator",
                                 domain="com.example")
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "broken", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17),
                                                  onnx.helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(TrtError) as caught:
        build_engine(tmp_path / "model.onnx", tmp_path / "m.engine", "fp32", rtx_entry("fp32"), None, LOG,
                     family="tensorrt-rtx")
    message = caught.value.message
    assert message.startswith(f"TensorRT for RTX {trt.__version__} could not parse model.onnx: node 0")
    assert "/head/NoSuchOperator" in message and "NoSuchOperator" in message
    assert not (tmp_path / "m.engine").exists()


def test_the_engine_step_builds_every_precision_with_tensorrt_for_rtx_without_a_gpu(models, tmp_path, monkeypatch):
    import handlers.inference.trt.choose as choose
    monkeypatch.setattr(choose, "detect", lambda: Found(tensorrt=False, tensorrt_rtx=True, trtexec=None))
    profile = batch_profile("input", 3, SIZE, 1, 4, 8)
    write_profile(tmp_path / "profile.yaml", {"profile": profile.as_dict(), "precisions": list(PRECISIONS),
                                               "onnx": dict(ONNX_FILES),
                                               "tensorrt": build_settings(profile, dict(ONNX_FILES), 0.25, PRECISIONS)})
    inputs = {"onnx": models / ONNX_FILES["fp32"], "onnx_fp16": models / ONNX_FILES["fp16"],
              "onnx_int8": models / ONNX_FILES["int8"], "profile": tmp_path / "profile.yaml"}
    ctx = Context("AG-DS-TRTENGINE-001", TrtEngineParams(), inputs, tmp_path / "out", tmp_path, {}, log=LOG)
    result = TrtEngine().run(ctx)
    assert result.status == "succeeded", (result.message, result.hint)
    assert result.message.startswith(f"TensorRT for RTX {trt.__version__} (Python API) for compute capability "
                                     "8.0, 8.6, 8.9, 12.0: fp32 ")
    found, problems = find_engines(tmp_path / "out" / "engines")
    assert problems == [] and sorted(r.precision for r, _ in found) == ["fp16", "fp32", "int8"]
    record = EngineRecord.read(tmp_path / "out" / "engines" / "model_int8.json")
    assert record.family == "tensorrt-rtx" and record.onnx == ONNX_FILES["int8"]
    assert not (tmp_path / ".atlas" / "cache" / "tensorrt").exists()      # no timing cache for TensorRT for RTX


@pytest.mark.gpu
def test_this_gpus_runtime_runs_the_engine_or_refuses_it_in_its_own_words(models, tmp_path):
    from handlers.inference.trt.runtime import TrtRunner
    entry = rtx_entry("fp16")
    engine = tmp_path / "model_fp16.engine"
    build_engine(models / entry["onnx"], engine, "fp16", entry, None, LOG, family="tensorrt-rtx")
    major, minor = torch.cuda.get_device_capability(0)
    capability = f"{major}.{minor}"
    try:
        runner = TrtRunner(engine, family="tensorrt-rtx", runtime_cache=tmp_path / "rt.cache")
    except TrtError as exc:
        assert capability not in RTX_DEFAULT_TARGETS and not capability.startswith("12.")
        assert exc.message.startswith(f"TensorRT for RTX {trt.__version__} refused model_fp16.engine: ")
        assert capability in exc.message          # the runtime names this GPU's capability
        return
    x = torch.zeros(4, 3, SIZE, SIZE, device="cuda")
    stream = torch.cuda.Stream()
    out = runner.infer(x, stream.cuda_stream)
    stream.synchronize()
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    runner.close()
    assert (tmp_path / "rt.cache").stat().st_size > 0
