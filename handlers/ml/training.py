"""The training loop both training steps share (and the DDP worker runs on every rank):
AdamW with a schedule, class-weighted loss, mixed precision, early stopping on validation
loss, the best checkpoint kept, per-epoch metrics, and the overfitting check.

Three guards keep a short run from ending with a constant classifier (seen on an H200:
24 steps from random initialisation, validation AUC 0.95 but every image called NORMAL):
a budget of optimizer steps (`min_steps`) and epochs (`min_epochs`) before early stopping
may end the run; batch-norm statistics recomputed on the training images before every
evaluation, so evaluation sees the statistics of the weights it evaluates; and the
decision threshold chosen on the validation split, not assumed to be 0.5.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from atlas.atomic import replaced_atomically
from handlers.ml.batches import BatchSource, TorchBatches
from handlers.ml.curves import overfitting_epochs
from handlers.ml.device import Placement
from handlers.ml.errors import TrainingError
from handlers.ml.losses import class_weights, make_loss
from handlers.ml.metrics import (choose_threshold, classification_metrics, confusion_matrix, predictions,
                                 quality_warning)

# Makes the train batch source of one process: (dataset, per-process batch, dist, seed).
SourceFactory = Callable[[Dataset, int, "Dist", int], BatchSource]

@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32            # global: split over the processes under DDP
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"        # cosine | constant
    warmup_epochs: float = 0.0
    patience: int = 2               # epochs without a better validation loss before stopping
    min_delta: float = 0.0
    loss: str = "cross_entropy"     # cross_entropy | focal
    focal_gamma: float = 2.0
    class_weighted: bool = True
    freeze_bn: bool = False
    seed: int = 0
    eval_batch_size: int = 64
    max_steps_per_epoch: int | None = None
    min_steps: int = 0              # optimizer steps before early stopping may end the run
    min_epochs: int = 1             # epochs before early stopping may end the run
    bn_recalibration_images: int = 0   # >0: batch-norm statistics recomputed before each evaluation
    choose_threshold: bool = True   # binary: the operating threshold fitted on the validation split


@dataclass
class Dist:
    """This process's place in a DDP job (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Reporter:
    """What the loop tells the outside world; atlas's step Context fits this shape."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logging.getLogger("atlas.train")

    def metric(self, name: str, value: float, unit: str = "", step: int | None = None) -> None:
        pass

    def progress(self, total: float | None, description: str):
        return _NoProgress()


class _NoProgress:
    def advance(self, n: float = 1, **fields: Any) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    overfitting: str | None = None
    test: dict = field(default_factory=dict)
    test_argmax: dict = field(default_factory=dict)   # at the 0.5 / argmax rule, for comparison
    threshold: float | None = None                    # positive-class probability; None = argmax
    threshold_validation: dict = field(default_factory=dict)
    quality: str | None = None                        # why the model is near chance, or None
    train_images_per_s: float = 0.0
    epochs_planned: int = 0
    optimizer_steps: int = 0
    loader: str = "dataloader"

    def as_dict(self) -> dict:
        return asdict(self)


def to_placement(model: nn.Module, placement: Placement) -> nn.Module:
    """The model on its device, in NHWC memory layout when channels_last is on."""
    return model.to(placement.device, memory_format=torch.channels_last if placement.channels_last
                    else torch.contiguous_format)


def _autocast(placement: Placement):
    if placement.amp_dtype is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.amp_dtype)


class TrainStep:
    """One optimisation step on a ready batch (input and labels on the device, from a batch
    source); shared by fit() and the throughput benchmarks."""

    def __init__(self, model: nn.Module, optimizer, loss_fn: nn.Module, placement: Placement, scheduler=None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.placement, self.scheduler = placement, scheduler
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and doesn't
        self.scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.amp_dtype == torch.float16)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _autocast(self.placement):
            loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use cosine or constant")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict(model: nn.Module, batches: BatchSource, placement: Placement,
            loss_fn: nn.Module | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, class probabilities, labels) over a batch source, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, count, probs, labels = 0.0, 0, [], []
    for x, y in batches:
        with _autocast(placement):
            logits = model(x)
        if loss_fn is not None:
            total_loss += float(loss_fn(logits.float(), y)) * len(y)
        count += len(y)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
    model.train(was_training)
    mean_loss = total_loss / count if count and loss_fn is not None else float("nan")
    return mean_loss, np.concatenate(probs), np.concatenate(labels)


def detect_overfitting(history: list[dict], tolerance: float = 0.0) -> str | None:
    """Validation loss rising above its best while training loss keeps falling: the
    pattern the user saw after epoch 2. Returns the finding, or None."""
    span = overfitting_epochs(history, tolerance)
    if span is None:
        return None
    best, worst = span
    return (f"overfitting: validation loss rose from {best['val_loss']:.4f} (epoch {best['epoch']}) to "
            f"{worst['val_loss']:.4f} (epoch {worst['epoch']}) while training loss fell from "
            f"{best['train_loss']:.4f} to {worst['train_loss']:.4f}; kept epoch {best['epoch']}'s weights")


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """state_dict + plain metadata (loadable with weights_only=True), written atomically."""
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    with replaced_atomically(path) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _default_source(dataset: Dataset, batch: int, dist: "Dist", seed: int, placement: Placement) -> BatchSource:
    return TorchBatches(dataset, batch, placement, train=True, rank=dist.rank, world=dist.world, seed=seed)


def planned_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """`epochs`, raised until the run holds at least `min_steps` optimizer steps."""
    need = math.ceil(cfg.min_steps / steps_per_epoch) if cfg.min_steps and steps_per_epoch else 0
    return max(cfg.epochs, need)


def may_stop(cfg: TrainConfig, epoch: int, steps_done: int) -> bool:
    """Early stopping may end the run only once it has trained: the minimum epochs and steps."""
    return epoch >= cfg.min_epochs and steps_done >= cfg.min_steps


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: BatchSource, placement: Placement, max_images: int) -> int:
    """Recompute every batch-norm layer's running mean and variance as plain averages over
    up to `max_images` images (train-mode forward passes, no gradients), instead of the
    exponential average that lags behind weights which changed a lot in a few steps.
    Returns the images used; the weights are not touched."""
    layers = _batchnorms(model)
    if not layers or max_images <= 0:
        return 0
    was_training = model.training
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None              # cumulative average over the batches that follow
    model.train()
    seen = 0
    for x, _ in batches:
        with _autocast(placement):
            model(x)
        seen += len(x)
        if seen >= max_images:
            break
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
    model.train(was_training)
    return seen


def fit(model: nn.Module, datasets: dict[str, Dataset], num_classes: int, positive: int,
        cfg: TrainConfig, placement: Placement, checkpoint: Path, meta: dict,
        reporter: Reporter | None = None, dist: Dist | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        train_source: SourceFactory | None = None) -> FitResult:
    """Train with early stopping; the best epoch's weights end up in `model` and `checkpoint`.
    Under DDP every rank calls this; only rank 0 evaluates, reports and saves. Training
    batches come from `train_source` (the DataLoader by default, or DALI); evaluation always
    uses the project's reference preprocessing, so scores compare across loaders."""
    reporter, dist = reporter or Reporter(), dist or Dist()
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world} processes")
    model = to_placement(model, placement)
    net = wrap(model) if wrap else model
    model = _unwrap(net)     # the wrapper may have replaced layers (SyncBatchNorm)
    train_set = datasets["train"]
    make = train_source or (lambda ds, b, d, s: _default_source(ds, b, d, s, placement))
    train_batches = make(train_set, cfg.batch_size // dist.world, dist, cfg.seed)
    steps = len(train_batches) if cfg.max_steps_per_epoch is None else min(len(train_batches), cfg.max_steps_per_epoch)
    if steps == 0:
        raise TrainingError(f"the training split gives no batch of {cfg.batch_size // dist.world} images "
                            f"per process ({len(train_set)} images)", "lower batch_size or add images")
    epochs = planned_epochs(cfg, steps)
    weight = class_weights(train_set.labels, num_classes).to(placement.device) if cfg.class_weighted else None
    loss_fn = make_loss(cfg.loss, weight, cfg.focal_gamma).to(placement.device)
    optimizer, scheduler = make_optimizer(model, replace(cfg, epochs=epochs), steps)
    step = TrainStep(net, optimizer, loss_fn, placement, scheduler)
    val_batches = TorchBatches(datasets["val"], cfg.eval_batch_size, placement) if dist.is_main else None
    recal = None
    if dist.is_main and cfg.bn_recalibration_images > 0 and not cfg.freeze_bn and _batchnorms(model):
        # the training images without augmentation: the inputs evaluation will see
        recal = TorchBatches(eval_view(train_set), cfg.eval_batch_size, placement)
    result = FitResult(epochs_planned=epochs, loader=getattr(train_batches, "name", "dataloader"))
    bad_epochs, steps_done = 0, 0
    for epoch in range(1, epochs + 1):
        train_batches.set_epoch(epoch)
        net.train()
        if cfg.freeze_bn:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loss_sum = torch.zeros((), device=placement.device)
        seen, started = 0, time.perf_counter()
        with reporter.progress(steps, f"epoch {epoch}/{epochs}") as bar:
            for i, (x, y) in enumerate(train_batches):
                if i >= steps:
                    break
                loss_sum += step(x, y) * len(y)
                seen += len(y)
                # reading the loss syncs the GPU: only now and then, for the bar
                bar.advance(1, **({"loss": f"{float(loss_sum) / seen:.4f}"} if i % 20 == 0 else {}))
        steps_done += steps
        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=placement.device)])
        if dist.world > 1:      # every rank's share, so rank 0 reports the whole epoch
            torch.distributed.all_reduce(totals)
        train_loss = float(totals[0] / totals[1].clamp_min(1))    # one sync per epoch, not per step
        if placement.is_cuda:
            torch.cuda.synchronize(placement.device)
        seconds = time.perf_counter() - started
        stop = torch.zeros(1, device=placement.device)
        if dist.is_main:
            if recal is not None:
                recalibrate_batchnorm(model, recal, placement, cfg.bn_recalibration_images)
            _end_of_epoch(model, val_batches, loss_fn, placement, positive, cfg, epoch, epochs,
                          train_loss, seconds, int(totals[1]), optimizer, result, checkpoint, meta, reporter)
            bad_epochs = 0 if result.best_epoch == epoch else bad_epochs + 1
            stop[0] = float(bad_epochs >= cfg.patience and epoch < epochs and may_stop(cfg, epoch, steps_done))
        if dist.world > 1:
            torch.distributed.broadcast(stop, src=0)     # every rank stops at the same epoch
        if stop.item():
            result.stopped_early = True
            break
    result.optimizer_steps = steps_done
    if dist.is_main:
        result.overfitting = detect_overfitting(result.history)
        _finish(model, checkpoint, datasets, placement, positive, num_classes, cfg, result, reporter)
    return result


