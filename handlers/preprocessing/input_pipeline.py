"""AG-DS-DALI-001: the DALI input pipeline, designed, checked and measured against the
DataLoader it would replace.

Over the project's images (or, with the built-in synthetic data, a set written as large
grayscale JPEGs like real chest X-rays), the step
- checks the evaluation pipeline against torchvision's transforms on the same images, the
  labels, and that `num_shards` readers (DDP ranks) together see every image once an epoch;
- measures images/s of decoding alone and of the whole training pipeline, DALI against the
  DataLoader with as many workers as cores, same images and batch size;
- measures ResNet-50 training fed by DALI against the same model on batches already on the
  GPU (eager and torch.compile), the ceiling a loader can reach.
The training steps use the same pipeline with `loader: dali`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from atlas.handler import Context, Handler, Params, Result
from handlers.ml.errors import failures_for_user_errors


class DaliParams(Params):
    images: Literal["auto", "project", "synthetic-jpeg"] = Field(
        "auto", description="which images: the project's training split, or a synthetic set of large grayscale "
                            "JPEGs; auto = the project's when data.root is set, else the synthetic JPEGs")
    synthetic_images: int = Field(4000, ge=64, description="size of the synthetic JPEG set")
    synthetic_size: int = Field(1024, ge=64, description="side of the synthetic JPEGs (chest X-rays are large)")
    batch_size: int = Field(256, ge=1)
    dtype: Literal["float16", "float32"] = "float16"
    decoder: Literal["mixed", "cpu"] = Field("mixed", description="mixed = nvJPEG on the GPU")
    check_images: int = Field(64, ge=1, description="images compared with torchvision's transforms")
    max_gray_levels: float = Field(8.0, gt=0, description="largest allowed difference from torchvision, in 0-255 "
                                                          "grey levels (decoders and resize filters round differently)")
    mean_gray_levels: float = Field(1.0, gt=0, description="allowed mean absolute difference, in grey levels")
    shards: int = Field(2, ge=2, description="readers in the sharding check (as DDP ranks)")
    warmup_batches: int = Field(5, ge=0)
    timed_batches: int = Field(30, ge=1)
    train_iterations: int = Field(30, ge=1, description="timed training steps per feed")
    train_warmup: int = Field(10, ge=1)
    compile: bool = Field(True, description="also measure torch.compile (eager is always measured)")
    measure_training: bool = True


class InputPipeline(Handler):
    name = "dali_pipeline"
    version = "1"
    Params = DaliParams
    outputs = ("dali.json", "report.md")
    requires = ("torch", "cuda", "dali")
    gpu_env = True
    project_keys = ("data", "model")

    @failures_for_user_errors
    def run(self, ctx: Context) -> Result:
        from handlers.preprocessing.dali_loader import dali_available
        ok, why = dali_available()
        if not ok:
            from atlas.probe import dali_install_hint, detected_cuda_major
            return Result.skipped(why, dali_install_hint(detected_cuda_major()))
        import torch
        if not torch.cuda.is_available():
            return Result.skipped("no CUDA device: the DALI pipeline decodes on the GPU",
                                  "run on a machine with an NVIDIA GPU; `atlas env` shows what was found")
        from handlers.preprocessing.dali_run import run_dali_step
        return run_dali_step(ctx)
