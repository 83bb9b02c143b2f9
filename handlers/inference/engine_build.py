"""AG-DS-TRTENGINE-001: one serialized TensorRT engine per precision, from the ONNX models
and the profile that AG-DS-TRTPROFILE-001 wrote.

Whichever TensorRT is here builds (handlers/inference/trt/choose.py): full TensorRT's Python
API on a GPU (parser errors per node, workspace limit, the optimisation profile, a timing
cache kept in .atlas/ and reused), TensorRT for RTX ahead of time on any machine, GPU or not
(engines for the compute capabilities in `compute_capabilities`), or `trtexec`. Beside each
engine a JSON record: builder family and version, target compute capabilities, precision,
profile, build time, size, and the network's layers with their data types.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from handlers.ml.errors import failures_for_user_errors
from handlers.inference.trt.profile import ONNX_FILES

Precision = Literal["fp32", "fp16", "int8"]
# the manifest input that carries each precision's ONNX model
ONNX_INPUTS = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}


class TrtEngineParams(Params):
    precisions: list[Precision] | None = Field(None, description="engines to build (null: the profile's plan)")
    workspace_gb: float | None = Field(None, gt=0, description="builder workspace (null: the profile's)")
    builder: Literal["auto", "tensorrt", "tensorrt-rtx", "trtexec", "python-api"] = Field(
        "auto", description="auto: full TensorRT on a GPU when it imports, else TensorRT for RTX, else trtexec "
                            "(python-api is the older name of tensorrt)")
    compute_capabilities: list[str] | None = Field(
        None, description="TensorRT for RTX: the GPUs the engines are for, e.g. [\"8.9\", \"12.0\"] or "
                          "[current]; null: 8.0, 8.6, 8.9 and 12.0 (the A100 and RTX 30/40/50 series)")
    trtexec_timeout_s: int = Field(3600, ge=60)


def timing_cache_path(project_root: Path, gpu: str, version: str) -> Path:
    """One cache per GPU model and TensorRT version: tactics timed on one do not fit another."""
    safe = "".join(c if c.isalnum() else "-" for c in f"{gpu}-{version}").strip("-").lower()
    return Path(project_root) / ".atlas" / "cache" / "tensorrt" / f"timing-{safe}.cache"


class TrtEngine(Handler):
    name = "trt_engine"
    version = "1"
    Params = TrtEngineParams
    outputs = ("engines/",)
    # no "cuda": TensorRT for RTX builds without a GPU; the handler says when the builder here needs one
    required_inputs = {"profile": "AG-DS-TRTPROFILE-001:profile.yaml", "onnx": "AG-DS-ONNXCONV-001:model.onnx",
                       "onnx_fp16": "AG-DS-TRTPROFILE-001:model_fp16.onnx",
                       "onnx_int8": "AG-DS-TRTPROFILE-001:model_int8_qdq.onnx"}
    requires = ("tensorrt",)
    gpu_env = True

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        return self._build_all(ctx, ctx.params)

    def _build_all(self, ctx: Context, params: TrtEngineParams) -> Result:
        from handlers.inference.trt.builder import gpu_identity
        from handlers.inference.trt.choose import choose_builder, detect
        from handlers.inference.trt.profile import read_profile, settings_for

        gpu, capability = gpu_identity()
        found = detect()
        builder, reason, hint = choose_builder(found, params.builder, has_gpu=gpu != "none")
        if builder is None:
            return Result.skipped(reason, hint)
        profile = read_profile(ctx.inputs["profile"])
        version = self._version(builder, found.trtexec)
        settings = settings_for(profile["tensorrt"], version, builder)
        if params.workspace_gb is not None:
            settings = {**settings, "workspace_bytes": int(params.workspace_gb * (1 << 30))}
        onnx_by_name = {ONNX_FILES[precision]: ctx.inputs[key] for precision, key in ONNX_INPUTS.items()}
        cache = None if builder == "tensorrt-rtx" else timing_cache_path(ctx.project_root, gpu, version)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
        precisions = params.precisions or profile["precisions"]
        name = "TensorRT for RTX" if builder == "tensorrt-rtx" else "TensorRT"
        ctx.log.info("%s %s builds the engines: %s", name, version, reason)
        records = []
        with ctx.progress(len(precisions), f"building {name} {version} engines") as bar:
            for precision in precisions:
                entry = {**settings, **settings[precision]}
                onnx_path = onnx_by_name[entry["onnx"]]
                engine = ctx.output(f"engines/model_{precision}.engine")
                ctx.log.info("building %s engine from %s", precision, onnx_path.name)
                record = self._build_one(builder, found.trtexec, onnx_path, engine, precision, entry, cache, gpu,
                                         capability, params, ctx)
                record.write(engine.with_suffix(".json"))
                records.append(record)
                ctx.metric(f"{precision}_build_s", record.build_seconds, "s")
                ctx.metric(f"{precision}_engine_mb", record.size_bytes / 1e6, "MB")
                bar.advance(1)
        summary = ", ".join(f"{r.precision} {r.size_bytes / 1e6:.0f} MB in {r.build_seconds:.1f}s" for r in records)
        where = (f"for compute capability {', '.join(records[0].target_compute_capabilities)}"
                 if builder == "tensorrt-rtx" else f"on {gpu} (sm {capability})")
        findings = [f"{r.precision}: {r.layers.get('count', '?')} network layers; "
                    + ", ".join(f"{k} x{v}" for k, v in list(r.layers.get("by_type_and_output", {}).items())[:6])
                    for r in records if r.layers]
        findings += [f"timing cache {cache} ({'reused' if r.timing_cache.get('reused') else 'new'} for {r.precision})"
                     for r in records if r.timing_cache]
        how = "trtexec" if builder == "trtexec" else "Python API"
        return Result.succeeded(f"{name} {version} ({how}) {where}: {summary}", findings)

    @staticmethod
    def _version(builder: str, trtexec: str | None) -> str:
        from handlers.inference.trt.errors import TrtError
        if builder in ("tensorrt", "tensorrt-rtx"):
            from handlers.inference.trt.builder import import_tensorrt
            return str(import_tensorrt(builder).__version__)
        from handlers.inference.trt.trtexec import trtexec_version
        version = trtexec_version(trtexec)
        if version is None:
            raise TrtError(f"cannot tell which TensorRT {trtexec} belongs to",
                           "run trtexec --help; install TensorRT 10 or newer")
        return version

    @staticmethod
    def _build_one(builder, trtexec, onnx_path, engine, precision, entry, cache, gpu, capability, params, ctx):
        if builder in ("tensorrt", "tensorrt-rtx"):
            from handlers.inference.trt.builder import build_engine
            targets = tuple(params.compute_capabilities) if params.compute_capabilities else None
            return build_engine(onnx_path, engine, precision, entry, cache, ctx.log, family=builder,
                                targets=targets, gpu=gpu, compute_capability=capability)
        from handlers.inference.trt.trtexec import build_with_trtexec
        return build_with_trtexec(trtexec, onnx_path, engine, precision, entry, cache, ctx.log, gpu=gpu,
                                  compute_capability=capability, timeout=params.trtexec_timeout_s)
