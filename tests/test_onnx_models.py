"""The ONNX models of the inference chain: the export (metadata, dynamic batch, parity that
catches a broken export), the FP16 model, and an INT8 model that is really quantized the way
TensorRT needs (Q/DQ, int8, zero-point 0, per-channel weights)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from handlers.ml import quantize  # noqa: E402
from handlers.ml.errors import ModelError  # noqa: E402
from handlers.ml.onnx_export import export_onnx, read_metadata  # noqa: E402
from handlers.ml.ort import open_session, run_logits  # noqa: E402
from handlers.ml.parity import compare, parity_failure  # noqa: E402
from handlers.ml.quantize import inspect_qdq, quantize_int8, to_fp16  # noqa: E402

SIZE = 32
META = {"arch": "resnet18", "classes": ["NORMAL", "PNEUMONIA"], "positive": 1, "image_size": SIZE,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "synthetic": True}
LOG = logging.getLogger("test")


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=2).eval()


def inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    info = export_onnx(model, META, folder / "model.onnx", opset=17, exporter="torchscript",
                       checkpoint_sha256="abc", log=LOG)
    return model, folder / "model.onnx", info


def reference(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_export_is_checked_with_dynamic_batch_and_metadata(exported):
    model, path, info = exported
    assert info.opset == 17 and info.exporter == "torchscript"
    assert info.input_shape == ["batch", 3, SIZE, SIZE] and info.output_shape == ["batch", 2]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = read_metadata(path)
    assert json.loads(meta["atlas.classes"]) == ["NORMAL", "PNEUMONIA"]
    assert meta["atlas.positive_class"] == "PNEUMONIA" and meta["atlas.image_size"] == str(SIZE)
    assert json.loads(meta["atlas.mean"]) == META["mean"] and json.loads(meta["atlas.std"]) == META["std"]
    session, provider = open_session(path, "CPUExecutionProvider")
    for n in (1, 5):       # any batch size: the batch axis is dynamic
        assert run_logits(session, inputs(n)).shape == (n, 2)


def test_parity_passes_for_a_faithful_export(exported):
    model, path, _ = exported
    x = inputs(16)
    agreement = compare(reference(model, x), run_logits(open_session(path, "CPUExecutionProvider")[0], x))
    assert agreement.max_abs_diff < 1e-4 and agreement.top1_agreement == 1.0
    assert parity_failure(agreement, 1e-3, 1.0) is None


def test_parity_detects_a_deliberately_broken_export(exported, tmp_path):
    model, path, _ = exported
    broken = onnx.load(str(path))
    # Flip the classifier's weights: the graph still checks and runs, the answers are wrong.
    fc = next(t for t in broken.graph.initializer if numpy_helper.to_array(t).shape == (2, 512))
    fc.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(fc), fc.name))
    onnx.save(broken, tmp_path / "broken.onnx")
    x = inputs(16)
    agreement = compare(reference(model, x), run_logits(open_session(tmp_path / "broken.onnx")[0], x))
    failure = parity_failure(agreement, 1e-3, 1.0)
    assert failure is not None and "max |Δlogit|" in failure and "top-1 agreement" in failure


def test_export_refuses_an_old_opset(tmp_path):
    with pytest.raises(ModelError, match="opset 13 is below 17"):
        export_onnx(tiny_model(), META, tmp_path / "m.onnx", opset=13)


def test_dynamo_exporter_without_onnxscript_is_a_clear_error(monkeypatch):
    from handlers.ml import onnx_export
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec", lambda name: None)
    assert onnx_export.choose_exporter("auto") == "torchscript"
    with pytest.raises(ModelError, match="needs onnxscript"):
        onnx_export.choose_exporter("dynamo")


def test_fp16_model_keeps_float32_io_and_stays_close(exported, tmp_path):
    model, path, _ = exported
    tool = to_fp16(path, tmp_path / "fp16.onnx")
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    assert tool and graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = inputs(8)
    agreement = compare(reference(model, x), run_logits(open_session(tmp_path / "fp16.onnx")[0], x))
    assert agreement.max_prob_diff < 0.05


@pytest.fixture(scope="module")
def int8_model(exported, tmp_path_factory):
    _, path, _ = exported
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    tool = quantize_int8(path, out, inputs(32, seed=3), method="entropy", quantizer="onnxruntime", log=LOG)
    return out, tool


def test_int8_model_is_really_quantized_symmetric_and_per_channel(int8_model):
    path, tool = int8_model
    assert tool == "ONNX Runtime static quantization"
    report = inspect_qdq(path)
    assert report.problems() == []
    assert report.quantize_nodes > 10 and report.dequantize_nodes > report.quantize_nodes
    assert report.symmetric and report.quantized_convs == report.convs == 20
    assert report.per_channel_weights >= report.convs and report.per_tensor_weights == 0
    # Read the tensors themselves, not only the report: every activation/weight zero-point
    # is an int8 zero, and a conv weight's scale has one entry per output channel.
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qlinear = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    for node in qlinear:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    conv = next(n for n in graph.node if n.op_type == "Conv")
    dq = next(n for n in graph.node if n.output[0] == conv.input[1])
    weight, scale = inits[dq.input[0]], inits[dq.input[1]]
    assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)


def test_int8_model_runs_in_onnxruntime_at_any_batch(int8_model):
    """How close INT8 stays to FP32 depends on a trained model: TRTPROFILE measures it."""
    x = inputs(16, seed=5)
    out = run_logits(open_session(int8_model[0])[0], x)
    assert out.shape == (16, 2) and np.isfinite(out).all()


def test_inspector_rejects_an_asymmetric_model(exported, tmp_path):
    """The check can fail: ORT's default (uint8 activations, asymmetric) is not TensorRT's form."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    _, path, _ = exported
    quantize_static(str(path), str(tmp_path / "asym.onnx"), quantize._ArrayReader("input", inputs(8), 4),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    problems = inspect_qdq(tmp_path / "asym.onnx").problems()
    assert any("not int8" in p for p in problems)


def test_inspector_rejects_a_float_model(exported):
    assert any("not quantized" in p for p in inspect_qdq(exported[1]).problems())


def test_quantizer_choice(monkeypatch):
    monkeypatch.setattr(quantize, "has_modelopt", lambda: False)
    assert quantize.choose_quantizer("auto", "entropy") == "onnxruntime"
    with pytest.raises(ModelError, match="ModelOpt is not installed"):
        quantize.choose_quantizer("modelopt", "entropy")
    monkeypatch.setattr(quantize, "has_modelopt", lambda: True)
    assert quantize.choose_quantizer("auto", "entropy") == "modelopt"
    assert quantize.choose_quantizer("auto", "percentile") == "onnxruntime"
    with pytest.raises(ModelError, match="entropy or max"):
        quantize.choose_quantizer("modelopt", "percentile")
    with pytest.raises(ModelError, match="unknown calibration method"):
        quantize.choose_quantizer("auto", "kl")


def test_per_tensor_weights_are_flagged_and_described_from_the_model(exported, tmp_path):
    """The weights' description is read from their scales: a per-tensor model says so and fails."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    _, path, _ = exported
    quantize_static(str(path), str(tmp_path / "pt.onnx"), quantize._ArrayReader("input", inputs(8), 4),
                    quant_format=QuantFormat.QDQ, per_channel=False, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                                               "QuantizeBias": False})
    report = inspect_qdq(tmp_path / "pt.onnx")
    assert report.per_channel_weights == 0 and report.per_tensor_weights >= 20
    assert report.weights() == f"int8, per tensor ({report.per_tensor_weights} weight tensors)"
    assert any("quantized per tensor, not per channel" in p for p in report.problems())


def test_int32_bias_dequantization_is_flagged(exported, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    _, path, _ = exported
    quantize_static(str(path), str(tmp_path / "b.onnx"), quantize._ArrayReader("input", inputs(8), 4),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    report = inspect_qdq(tmp_path / "b.onnx")
    assert report.int32_biases > 0 and any("TensorRT's ONNX parser refuses" in p for p in report.problems())


def _activation_scales(path):
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [float(inits[n.input[1]].ravel()[0]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def test_entropy_calibration_clips_where_minmax_does_not(exported, tmp_path):
    """ONNX Runtime's quantize_static gives its entropy calibrator 128 bins and 128 kept, which
    reproduces minmax exactly; atlas's entropy (2048 bins) must clip some outlier ranges."""
    _, path, _ = exported
    cal = inputs(32, seed=3)
    cal[0, :, :2, :2] = 40.0                      # one outlier patch stretches minmax's ranges
    quantize_int8(path, tmp_path / "e.onnx", cal, method="entropy", quantizer="onnxruntime")
    quantize_int8(path, tmp_path / "m.onnx", cal, method="minmax", quantizer="onnxruntime")
    entropy, minmax = _activation_scales(tmp_path / "e.onnx"), _activation_scales(tmp_path / "m.onnx")
    assert len(entropy) == len(minmax)
    assert sum(e < m * 0.95 for e, m in zip(entropy, minmax)) >= len(minmax) // 4
    assert all(e <= m * 1.0001 for e, m in zip(entropy, minmax))


def test_quantization_noise_is_measured_per_layer(exported, int8_model):
    _, path, _ = exported
    snr = quantize.quantization_snr(path, int8_model[0], inputs(8, seed=4), batch_size=4)
    assert len(snr) > 20 and all(isinstance(t, str) and np.isfinite(db) for t, db in snr)
    assert snr[0][1] > snr[-1][1]                  # the error builds up with depth
