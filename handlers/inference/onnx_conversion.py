"""AG-DS-ONNXCONV-001: the trained checkpoint exported to ONNX, and proven equal to it.

torch.onnx.export (opset 17+, dynamic batch), the ONNX checker and shape inference, the
classes/input size/normalisation in the model's metadata, and parity: ONNX Runtime against
PyTorch on real validation images. A model that does not reproduce PyTorch fails the step.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from handlers.ml.errors import failures_for_user_errors


class OnnxConvParams(Params):
    opset: int = Field(18, ge=17, description="ONNX opset (17 or newer; TensorRT 10 parses up to 20+)")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="auto: the torch.export-based exporter when onnxscript is installed")
    parity_images: int = Field(64, ge=1, description="validation images compared (class-balanced)")
    parity_atol: float = Field(1e-3, gt=0, description="largest allowed |logit difference|")
    min_top1_agreement: float = Field(1.0, ge=0, le=1, description="share of images with the same class")


class OnnxConv(Handler):
    name = "onnx_conv"
    version = "1"
    Params = OnnxConvParams
    outputs = ("model.onnx", "export.json")
    required_inputs = {"checkpoint": "AG-DS-SCRIPTGPU-001:model.pt (a training step's checkpoint)"}
    requires = ("torch", "onnx", "onnxruntime")
    project_keys = ("data",)

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        return self._convert(ctx, ctx.params)

    def _convert(self, ctx: Context, params: OnnxConvParams) -> Result:
        import torch

        from handlers.ml.arrays import load_eval_data, model_input, split_arrays
        from atlas.fingerprint import file_sha256
        from handlers.ml.metrics import inherited_warning
        from handlers.ml.models import load_checkpoint
        from handlers.ml.onnx_export import export_onnx
        from handlers.ml.ort import open_session, run_logits
        from handlers.ml.parity import compare, parity_failure
        from handlers.ml.synthetic import synthetic_tag

        checkpoint = ctx.inputs["checkpoint"]
        model, meta = load_checkpoint(checkpoint)
        model.eval()
        info = export_onnx(model, meta, ctx.output("model.onnx"), opset=params.opset, exporter=params.exporter,
                           checkpoint_sha256=file_sha256(checkpoint), log=ctx.log)
        ctx.log.info("exported %s: input %s, output %s, %d nodes, %.1f MB", meta["arch"], info.input_shape,
                     info.output_shape, info.nodes, info.size_bytes / 1e6)

        data = load_eval_data(ctx.project, ctx.project_root, meta, ctx.log, ctx.progress)
        images, labels = split_arrays(data, "val", limit=params.parity_images)
        x = model_input(images)
        with torch.inference_mode():
            reference = model(torch.from_numpy(x)).float().numpy()
        # Parity is about the export, so the CPU provider: no TF32 or kernel choices in between.
        session, provider = open_session(ctx.output_dir / "model.onnx", "CPUExecutionProvider")
        agreement = compare(reference, run_logits(session, x))
        failure = parity_failure(agreement, params.parity_atol, params.min_top1_agreement)

        ctx.metric("parity_max_abs_diff", agreement.max_abs_diff)
        ctx.metric("parity_top1_agreement", agreement.top1_agreement)
        ctx.metric("onnx_size_mb", info.size_bytes / 1e6, "MB")
        record = {"export": info.as_dict(), "checkpoint": checkpoint.name, "checkpoint_meta": meta,
                  "parity": {**agreement.as_dict(), "provider": provider, "split": "val",
                             "atol": params.parity_atol, "min_top1_agreement": params.min_top1_agreement,
                             "passed": failure is None, "failure": failure},
                  "synthetic": bool(meta.get("synthetic")), "data_source": data.source}
        ctx.write_json("export.json", record)
        summary = f"parity with PyTorch on {agreement.n} validation images: {agreement.describe()}"
        if failure:
            return Result.failed(f"ONNX parity failed: {failure}",
                                 "the ONNX model does not reproduce the PyTorch model; try exporter: "
                                 "torchscript or another opset, and see export.json")
        return Result.succeeded(
            f"{meta['arch']} -> model.onnx (opset {info.opset}, {info.exporter} exporter, dynamic batch); "
            f"{summary}{synthetic_tag(bool(meta.get('synthetic')))}",
            inherited_warning(meta) + [f"ONNX metadata: classes {meta['classes']}, input {meta['image_size']}px, "
                                       f"ImageNet mean/std, decision threshold {meta.get('threshold')}"])