def eval_view(dataset: Dataset) -> Dataset:
    """The same images without training augmentation (datasets with an `as_eval`)."""
    return dataset.as_eval() if hasattr(dataset, "as_eval") else dataset


def _end_of_epoch(model, val_batches, loss_fn, placement, positive, cfg, epoch, epochs, train_loss, seconds,
                  images, optimizer, result: FitResult, checkpoint, meta, reporter) -> None:
    val_loss, probs, labels = predict(_unwrap(model), val_batches, placement, loss_fn)
    scores = classification_metrics(labels, probs, positive)
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
           **{f"val_{k}": v for k, v in scores.items()},
           "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
           "train_images_per_s": images / seconds if seconds > 0 else 0.0}
    result.history.append(row)
    for name, value in row.items():
        if name != "epoch":
            unit = {"epoch_seconds": "s", "train_images_per_s": "img/s"}.get(name, "")
            reporter.metric(name, value, unit, step=epoch)
    improved = val_loss < result.best_val_loss - cfg.min_delta
    reporter.log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.3f, val AUC %.3f, %.0f img/s%s",
                      epoch, epochs, train_loss, val_loss, scores["accuracy"], scores["auc"],
                      row["train_images_per_s"], " (best so far)" if improved else "")
    if improved:
        result.best_epoch, result.best_val_loss = epoch, val_loss
        save_checkpoint(_unwrap(model), checkpoint, {**meta, "epoch": epoch, "val_loss": val_loss})


