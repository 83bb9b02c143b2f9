"""ONNX Runtime sessions for evaluation: the best provider this machine has, batched runs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from handlers.ml.errors import ModelError

PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def open_session(path: Path, provider: str = "auto"):
    """(session, provider name). `auto` takes CUDA when this onnxruntime build has it."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    if provider == "auto":
        chosen = next(p for p in PREFERRED + tuple(available) if p in available)
    elif provider in available:
        chosen = provider
    else:
        raise ModelError(f"ONNX Runtime provider {provider} is not available (have {available})",
                         "install onnxruntime-gpu for CUDA, or use provider: auto")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3          # errors only: ORT warns about every fused Q/DQ pair
    try:
        session = ort.InferenceSession(str(path), options, providers=[chosen])
    except Exception as exc:   # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"ONNX Runtime cannot load {Path(path).name}: {exc}".splitlines()[0][:500],
                         "re-run the step that wrote it") from exc
    return session, chosen


def run_logits(session, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """float32 [N, 3, S, S] -> logits [N, C], in batches."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: np.ascontiguousarray(images[i:i + batch_size])})[0]
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)
