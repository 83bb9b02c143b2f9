"""Reduced-precision ONNX models for TensorRT: an FP16 model (float32 inputs and outputs) and
an INT8 explicit-quantization model (Q/DQ nodes, symmetric, zero-point 0, per-channel
weights), the form TensorRT 10 and 11 consume without a calibrator of their own."""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas.atomic import replaced_atomically
from handlers.ml.errors import ModelError
from handlers.ml.quiet import quiet_tools

CALIBRATION_METHODS = ("entropy", "percentile", "minmax")


def has_modelopt() -> bool:
    try:
        return importlib.util.find_spec("modelopt.onnx") is not None
    except ModuleNotFoundError:
        return False


def choose_quantizer(requested: str, method: str) -> str:
    """ModelOpt makes Q/DQ placed by TensorRT's own rules; it calibrates with entropy or max
    only, so percentile stays with ONNX Runtime."""
    if requested not in ("auto", "onnxruntime", "modelopt"):
        raise ModelError(f"unknown quantizer {requested!r}", "use quantizer: auto, onnxruntime or modelopt")
    if method not in CALIBRATION_METHODS:
        raise ModelError(f"unknown calibration method {method!r}", f"use one of {', '.join(CALIBRATION_METHODS)}")
    if requested == "modelopt":
        if not has_modelopt():
            raise ModelError("quantizer modelopt: NVIDIA ModelOpt is not installed",
                             "pip install nvidia-modelopt[onnx], or quantizer: onnxruntime")
        if method == "percentile":
            raise ModelError("ModelOpt calibrates INT8 with entropy or max only",
                             "use calibration_method: entropy or minmax with ModelOpt")
        return "modelopt"
    if requested == "auto" and has_modelopt() and method != "percentile":
        return "modelopt"
    return "onnxruntime"


def to_fp16(src: Path, dst: Path) -> str:
    """FP16 weights and activations with float32 inputs/outputs (so every backend feeds it
    the same array). Returns the tool used."""
    import onnx
    with replaced_atomically(dst, ".onnx") as tmp:
        if has_modelopt():
            import modelopt.onnx.autocast as autocast
            converted = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16",
                                                            keep_io_types=True)
            tool = "ModelOpt AutoCast"
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16
            converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            tool = "onnxruntime float16 converter"
        onnx.save(converted, str(tmp))
    return tool


