"""ONNX Runtime sessions for evaluation: the best provider this machine has, batched runs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from handlers.ml.errors import ModelError

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_provider(available: list[str], requested: str = "auto") -> str:
    """CUDA when this onnxruntime build has it, else CPU ("auto"); or the one asked for
    ("cuda", "cpu" or a provider's full name)."""
    if requested == "auto":
        return PROVIDERS["cuda"] if PROVIDERS["cuda"] in available else PROVIDERS["cpu"]
    wanted = PROVIDERS.get(requested, requested)
    if wanted not in available:
        raise ModelError(f"ONNX Runtime provider {wanted} is not in this build (have {', '.join(available)})",
                         "pip install onnxruntime-gpu for CUDA, or use provider: auto")
    return wanted


def open_session(path: Path, provider: str = "auto", log=None):
    """(session, the provider the session really runs on). ONNX Runtime falls back to the
    CPU when the CUDA provider's libraries do not load, and says so only in a warning; the
    session's own provider list is what counts."""
    import onnxruntime as ort
    chosen = choose_provider(ort.get_available_providers(), provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3          # errors only: ORT warns about every fused Q/DQ pair
    providers = [chosen] if chosen == PROVIDERS["cpu"] else [chosen, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:   # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"ONNX Runtime cannot load {Path(path).name}: {exc}".splitlines()[0][:500],
                         "re-run the step that wrote it") from exc
    running = session.get_providers()[0]
    if running != chosen and log is not None:
        log.warning("ONNX Runtime runs %s on %s: %s did not load (onnxruntime-gpu needs CUDA and cuDNN "
                    "libraries matching its build)", Path(path).name, running, chosen)
    return session, running


def run_logits(session, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """float32 [N, 3, S, S] -> logits [N, C], in batches."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: np.ascontiguousarray(images[i:i + batch_size])})[0]
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)
