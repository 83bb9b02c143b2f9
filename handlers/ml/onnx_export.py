"""Export a trained checkpoint to ONNX: dynamic batch, checked, shape-inferred, and carrying
what a deployment needs to feed it (classes, input size, normalisation) in its metadata."""
from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from atlas.atomic import replaced_atomically
from handlers.ml.errors import ModelError
from handlers.ml.quiet import quiet_tools

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
MIN_OPSET = 17
METADATA_PREFIX = "atlas."


@dataclass
class ExportInfo:
    exporter: str
    opset: int
    input_shape: list           # e.g. ["batch", 3, 224, 224]
    output_shape: list
    nodes: int
    size_bytes: int
    metadata: dict[str, str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def choose_exporter(requested: str) -> str:
    """`dynamo` (torch.export-based, the default since torch 2.9) needs onnxscript; the
    TorchScript exporter needs nothing more, so `auto` falls back to it."""
    if requested not in ("auto", "dynamo", "torchscript"):
        raise ModelError(f"unknown ONNX exporter {requested!r}", "use exporter: auto, dynamo or torchscript")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if requested == "dynamo" and not has_onnxscript:
        raise ModelError("exporter dynamo needs onnxscript, which is not installed",
                         "pip install onnxscript, or set exporter: torchscript")
    if requested == "auto":
        return "dynamo" if has_onnxscript else "torchscript"
    return requested


def model_metadata(meta: dict, checkpoint_sha256: str) -> dict[str, str]:
    """What a consumer of model.onnx must know to feed it and read its output."""
    size = int(meta["image_size"])
    return {f"{METADATA_PREFIX}{k}": v for k, v in {
        "classes": json.dumps(list(meta["classes"])),
        "positive_class": str(meta["classes"][int(meta["positive"])]),
        "arch": str(meta["arch"]),
        "image_size": str(size),
        "input": f"float32[batch, 3, {size}, {size}], NCHW; grayscale X-ray replicated to 3 channels",
        "scale": "1/255",
        "mean": json.dumps([float(v) for v in meta["mean"]]),
        "std": json.dumps([float(v) for v in meta["std"]]),
        "normalization": "x = (pixel / 255 - mean) / std per channel",
        "output": "logits[batch, classes]; softmax gives probabilities",
        "synthetic_data": json.dumps(bool(meta.get("synthetic", False))),
        # the decision rule training chose on the validation split (null: the largest logit)
        "threshold": json.dumps(meta.get("threshold")),
        "quality_warning": str(meta.get("quality_warning") or ""),
        "checkpoint_sha256": checkpoint_sha256,
    }.items()}


def read_metadata(path: Path) -> dict[str, str]:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _export_raw(model: nn.Module, sample: torch.Tensor, path: Path, exporter: str, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the TorchScript exporter's deprecation notice
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, (sample,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim(BATCH_DIM, min=1, max=4096)},))
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}})


def export_onnx(model: nn.Module, meta: dict, path: Path, *, opset: int = 18, exporter: str = "auto",
                checkpoint_sha256: str = "", log=None) -> ExportInfo:
    """Export on the CPU in fp32, then check, infer shapes and add metadata; written atomically."""
    import onnx
    if opset < MIN_OPSET:
        raise ModelError(f"opset {opset} is below {MIN_OPSET}", f"set opset: {MIN_OPSET} or newer")
    exporter = choose_exporter(exporter)
    size = int(meta["image_size"])
    # Batch 2, not 1: a size-1 dimension may be specialised by the exporter.
    sample = torch.zeros(2, 3, size, size)
    model = model.float().eval().cpu()
    with replaced_atomically(path, ".onnx") as tmp:
        if log:
            log.info("exporting %s to ONNX (opset %d, %s exporter)", meta["arch"], opset, exporter)
        try:
            with quiet_tools(log):
                _export_raw(model, sample, tmp, exporter, opset)
        except Exception as exc:    # the exporters raise many types; the message is what helps
            raise ModelError(f"torch.onnx.export failed ({exporter} exporter): {exc}".splitlines()[0][:500],
                             "try exporter: torchscript (or dynamo), or another opset") from exc
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        except Exception as exc:    # onnx raises ValidationError / InferenceError
            raise ModelError(f"the exported model fails the ONNX checker: {exc}".splitlines()[0][:500],
                             "report it with the torch version; try the other exporter") from exc
        metadata = model_metadata(meta, checkpoint_sha256)
        onnx.helper.set_model_props(proto, metadata)
        proto.doc_string = f"atlas export of {meta['arch']} ({len(meta['classes'])} classes)"
        onnx.save(proto, str(tmp))
    graph = proto.graph
    return ExportInfo(exporter, opset, _dims(graph.input[0]), _dims(graph.output[0]), len(graph.node),
                      path.stat().st_size, metadata)
