"""One training run from a step's params and the project defaults: data, model, device,
fit, and a JSON-able summary with the findings a step reports. Used by the SCRIPTGPU and
PROTOTYPE handlers in-process and by the DDP worker on every rank."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from handlers.ml.data import IMAGENET_MEAN, IMAGENET_STD, PreparedData, prepare_data
from handlers.ml.device import Placement, place
from handlers.ml.errors import TrainingError, is_out_of_memory, release_device_memory
from handlers.ml.models import BuiltModel, build_model
from handlers.ml.synthetic import SYNTHETIC_LABEL, synthetic_tag
from handlers.ml.training import Dist, FitResult, Reporter, TrainConfig, fit
from handlers.training.loaders import choose_loader
from handlers.training.params import TrainParams


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_config(params: TrainParams, on_gpu: bool) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in params.model_dump().items() if k in fields}
    values["min_steps"] = params.resolved_min_steps(on_gpu)
    return TrainConfig(**values)


def cache_dir(project_root: Path) -> Path:
    return project_root / ".atlas" / "cache"


def load_data(params: TrainParams, project: dict, project_root: Path, reporter: Reporter,
              placement: Placement, synthetic_signal: bool = True,
              known_bad: list[tuple[str, str]] | None = None) -> PreparedData:
    return prepare_data(project["data"], project_root, cache_dir(project_root), log=reporter.log,
                        progress=reporter.progress, workers=max(1, placement.workers),
                        subset_per_class=params.subset_per_class, seed=params.seed,
                        synthetic_signal=synthetic_signal, known_bad=known_bad)


@dataclass
class TrainingRun:
    data: PreparedData
    built: BuiltModel
    placement: Placement
    fit: FitResult
    findings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        d, b = self.data, self.built
        return {
            "synthetic": d.synthetic, "data_source": d.source, "classes": d.classes,
            "positive_class": d.classes[d.positive], "images": d.counts(),
            "skipped_images": [list(item) for item in d.skipped],
            "arch": b.arch, "weights": b.weights.used, "weights_requested": b.weights.requested,
            "trainable_params": b.trainable_params, "total_params": b.total_params,
            "device": self.placement.describe(), **self.fit.as_dict(), "findings": self.findings,
        }

    def headline(self) -> str:
        t = self.fit.test
        tag = synthetic_tag(self.data.synthetic)
        at = "" if self.fit.threshold is None else f" at threshold {self.fit.threshold:.3f}"
        return (f"{self.built.arch}: best epoch {self.fit.best_epoch}/{len(self.fit.history)} "
                f"({self.fit.optimizer_steps} steps, {self.fit.loader}), test accuracy "
                f"{t.get('accuracy', float('nan')):.3f}, AUC {t.get('auc', float('nan')):.3f}, "
                f"F1 {t.get('f1', float('nan')):.3f}{at}{tag}")


def run_training(params: TrainParams, project: dict, project_root: Path, checkpoint: Path,
                 reporter: Reporter, dist: Dist | None = None, processes_per_node: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, synthetic_signal: bool = True,
                 data: PreparedData | None = None, placement: Placement | None = None) -> TrainingRun:
    """Train once; CUDA out of memory fails with the batch size and what to do, or, with
    `oom_retry` in one process, trains again once at half the batch."""
    dist = dist or Dist()
    try:
        return _train(params, project, project_root, checkpoint, reporter, dist, processes_per_node, wrap,
                      synthetic_signal, data, placement)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        failed = params.batch_size
        release_device_memory()
        half = failed // 2
        if not params.oom_retry or dist.world > 1 or half < 1:
            raise TrainingError(
                f"CUDA out of memory at batch size {failed}" + (f" ({dist.world} processes)" if
                                                                 dist.world > 1 else ""),
                f"lower batch_size (try {max(half, 1)}) or image_size, or set oom_retry: true to retry once at "
                f"half the batch") from None
    reporter.log.warning("CUDA out of memory at batch size %d: training again at %d (oom_retry)", failed, half)
    try:
        run = _train(params.model_copy(update={"batch_size": half}), project, project_root, checkpoint, reporter,
                     dist, processes_per_node, wrap, synthetic_signal, data, placement)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        release_device_memory()
        raise TrainingError(f"CUDA out of memory at batch size {failed}, and again at {half} (oom_retry)",
                            f"lower batch_size below {half} or image_size") from None
    run.findings.append(f"CUDA out of memory at batch size {failed}: trained at {half} instead (oom_retry); "
                        f"set batch_size: {half} to start there")
    return run


def _train(params: TrainParams, project: dict, project_root: Path, checkpoint: Path, reporter: Reporter,
           dist: Dist, processes_per_node: int, wrap, synthetic_signal: bool, data: PreparedData | None,
           placement: Placement | None) -> TrainingRun:
    placement = placement or place(params.device, params.amp, params.channels_last, params.workers,
                                   dist.local_rank, processes_per_node)
    data = data or load_data(params, project, project_root, reporter, placement, synthetic_signal)
    loader = choose_loader(params.loader, placement, processes_per_node)
    choice = params.model_choice(project)
    seed_everything(params.seed)     # the same initial head on every rank and every run
    built = build_model(choice["arch"], len(data.classes), choice["weights"], choice["freeze_until"],
                        project_root, reporter.log)
    meta = {"arch": built.arch, "classes": data.classes, "positive": data.positive,
            "image_size": int(project["data"]["image_size"]), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "input": "grayscale replicated to 3 channels, /255, ImageNet mean/std",
            "synthetic": data.synthetic, "data_source": data.source, "weights": built.weights.used,
            "freeze_until": choice["freeze_until"]}
    reporter.log.info("training %s (%s weights, %d of %d parameters trainable) on %s; data: %s",
                      built.arch, built.weights.used, built.trainable_params, built.total_params,
                      placement.describe(), data.source)
    result = fit(built.model, data.datasets, len(data.classes), data.positive,
                 train_config(params, placement.is_cuda), placement, checkpoint, meta, reporter, dist, wrap,
                 loader.factory)
    findings = _findings(data, built, placement, result, choice)
    if loader.note:
        findings.append(loader.note)
    return TrainingRun(data, built, placement, result, findings)


def _findings(data: PreparedData, built: BuiltModel, placement: Placement, result: FitResult,
              choice: dict) -> list[str]:
    findings = []
    if data.synthetic:
        findings.append(f"{SYNTHETIC_LABEL}: trained and scored on the built-in synthetic set, not on X-rays; "
                        f"set data.root in tasks/project.yaml for real results")
    if result.quality:
        findings.append(result.quality)
    if result.threshold is not None:
        v = result.threshold_validation
        findings.append(f"operating threshold {result.threshold:.3f} on the {data.classes[data.positive]} probability, "
                        f"chosen on the validation split (sensitivity {v['sensitivity']:.3f}, specificity "
                        f"{v['specificity']:.3f}); test accuracy {result.test_argmax['accuracy']:.3f} at 0.5")
    if placement.note:
        findings.append(placement.note)
    if built.weights.note:
        findings.append(built.weights.note)
    if not built.weights.pretrained and choice["freeze_until"] and built.weights.requested != "auto":
        findings.append(f"layers up to {choice['freeze_until']} are frozen at random initialisation; "
                        f"with weights: none consider freeze_until: none")
    if data.skipped:
        findings.append(f"{len(data.skipped)} unreadable images skipped (named in the log)")
    if result.overfitting:
        findings.append(result.overfitting)
    if result.stopped_early:
        findings.append(f"early stopping after epoch {len(result.history)}: no better validation loss "
                        f"since epoch {result.best_epoch}")
    return findings + list(data.notes)
