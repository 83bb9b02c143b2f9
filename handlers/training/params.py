"""Params shared by the training steps (SCRIPTGPU, PROTOTYPE, DISTRIBUTED). Kept free of
torch so that `atlas validate` checks them without importing it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from atlas.paths import WeightsChoice

from atlas.handler import Params


# A GPU runs a few hundred steps of ResNet-50 in seconds, and a model trained from random
# initialisation needs them (24 steps ended as a constant classifier on an H200). The CPU
# quick-start keeps its `epochs` budget, which already trains at 96 px.
GPU_MIN_STEPS = 300


class TrainParams(Params):
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto = cuda when available, else cpu (with a finding)")
    arch: str | None = Field(None, description="torchvision architecture; default: the project's model.arch")
    weights: WeightsChoice | None = Field(None, description="imagenet | auto | none | a .pth path inside the "
                                                            "project; default: the project's model.weights")
    freeze_until: str | None = Field(None, description="block to freeze up to (e.g. layer3), 'none' to train "
                                                       "everything; default: the project's model.freeze_until")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1, description="global batch (split over the processes under DDP)")
    eval_batch_size: int = Field(64, ge=1)
    oom_retry: bool = Field(False, description="after CUDA out of memory, train again once at half the batch "
                                               "(one process; under DDP the step fails with the batch size)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    patience: int = Field(2, ge=1, description="epochs without a better validation loss before stopping")
    min_delta: float = Field(0.0, ge=0)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0)
    class_weighted: bool = Field(True, description="inverse-frequency class weights in the loss")
    freeze_bn: bool = Field(False, description="BatchNorm layers keep their running statistics while training "
                                               "(usual for fine-tuning with small per-GPU batches; makes DDP "
                                               "match one process exactly)")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="auto = bf16 (fp16 where unsupported) on GPUs, off on CPUs")
    channels_last: Literal["auto"] | bool = "auto"
    workers: Literal["auto"] | int = Field("auto", description="DataLoader workers per process")
    seed: int = 0
    subset_per_class: int | None = Field(None, ge=1, description="cap train/val images per class (prototyping)")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    min_steps: Literal["auto"] | int = Field("auto", description="optimizer steps the run holds at least (epochs "
                                             "are raised to reach them) before early stopping may end it; "
                                             f"auto = {GPU_MIN_STEPS} on a GPU, none on the CPU")
    min_epochs: int = Field(3, ge=1, description="epochs before early stopping may end the run")
    bn_recalibration_images: int = Field(256, ge=0, description="before each evaluation, batch-norm statistics "
                                         "are recomputed over this many training images (0 = off)")
    choose_threshold: bool = Field(True, description="fit the decision threshold on the validation split "
                                                     "(binary tasks) instead of assuming 0.5")
    loader: Literal["auto", "dataloader", "dali"] = Field(
        "auto", description="what decodes the training images: auto = DALI when the step runs on a GPU and "
                            "DALI imports, else PyTorch's DataLoader")

    def resolved_min_steps(self, on_gpu: bool) -> int:
        if self.min_steps != "auto":
            return int(self.min_steps)
        return GPU_MIN_STEPS if on_gpu else 0

    def model_choice(self, project: dict) -> dict:
        """arch / weights / freeze_until: these params over the project's model defaults."""
        model = dict(project.get("model") or {})
        for key in ("arch", "weights"):
            if getattr(self, key) is not None:
                model[key] = getattr(self, key)
        if self.freeze_until is not None:
            model["freeze_until"] = None if self.freeze_until == "none" else self.freeze_until
        model.setdefault("arch", "resnet50")
        model.setdefault("weights", "imagenet")
        model.setdefault("freeze_until", None)
        return model
