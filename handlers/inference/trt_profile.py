"""AG-DS-TRTPROFILE-001: the TensorRT optimisation profile, the precision plan and the
reduced-precision models, each measured before any engine is built.

- profile.yaml: min/opt/max input shapes, the precision plan and the build settings for
  TensorRT 10 (builder precision flags) and 11 (strongly typed: precision from the model);
- calibration/: N training images preprocessed exactly as the model's inputs, as arrays;
- model_fp16.onnx (float32 I/O) and model_int8_qdq.onnx (explicit quantization: Q/DQ,
  symmetric, zero-point 0, per-channel weights);
- evaluation.json/.md: FP32, FP16 and INT8 through ONNX Runtime on the test split.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from atlas.charts import Chart, Reference, Series
from atlas.handler import Context, Handler, Params, Result
from handlers.inference.trt.profile import ONNX_FILES
from handlers.ml.errors import failures_for_user_errors

Precision = Literal["fp32", "fp16", "int8"]


class TrtProfileParams(Params):
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(32, ge=1, description="the batch TensorRT tunes its kernels for")
    max_batch: int = Field(256, ge=1)
    precisions: list[Precision] = Field(default_factory=lambda: ["fp32", "fp16", "int8"])
    workspace_gb: float = Field(4.0, gt=0, description="builder workspace limit written into the settings")
    calibration_images: int = Field(128, ge=8, description="training images in the INT8 calibration set")
    calibration_method: Literal["entropy", "percentile", "minmax"] = Field(
        "percentile", description="activation ranges: percentile of the observed values (the best of the three "
                                  "on the default chain, benchmarks/results/int8-study-*), entropy (KL divergence, "
                                  "2048-bin histogram) or minmax")
    percentile: float = Field(99.99, gt=90, lt=100, description="for calibration_method: percentile")
    sqnr_images: int = Field(8, ge=0, description="calibration images for the per-layer INT8 noise measurement "
                                                   "(0: skip it)")
    min_accuracy_ratio: float = Field(0.99, gt=0, le=1, description="INT8 accuracy below this share of FP32's is a "
                                                                    "finding (MLPerf's closed division: 99%)")
    quantizer: Literal["auto", "onnxruntime", "modelopt"] = Field(
        "auto", description="auto: NVIDIA ModelOpt when installed, else ONNX Runtime")
    eval_images: int | None = Field(None, ge=1, description="test images evaluated (null: all)")
    max_accuracy_drop: float = Field(0.02, ge=0, description="an INT8/FP16 accuracy drop above this is a finding")
    min_agreement: float = Field(0.95, ge=0, le=1, description="INT8/FP16 agreeing with FP32 less often is a finding")

    @model_validator(mode="after")
    def _ordered(self) -> "TrtProfileParams":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        return self


def metadata_meta(onnx_path: Path) -> dict:
    """The checkpoint facts ONNXCONV stored in the model: classes, positive class, size."""
    from handlers.ml.errors import ModelError
    from handlers.ml.onnx_export import METADATA_PREFIX, read_metadata
    props = read_metadata(onnx_path)
    try:
        classes = json.loads(props[f"{METADATA_PREFIX}classes"])
        return {"classes": classes, "positive": classes.index(props[f"{METADATA_PREFIX}positive_class"]),
                "image_size": int(props[f"{METADATA_PREFIX}image_size"]), "arch": props[f"{METADATA_PREFIX}arch"],
                "synthetic": json.loads(props.get(f"{METADATA_PREFIX}synthetic_data", "false")),
                "threshold": json.loads(props.get(f"{METADATA_PREFIX}threshold", "null")),
                "quality_warning": props.get(f"{METADATA_PREFIX}quality_warning") or None}
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{onnx_path.name} lacks atlas metadata ({exc})",
                         "re-run AG-DS-ONNXCONV-001 to export it again") from exc


def evaluation_table(results: dict) -> str:
    lines = ["| precision | model | accuracy | AUC | F1 | agreement with FP32 | max Δprob |",
             "|---|---|---|---|---|---|---|"]
    for precision, r in results.items():
        lines.append(f"| {precision} | {r['model']} | {r['accuracy']:.4f} | {r['auc']:.4f} | {r['f1']:.4f} | "
                     f"{r['agreement']:.2%} | {r['max_prob_diff']:.2e} |")
    return "\n".join(lines)


def precision_chart(results: dict, min_ratio: float) -> Chart:
    """FP32, FP16 and INT8 side by side, with the accuracy INT8 must keep."""
    names = list(results)
    series = [Series(label=label, x=names, y=[results[p].get(key) for p in names])
              for key, label in (("accuracy", "accuracy"), ("auc", "AUC"), ("agreement", "agreement with FP32"))]
    refs = [Reference(y=min_ratio * results["fp32"]["accuracy"],
                      label=f"{min_ratio:.0%} of FP32 accuracy")] if "fp32" in results else []
    return Chart(name="precisions", title="ONNX Runtime on the test split: FP16 and INT8 against FP32", plot="bar",
                 x_label="precision", y_label="score (0-1)", series=series, references=refs)


class TrtProfile(Handler):
    name = "trt_profile"
    version = "1"
    Params = TrtProfileParams
    outputs = ("profile.yaml", "model_fp16.onnx", "model_int8_qdq.onnx", "calibration/",
               "evaluation.json", "evaluation.md")
    required_inputs = {"onnx": "AG-DS-ONNXCONV-001:model.onnx"}
    requires = ("torch", "onnx", "onnxruntime")
    project_keys = ("data",)

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        return self._profile(ctx, ctx.params)

    def _profile(self, ctx: Context, params: TrtProfileParams) -> Result:
        from handlers.ml.arrays import load_eval_data
        from handlers.ml.calibration import build_calibration, save_calibration
        from handlers.ml.quantize import inspect_qdq, quantize_int8, to_fp16
        from handlers.inference.trt.profile import batch_profile, build_settings, write_profile

        onnx_path = ctx.inputs["onnx"]
        meta = metadata_meta(onnx_path)
        data = load_eval_data(ctx.project, ctx.project_root, meta, ctx.log, ctx.progress)
        size = meta["image_size"]

        calibration, cal_labels = build_calibration(data, params.calibration_images)
        cal_info = save_calibration(ctx.output_dir / "calibration", calibration, cal_labels, data.classes,
                                    data.source)
        ctx.log.info("calibration set: %d training images %s", len(calibration), cal_info["per_class"])

        fp16_tool = to_fp16(onnx_path, ctx.output("model_fp16.onnx"))
        ctx.log.info("FP16 model written (%s)", fp16_tool)
        int8_tool = quantize_int8(onnx_path, ctx.output("model_int8_qdq.onnx"), calibration,
                                  method=params.calibration_method, percentile=params.percentile,
                                  quantizer=params.quantizer, log=ctx.log)
        qdq = inspect_qdq(ctx.output_dir / "model_int8_qdq.onnx")
        problems = qdq.problems() + [p for p in [qdq.coverage_problem()] if p]
        if problems:
            return Result.failed("the INT8 model is not in the form TensorRT needs: " + "; ".join(problems),
                                 "see model_int8_qdq.onnx; try quantizer: onnxruntime")
        noise = self._noise(ctx, params, onnx_path, calibration)

        results = self._evaluate(ctx, params, data, onnx_path, meta.get("threshold"))
        profile = batch_profile("input", 3, size, params.min_batch, params.opt_batch, params.max_batch)
        settings = build_settings(profile, dict(ONNX_FILES), params.workspace_gb, params.precisions)
        document = {
            "model": {"arch": meta["arch"], "classes": meta["classes"], "image_size": size,
                      "input": "input", "output": "logits", "synthetic_data": meta["synthetic"]},
            "profile": profile.as_dict(),
            "precisions": list(params.precisions),
            "onnx": dict(ONNX_FILES),
            "calibration": {**{k: cal_info[k] for k in ("images", "per_class", "preprocessing")},
                            "file": "calibration/images.npy", "method": params.calibration_method,
                            "quantizer": int8_tool},
            # read from the model's own scales and zero-points, not stated
            "quantization": {"tool": int8_tool, "format": "QDQ", **qdq.as_dict(), "snr_db": noise},
            "fp16_tool": fp16_tool,
            "evaluation": results,
            "tensorrt": settings,
        }
        write_profile(ctx.output("profile.yaml"), document)
        ctx.write_json("evaluation.json", {"split": "test", "results": results, "data_source": data.source})
        ctx.figure(precision_chart(results, params.min_accuracy_ratio))
        ctx.write_text("evaluation.md", "# ONNX Runtime evaluation on the test split\n\n"
                       + evaluation_table(results) + "\n")
        return self._result(params, meta, results, qdq, int8_tool, noise)

    def _noise(self, ctx, params, onnx_path, calibration) -> dict | None:
        """Per-layer signal-to-quantization-noise ratio of the INT8 model on calibration images:
        where its error arises and how it grows with depth."""
        if not params.sqnr_images:
            return None
        import numpy as np

        from handlers.ml.quantize import quantization_snr
        snr = quantization_snr(onnx_path, ctx.output_dir / ONNX_FILES["int8"], calibration[:params.sqnr_images])
        if not snr:
            return None
        for tensor, db in snr:
            ctx.log.debug("INT8 SNR %s: %.1f dB", tensor, db)
        ctx.figure(Chart(name="int8-sqnr", title="INT8 quantization noise by layer (SQNR, higher is better)",
                         x_label="activation tensor, in network order", y_label="SQNR (dB)",
                         series=[Series(label=f"INT8 against FP32 on {min(len(calibration), params.sqnr_images)} "
                                              f"calibration images", x=list(range(1, len(snr) + 1)),
                                        y=[db for _, db in snr])],
                         note=f"lowest: {', '.join(f'{n} {db:.1f} dB' for n, db in sorted(snr, key=lambda i: i[1])[:3])}"))
        worst = sorted(snr, key=lambda item: item[1])[:3]
        quarter = max(1, len(snr) // 4)
        return {"images": int(min(len(calibration), params.sqnr_images)), "tensors": len(snr),
                "first": {"tensor": snr[0][0], "db": snr[0][1]}, "last": {"tensor": snr[-1][0], "db": snr[-1][1]},
                "by_depth_quarter_db": [float(np.median([db for _, db in snr[i:i + quarter]]))
                                        for i in range(0, len(snr), quarter)][:4],
                "lowest": [{"tensor": name, "db": db} for name, db in worst]}

    def _evaluate(self, ctx, params, data, onnx_path, threshold) -> dict:
        from handlers.ml.arrays import model_input, split_arrays
        from handlers.ml.ort import open_session, run_logits
        from handlers.ml.parity import scores

        images, labels = split_arrays(data, "test", limit=params.eval_images)
        x = model_input(images)
        models = {"fp32": onnx_path, "fp16": ctx.output_dir / ONNX_FILES["fp16"],
                  "int8": ctx.output_dir / ONNX_FILES["int8"]}
        results, reference = {}, None
        with ctx.progress(len(models), "evaluating ONNX models") as bar:
            for precision, path in models.items():
                session, provider = open_session(path, log=ctx.log)
                logits = run_logits(session, x)
                reference = logits if reference is None else reference
                results[precision] = {"model": path.name, "provider": provider, "images": int(len(labels)),
                                      **scores(labels, logits, data.positive, reference, threshold)}
                for key in ("accuracy", "auc", "agreement"):
                    ctx.metric(f"{precision}_{key}", results[precision][key])
                bar.advance(1)
        return results

    def _result(self, params, meta, results, qdq, int8_tool, noise=None) -> Result:
        fp32 = results["fp32"]
        from handlers.ml.metrics import inherited_warning
        zero_points = "all zero-points 0" if qdq.symmetric else "asymmetric zero-points"
        findings = inherited_warning(meta) + [
            f"INT8 Q/DQ ({int8_tool}, {params.calibration_method} calibration): {qdq.quantize_nodes} QuantizeLinear, "
            f"{qdq.dequantize_nodes} DequantizeLinear; weights {qdq.weights()}; activations "
            f"{qdq.as_dict()['activations']}; {zero_points}; biases kept in float for TensorRT's parser"]
        ratio = results["int8"]["accuracy"] / fp32["accuracy"] if fp32["accuracy"] else float("nan")
        rule = "meets" if ratio >= params.min_accuracy_ratio else "misses"
        findings.append(f"INT8 keeps {ratio:.1%} of FP32's test accuracy ({results['int8']['accuracy']:.3f} vs "
                        f"{fp32['accuracy']:.3f}): {rule} the {params.min_accuracy_ratio:.0%} rule "
                        f"(MLPerf's closed division)")
        if noise:
            depth = ", ".join(f"{db:.0f}" for db in noise["by_depth_quarter_db"])
            low = ", ".join(f"{item['tensor']} {item['db']:.1f} dB" for item in noise["lowest"])
            findings.append(f"INT8 noise by layer (SQNR on {noise['images']} calibration images): "
                            f"{noise['first']['db']:.0f} dB after the first layer, {noise['last']['db']:.0f} dB at "
                            f"the output; median by depth quarter {depth} dB; lowest {low}")
        for precision in ("fp16", "int8"):
            drop = fp32["accuracy"] - results[precision]["accuracy"]
            if drop > params.max_accuracy_drop:
                findings.append(f"{precision.upper()} loses {drop:.1%} accuracy against FP32 "
                                f"(limit {params.max_accuracy_drop:.1%}); more calibration images or "
                                "another calibration_method may help")
            agreement = results[precision]["agreement"]
            if agreement < params.min_agreement:
                findings.append(f"{precision.upper()} decides the same class as FP32 for {agreement:.1%} of the "
                                f"test images (below {params.min_agreement:.0%}): its scores drift near the "
                                "decision threshold; check its accuracy before deploying it")
        from handlers.ml.synthetic import synthetic_tag
        tag = synthetic_tag(meta["synthetic"])
        summary = ", ".join(f"{p.upper()} acc {r['accuracy']:.3f} AUC {r['auc']:.3f} agree {r['agreement']:.1%}"
                            for p, r in results.items())
        return Result.succeeded(
            f"profile batch {params.min_batch}/{params.opt_batch}/{params.max_batch} at "
            f"{meta['image_size']}px, precisions {'/'.join(params.precisions)}; ONNX Runtime ({fp32['provider']}) "
            f"on the test split: {summary}{tag}", findings)