def _finish(model, checkpoint, datasets, placement, positive, num_classes, cfg, result: FitResult,
            reporter) -> None:
    """Reload the best epoch (safely), fit the operating threshold on the validation split,
    score the test split at it, and write both into the checkpoint for the later steps."""
    if not checkpoint.exists():
        raise TrainingError("validation loss was never finite, so no epoch was worth keeping",
                            "lower lr, or set amp: off if fp16 overflowed")
    state = torch.load(checkpoint, map_location=placement.device, weights_only=True)
    _unwrap(model).load_state_dict(state["state_dict"])
    result.train_images_per_s = max((h["train_images_per_s"] for h in result.history), default=0.0)
    if cfg.choose_threshold and num_classes == 2:
        _, val_probs, val_labels = predict(_unwrap(model), TorchBatches(datasets["val"], cfg.eval_batch_size,
                                                                        placement), placement)
        result.threshold, result.threshold_validation = choose_threshold(val_labels, val_probs, positive)
    _, probs, labels = predict(_unwrap(model), TorchBatches(datasets["test"], cfg.eval_batch_size, placement),
                               placement)
    scores = classification_metrics(labels, probs, positive, result.threshold)
    predicted = predictions(probs, positive, result.threshold)
    matrix = confusion_matrix(labels, predicted, num_classes)
    result.test = {**scores, "confusion_matrix": matrix.tolist(), "images": int(len(labels)),
                   "threshold": result.threshold}
    result.test_argmax = classification_metrics(labels, probs, positive)
    result.quality = quality_warning(scores["auc"], predicted, list(state["meta"].get("classes") or range(num_classes)))
    for name, value in scores.items():
        reporter.metric(f"test_{name}", value)
    if result.threshold is not None:
        reporter.metric("threshold", result.threshold)
    # the later steps (ONNX, TensorRT, benchmark) score with the same rule and repeat a warning
    save_checkpoint(_unwrap(model), checkpoint, {**state["meta"], "threshold": result.threshold,
                                                 "test": {k: v for k, v in scores.items()},
                                                 "quality_warning": result.quality})
