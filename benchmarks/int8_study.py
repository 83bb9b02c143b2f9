"""Why INT8 loses accuracy on the default chain, measured: the chain's own model.onnx (from
`atlas run AG-DS-TRTPROFILE-001`) quantized several ways, each scored with ONNX Runtime on
the test split against FP32 (accuracy at the training's threshold, AUC, agreement, largest
logit change), plus the per-layer signal-to-quantization-noise ratio of the default.

    python benchmarks/int8_study.py --out benchmarks/results/int8-study-<date>.json

Variants: ONNX Runtime's quantize_static with "entropy" as atlas called it before (its
entropy calibrator then gets 128 bins and 128 quantized bins, i.e. no clipping), atlas's
entropy (2048 bins, 128 kept), percentile 99.99 and 99.999, minmax; and the default with the
last N operators kept in float (does a tail of sensitive layers explain the loss?).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.ml.arrays import load_eval_data, model_input, split_arrays  # noqa: E402
from handlers.ml.ort import open_session, run_logits  # noqa: E402
from handlers.ml.parity import scores  # noqa: E402
from handlers.ml.quantize import _ArrayReader, quantization_snr, quantize_int8  # noqa: E402


def ort_quantize(src: Path, dst: Path, calibration: np.ndarray, method: str, keep_last: int = 0) -> None:
    """quantize_static straight, as atlas called it before this study ("entropy": ORT's own
    bins), or percentile 99.99 with the last `keep_last` operators left in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        ops = [n.name for n in onnx.load(str(prepared)).graph.node
               if n.op_type in ("Conv", "Gemm", "Add", "MaxPool", "ReduceMean")]
        quantize_static(str(prepared), str(dst), _ArrayReader(name, calibration, 16), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        nodes_to_exclude=ops[len(ops) - keep_last:] if keep_last else [],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.99,
                                       "CalibTensorRangeSymmetric": True, "QuantizeBias": False},
                        calibration_providers=["CPUExecutionProvider"])


def activation_scales(path: Path) -> list[float]:
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    return [float(numpy_helper.to_array(inits[n.input[1]]).ravel()[0]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="an atlas project that has run AG-DS-TRTPROFILE-001")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calibration-images", type=int, default=128)
    args = ap.parse_args()
    import torch
    import yaml
    root = Path(args.project).resolve()
    out_dir = root / ".atlas" / "out"
    src = out_dir / "AG-DS-ONNXCONV-001" / "model.onnx"
    meta = torch.load(out_dir / "AG-DS-SCRIPTGPU-001" / "model.pt", weights_only=True)["meta"]
    project = yaml.safe_load((root / "tasks" / "project.yaml").read_text())
    data = load_eval_data(project, root, meta, logging.getLogger("int8"), None)
    test, labels = split_arrays(data, "test")
    x = model_input(test)
    train, _ = split_arrays(data, "train")
    calibration = model_input(train)[np.random.default_rng(0).permutation(len(train))[:args.calibration_images]]
    threshold = meta.get("threshold")
    reference = run_logits(open_session(src, "CPUExecutionProvider")[0], x)
    fp32 = scores(labels, reference, data.positive, reference, threshold)
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        def score(name: str, path: Path, seconds: float) -> None:
            logits = run_logits(open_session(path, "CPUExecutionProvider")[0], x)
            s = scores(labels, logits, data.positive, reference, threshold)
            rows[name] = {**s, "accuracy_ratio": s["accuracy"] / fp32["accuracy"],
                          "max_abs_logit_change": float(np.abs(logits - reference).max()),
                          "first_activation_scales": activation_scales(path)[:4], "quantize_seconds": seconds}
            print(f"{name:38s} acc {s['accuracy']:.3f} ({rows[name]['accuracy_ratio']:.1%} of FP32) AUC {s['auc']:.3f} "
                  f"agree {s['agreement']:.1%} max|dlogit| {rows[name]['max_abs_logit_change']:.3f}", flush=True)

        started = time.perf_counter()
        before = Path(work) / "before.onnx"
        ort_quantize(src, before, calibration, "Entropy")
        score("entropy, ORT default bins (before)", before, time.perf_counter() - started)
        for method, percentile in (("entropy", 99.99), ("percentile", 99.99), ("percentile", 99.999),
                                   ("minmax", 99.99)):
            name = f"{method}" + (f" {percentile}" if method == "percentile" else "")
            path = Path(work) / f"{name.replace(' ', '_')}.onnx"
            started = time.perf_counter()
            quantize_int8(src, path, calibration, method=method, percentile=percentile, quantizer="onnxruntime")
            score(name, path, time.perf_counter() - started)
        for keep in (10, 40):
            path = Path(work) / f"keep{keep}.onnx"
            started = time.perf_counter()
            ort_quantize(src, path, calibration, "Percentile", keep_last=keep)
            score(f"percentile 99.99, last {keep} ops in float", path, time.perf_counter() - started)
        default = Path(work) / "percentile_99.99.onnx"
        snr = quantization_snr(src, default, calibration[:32])
    quarter = max(1, len(snr) // 4)
    result = {
        "benchmark": "INT8 quantization of the default chain's model, scored with ONNX Runtime (CPU)",
        "machine": {"python": platform.python_version(), "host": platform.node(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__, "onnx": __import__("onnx").__version__,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "command": " ".join(sys.argv),
        "model": {k: meta.get(k) for k in ("arch", "image_size", "weights", "threshold", "synthetic")},
        "test_images": int(len(labels)), "calibration_images": int(len(calibration)), "fp32": fp32,
        "variants": rows,
        "snr_db_default": {"tensors": len(snr), "first": snr[0], "last": snr[-1],
                           "median_by_depth_quarter": [float(np.median([d for _, d in snr[i:i + quarter]]))
                                                       for i in range(0, len(snr), quarter)][:4],
                           "all": snr},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
