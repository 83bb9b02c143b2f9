"""The backends AG-DS-TRTTEST-001 compares, built from the chain's artifacts; each one that
cannot exist here becomes an entry with its reason instead of a gap in the table."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

def _missing(name: str, reason: str, hint: str = "") -> dict:
    return {"backend": name, "reason": reason, "hint": hint}


def make_backends(names: list[str], model, device: str, *, onnx_fp32: Path, onnx_int8: Path,
                  engines_dir: Path | None,
                  engine_unavailable: Callable[[Path | None], tuple[str, str] | None],
                  onnx_fp16: Path | None = None, runtime_cache_dir: Path | None = None) -> tuple[list, list[dict]]:
    from handlers.inference.perf.backends import TORCH_MODES, OrtBackend, TorchBackend, TrtBackend
    from handlers.inference.perf.harness import Unavailable

    torch_mode = {name: mode for mode, (name, _, _) in TORCH_MODES.items()}

    backends, unavailable = [], []

    def add(name: str, build: Callable[[], object]) -> None:
        try:
            backends.append(build())
        except Unavailable as exc:
            unavailable.append(_missing(name, exc.reason, exc.hint))
        except ImportError as exc:
            unavailable.append(_missing(name, f"{exc.name or exc} not installed", "pip install 'atlas-runner[ml]'"))

    for name in names:
        if name in torch_mode:
            add(name, lambda name=name: TorchBackend(model, device, torch_mode[name]))
        elif name == "onnxruntime-fp32":
            add(name, lambda: OrtBackend(onnx_fp32, "onnxruntime-fp32", "fp32"))
        elif name == "onnxruntime-fp16":
            if onnx_fp16 is None:
                unavailable.append(_missing(name, "no FP16 ONNX model was given", "AG-DS-TRTPROFILE-001 writes it"))
                continue
            add(name, lambda: OrtBackend(onnx_fp16, "onnxruntime-fp16", "fp16"))
        elif name == "onnxruntime-int8":
            add(name, lambda: OrtBackend(onnx_int8, "onnxruntime-int8", "int8"))
        elif name == "tensorrt":
            why = engine_unavailable(engines_dir)
            if why is not None:
                unavailable.append(_missing("tensorrt", *why))
                continue
            from handlers.inference.trt.record import find_engines
            found, problems = find_engines(Path(engines_dir))
            unavailable += [_missing("tensorrt", problem, "atlas run AG-DS-TRTENGINE-001 --force") for problem in problems]
            for record, path in found:
                cache = (runtime_cache_dir / f"{record.family}-{record.tensorrt_version}.cache"
                         if runtime_cache_dir is not None and record.family == "tensorrt-rtx" else None)
                add(f"{record.family}-{record.precision}", lambda path=path, record=record, cache=cache: TrtBackend(
                    path, record.precision, family=record.family, targets=record.target_compute_capabilities,
                    runtime_cache=cache))
    return backends, unavailable
