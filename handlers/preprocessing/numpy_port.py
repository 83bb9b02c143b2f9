"""AG-DS-CUPY-001: the project's NumPy preprocessing ported to CuPy and compared.

For every function in the named modules (data_processing_scripts/ by default) that takes
an array module `xp`: run it with NumPy and with CuPy on the same chest X-ray-sized image
(or batch), prove the results equal within the tolerance of their kind, and time both,
device-resident and with the host-to-device copy, with the effective bandwidth against the
GPU's own copy bandwidth. What cannot run on the GPU is named with the reason. The
normalisation hot path also runs as one fused kernel (handlers/preprocessing/cupy_kernels.py),
checked against NumPy and measured against a device-to-device copy of the same size.
"""
from __future__ import annotations

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from atlas.paths import ProjectPath
from handlers.ml.errors import failures_for_user_errors


class CupyParams(Params):
    modules: list[ProjectPath] = Field(default_factory=lambda: ["data_processing_scripts"],
                               description="folders or .py files (inside the project) with the NumPy code to port")
    image_size: int = Field(1024, ge=16, description="side of the test image (chest X-rays are large)")
    batch_size: int = Field(256, ge=1, description="batch of the normalisation hot path")
    batch_image_size: int = Field(224, ge=4)
    repeat: int = Field(20, ge=3, description="timed calls per function and module")
    kernel_repeat: int = Field(100, ge=5, description="timed calls per fused-kernel variant")
    kernel_target: float = Field(0.8, gt=0, le=1.5, description="fused kernel: share of a same-size device copy")


class NumpyPort(Handler):
    name = "cupy_port"
    version = "1"
    Params = CupyParams
    outputs = ("cupy.json", "report.md")
    requires = ("cuda", "cupy")
    gpu_env = True
    project_keys = ("data",)

    @classmethod
    def watched_paths(cls, params: CupyParams) -> list[str]:
        return list(params.modules)

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        from atlas.probe import cupy_install_hint, detected_cuda_major
        try:
            import cupy
        except ImportError as exc:
            return Result.skipped(f"CuPy is not installed ({exc.name or exc})", cupy_install_hint(detected_cuda_major()))
        try:
            devices = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            devices, why = 0, str(exc)
        else:
            why = "no CUDA device"
        if not devices:
            return Result.skipped(f"CuPy cannot reach a GPU: {why}",
                                  "run on a machine with an NVIDIA GPU; `atlas env` shows what was found")
        from handlers.preprocessing.cupy_run import run_cupy_step
        return run_cupy_step(ctx)
