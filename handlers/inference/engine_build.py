"""AG-DS-TRTENGINE-001: one serialized TensorRT engine per precision, from the ONNX models
and the profile that AG-DS-TRTPROFILE-001 wrote.

The TensorRT Python API builds (parser errors reported, workspace limit, the optimisation
profile, a timing cache kept in .atlas/ and reused); `trtexec` is the fallback when only it
is installed. Beside each engine a JSON record: TensorRT version, GPU, compute capability,
precision, profile, build time, size. Without TensorRT the step is skipped (its requires).
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
    builder: Literal["auto", "python-api", "trtexec"] = Field(
        "auto", description="auto: the Python API when tensorrt imports, else trtexec")
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
    # tensorrt first: on a machine with neither, "TensorRT not installed" is the reason to read.
    requires = ("tensorrt", "cuda")
    gpu_env = True

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        return self._build_all(ctx, ctx.params)

    def _build_all(self, ctx: Context, params: TrtEngineParams) -> Result:
        from handlers.inference.trt.builder import gpu_identity
        from handlers.inference.trt.choose import choose_builder, detect
        from handlers.inference.trt.profile import read_profile, settings_for

        has_api, trtexec = detect()
        builder, reason, hint = choose_builder(has_api, trtexec, params.builder)
        if builder is None:
            return Result.skipped(reason, hint)
        profile = read_profile(ctx.inputs["profile"])
        version = self._version(builder, trtexec)
        settings = settings_for(profile["tensorrt"], version)
        if params.workspace_gb is not None:
            settings = {**settings, "workspace_bytes": int(params.workspace_gb * (1 << 30))}
        onnx_by_name = {ONNX_FILES[precision]: ctx.inputs[key] for precision, key in ONNX_INPUTS.items()}
        gpu, capability = gpu_identity()
        cache = timing_cache_path(ctx.project_root, gpu, version)
        cache.parent.mkdir(parents=True, exist_ok=True)
        precisions = params.precisions or profile["precisions"]
        records = []
        with ctx.progress(len(precisions), f"building TensorRT {version} engines ({builder})") as bar:
            for precision in precisions:
                entry = {**settings, **settings[precision]}
                onnx_path = onnx_by_name[entry["onnx"]]
                engine = ctx.output(f"engines/model_{precision}.engine")
                ctx.log.info("building %s engine from %s", precision, onnx_path.name)
                record = self._build_one(builder, trtexec, onnx_path, engine, precision, entry, cache, gpu,
                                         capability, params, ctx)
                record.write(engine.with_suffix(".json"))
                records.append(record)
                ctx.metric(f"{precision}_build_s", record.build_seconds, "s")
                ctx.metric(f"{precision}_engine_mb", record.size_bytes / 1e6, "MB")
                bar.advance(1)
        summary = ", ".join(f"{r.precision} {r.size_bytes / 1e6:.0f} MB in {r.build_seconds:.0f}s" for r in records)
        return Result.succeeded(f"TensorRT {version} ({builder}) on {gpu} (sm {capability}): {summary}",
                                [f"timing cache {cache} ({'reused' if r.timing_cache.get('reused') else 'new'} "
                                 f"for {r.precision})" for r in records])

    @staticmethod
    def _version(builder: str, trtexec: str | None) -> str:
        from handlers.inference.trt.errors import TrtError
        if builder == "python-api":
            import tensorrt
            return tensorrt.__version__
        from handlers.inference.trt.trtexec import trtexec_version
        version = trtexec_version(trtexec)
        if version is None:
            raise TrtError(f"cannot tell which TensorRT {trtexec} belongs to",
                           "run trtexec --help; install TensorRT 10 or newer")
        return version

    @staticmethod
    def _build_one(builder, trtexec, onnx_path, engine, precision, entry, cache, gpu, capability, params, ctx):
        if builder == "python-api":
            from handlers.inference.trt.builder import build_engine
            return build_engine(onnx_path, engine, precision, entry, cache, ctx.log, gpu=gpu,
                                compute_capability=capability)
        from handlers.inference.trt.trtexec import build_with_trtexec
        return build_with_trtexec(trtexec, onnx_path, engine, precision, entry, cache, ctx.log, gpu=gpu,
                                  compute_capability=capability, timeout=params.trtexec_timeout_s)