class _ArrayReader:
    """ONNX Runtime's CalibrationDataReader over an in-memory calibration array."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: np.ascontiguousarray(images[i:i + batch_size])}
                              for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, *, method: str = "entropy",
                  percentile: float = 99.999, quantizer: str = "auto", batch_size: int = 16, log=None) -> str:
    """Static INT8 post-training quantization into a Q/DQ model; returns the tool used."""
    tool = choose_quantizer(quantizer, method)
    with replaced_atomically(dst, ".onnx") as tmp, quiet_tools(log):
        if tool == "modelopt":
            from modelopt.onnx.quantization import quantize
            quantize(str(src), quantize_mode="int8", calibration_data=calibration,
                     calibration_method="max" if method == "minmax" else method,
                     calibration_eps=["cpu"], output_path=str(tmp), high_precision_dtype="fp32")
        else:
            _ort_quantize(src, str(tmp), calibration, method, percentile, batch_size, log)
    return "NVIDIA ModelOpt" if tool == "modelopt" else "ONNX Runtime static quantization"


# Entropy calibration's histogram: TensorRT's calibrator uses 2048 bins, 128 of them kept.
# ONNX Runtime's quantize_static passes no bin counts to its entropy calibrator, which then
# uses 128 and 128: with as many quantized bins as bins, the entropy search has nothing to
# clip and returns the observed maximum (measured: its scales equal minmax's exactly).
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def _ort_quantize(src: Path, out: str, calibration: np.ndarray, method: str, percentile: float,
                  batch_size: int, log) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference + graph clean-up first (folds BatchNormalization into the convolutions):
        # ORT's recommended pre-step for static quantization.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        extra = {
            "ActivationSymmetric": True,      # TensorRT: symmetric, zero-point 0
            "WeightSymmetric": True,
            "CalibTensorRangeSymmetric": True,
            "CalibPercentile": percentile,
            # TensorRT's parsers refuse a DequantizeLinear of an int32 bias (TensorRT for RTX 1.7:
            # "input has type Int32 but must have type FP8, FP4, Int4, Int8, or UInt8"): keep biases
            # in float; TensorRT fuses them into the INT8 convolution anyway.
            "QuantizeBias": False,
        }
        calibrate = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
                     "entropy": CalibrationMethod.MinMax}[method]
        if method == "entropy":
            # the ranges from a real entropy search, handed to the quantizer as overrides
            extra["TensorQuantOverrides"] = _entropy_ranges(prepared, input_name, calibration, batch_size, work)
        if log:
            log.info("INT8 calibration (%s) over %d images", method, len(calibration))
        quantize_static(str(prepared), out, _ArrayReader(input_name, calibration, batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate, extra_options=extra,
                        calibration_providers=["CPUExecutionProvider"])


def _entropy_ranges(model: Path, input_name: str, calibration: np.ndarray, batch_size: int, work: str) -> dict:
    """Symmetric activation ranges by KL-divergence minimisation over a 2048-bin histogram."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    calibrator = create_calibrator(model, None, augmented_model_path=str(Path(work) / "entropy.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
                                   extra_options={"symmetric": True, "num_bins": ENTROPY_BINS,
                                                  "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
    calibrator.collect_data(_ArrayReader(input_name, calibration, batch_size))
    ranges = calibrator.compute_data()
    return {name: [{"rmin": np.float32(np.asarray(data.range_value[0]).item()),
                    "rmax": np.float32(np.asarray(data.range_value[1]).item())}]
            for name, data in ranges.data.items()}


def quantization_snr(float_model: Path, qdq_model: Path, images: np.ndarray, batch_size: int = 16) -> list[tuple[str, float]]:
    """Signal-to-quantization-noise ratio (dB) of every activation the INT8 model shares with
    the float one, in graph order: where the INT8 error comes from and how it grows."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         create_activation_matching,
                                                         modify_model_output_intermediate_tensors)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    name = onnx.load(str(float_model), load_external_data=False).graph.input[0].name
    batches = [{name: np.ascontiguousarray(images[i:i + batch_size])} for i in range(0, len(images), batch_size)]
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"      # the graph the quantizer saw (BatchNorm folded)
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=False)
        fa, qa = Path(work) / "f.onnx", Path(work) / "q.onnx"
        modify_model_output_intermediate_tensors(str(prepared), str(fa))
        modify_model_output_intermediate_tensors(str(qdq_model), str(qa))
        errors = compute_activation_error(create_activation_matching(
            collect_activations(str(qa), batches, execution_providers=["CPUExecutionProvider"]),
            collect_activations(str(fa), batches, execution_providers=["CPUExecutionProvider"])))
        order = [o for node in onnx.load(str(prepared), load_external_data=False).graph.node for o in node.output]
    return [(tensor, float(errors[tensor]["xmodel_err"])) for tensor in order
            if tensor in errors and "xmodel_err" in errors[tensor]]


@dataclass
class QdqReport:
    """What the INT8 model really contains: proof it is quantized the way TensorRT wants."""

    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    int8_zero_points: int = 0
    nonzero_zero_points: list[str] = field(default_factory=list)
    non_int8_zero_points: list[str] = field(default_factory=list)
    per_channel_weights: int = 0          # DequantizeLinear of a weight with a scale per channel
    per_tensor_weights: int = 0
    per_tensor_examples: list[str] = field(default_factory=list)
    int32_biases: int = 0                 # DequantizeLinear of an int32 bias: TensorRT's parsers refuse it
    quantized_convs: int = 0
    convs: int = 0

    @property
    def symmetric(self) -> bool:
        return not self.nonzero_zero_points and not self.non_int8_zero_points and self.int8_zero_points > 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "symmetric": self.symmetric, "weights": self.weights(), "activations":
                "int8 symmetric, per tensor" if self.symmetric else "int8, asymmetric"}

    def weights(self) -> str:
        """How the weights are quantized, read from the model's scales."""
        if self.per_channel_weights and not self.per_tensor_weights:
            return f"int8 symmetric, per channel ({self.per_channel_weights} weight tensors)"
        if self.per_tensor_weights and not self.per_channel_weights:
            return f"int8, per tensor ({self.per_tensor_weights} weight tensors)"
        if self.per_channel_weights:
            return (f"int8: {self.per_channel_weights} weight tensors per channel, {self.per_tensor_weights} "
                    "per tensor")
        return "no quantized weights"

    def problems(self) -> list[str]:
        out = []
        if not self.quantize_nodes or not self.dequantize_nodes:
            out.append("no QuantizeLinear/DequantizeLinear nodes: the model is not quantized")
        if self.nonzero_zero_points:
            out.append(f"{len(self.nonzero_zero_points)} zero-points are not 0 (asymmetric), e.g. "
                       f"{self.nonzero_zero_points[0]}")
        if self.non_int8_zero_points:
            out.append(f"{len(self.non_int8_zero_points)} zero-points are not int8, e.g. {self.non_int8_zero_points[0]}")
        if self.per_tensor_weights:
            out.append(f"{self.per_tensor_weights} weight tensors are quantized per tensor, not per channel "
                       f"(e.g. {self.per_tensor_examples[0]}): one scale for every output channel loses accuracy")
        if self.int32_biases:
            out.append(f"{self.int32_biases} biases are int32 DequantizeLinear inputs, which TensorRT's ONNX parser "
                       "refuses")
        return out

    def coverage_problem(self, excluded: int = 0) -> str | None:
        """Convolutions left in float beyond those excluded on purpose."""
        if self.convs and self.quantized_convs + excluded < self.convs:
            return f"only {self.quantized_convs} of {self.convs} convolutions take quantized weights"
        return None


def inspect_qdq(path: Path) -> QdqReport:
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    report = QdqReport()
    dq_outputs_of_weights = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            report.quantize_nodes += 1
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DequantizeLinear":
            report.dequantize_nodes += 1
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if zp_name and zp_name in inits:
            zp = inits[zp_name]
            if zp.data_type == onnx.TensorProto.INT32 and node.input[0] in inits:
                pass        # an int32 bias (scale = input scale x weight scale): the standard form
            elif zp.data_type != onnx.TensorProto.INT8:
                report.non_int8_zero_points.append(zp_name)
            elif np.any(numpy_helper.to_array(zp) != 0):
                report.nonzero_zero_points.append(zp_name)
            else:
                report.int8_zero_points += 1
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if inits[node.input[0]].data_type == onnx.TensorProto.INT32:
                report.int32_biases += 1
            elif scale.size > 1:
                report.per_channel_weights += 1
            else:
                report.per_tensor_weights += 1
                report.per_tensor_examples.append(node.input[0])
            dq_outputs_of_weights.add(node.output[0])
    for node in graph.node:
        if node.op_type == "Conv":
            report.convs += 1
            report.quantized_convs += len(node.input) > 1 and node.input[1] in dq_outputs_of_weights
    return report
