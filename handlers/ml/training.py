"""The training loop both training steps share (and the DDP worker runs on every rank):
AdamW with a schedule, class-weighted loss, mixed precision, early stopping on validation
loss, the best checkpoint kept, per-epoch metrics, and the overfitting check.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from atlas.atomic import replaced_atomically
from handlers.ml.data import preprocess_batch
from handlers.ml.device import Placement
from handlers.ml.losses import class_weights, make_loss
from handlers.ml.metrics import classification_metrics, confusion_matrix
from handlers.ml.errors import TrainingError




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
    train_images_per_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _loader(dataset: Dataset, batch: int, placement: Placement, sampler=None, shuffle=False,
            drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=placement.workers, pin_memory=placement.pin_memory,
                      persistent_workers=placement.workers > 0, drop_last=drop_last,
                      prefetch_factor=4 if placement.workers > 0 else None)


def to_placement(model: nn.Module, placement: Placement) -> nn.Module:
    """The model on its device, in NHWC memory layout when channels_last is on."""
    return model.to(placement.device, memory_format=torch.channels_last if placement.channels_last
                    else torch.contiguous_format)


def _autocast(placement: Placement):
    if placement.amp_dtype is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.amp_dtype)


class TrainStep:
    """One optimisation step on a uint8 batch; shared by fit() and the throughput benchmark."""

    def __init__(self, model: nn.Module, optimizer, loss_fn: nn.Module, placement: Placement, scheduler=None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.placement, self.scheduler = placement, scheduler
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and doesn't
        self.scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.amp_dtype == torch.float16)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.placement
        x = preprocess_batch(images, p.device, channels_last=p.channels_last, non_blocking=p.pin_memory)
        y = labels.to(p.device, non_blocking=p.pin_memory)
        with _autocast(p):
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
def predict(model: nn.Module, loader: DataLoader, placement: Placement,
            loss_fn: nn.Module | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, class probabilities, labels) over a loader, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, count, probs, labels = 0.0, 0, [], []
    for images, target in loader:
        x = preprocess_batch(images, placement.device, channels_last=placement.channels_last,
                             non_blocking=placement.pin_memory)
        y = target.to(placement.device, non_blocking=placement.pin_memory)
        with _autocast(placement):
            logits = model(x)
        if loss_fn is not None:
            total_loss += float(loss_fn(logits.float(), y)) * len(y)
        count += len(y)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(target.numpy())
    model.train(was_training)
    mean_loss = total_loss / count if count and loss_fn is not None else float("nan")
    return mean_loss, np.concatenate(probs), np.concatenate(labels)


def detect_overfitting(history: list[dict], tolerance: float = 0.0) -> str | None:
    """Validation loss rising above its best while training loss keeps falling: the
    pattern the user saw after epoch 2. Returns the finding, or None."""
    if len(history) < 2:
        return None
    best = min(history, key=lambda h: h["val_loss"])
    later = [h for h in history if h["epoch"] > best["epoch"]
             and h["val_loss"] > best["val_loss"] * (1 + tolerance) and h["train_loss"] < best["train_loss"]]
    if not later:
        return None
    worst = max(later, key=lambda h: h["val_loss"])
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


def fit(model: nn.Module, datasets: dict[str, Dataset], num_classes: int, positive: int,
        cfg: TrainConfig, placement: Placement, checkpoint: Path, meta: dict,
        reporter: Reporter | None = None, dist: Dist | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None) -> FitResult:
    """Train with early stopping; the best epoch's weights end up in `model` and `checkpoint`.
    Under DDP every rank calls this; only rank 0 evaluates, reports and saves."""
    reporter, dist = reporter or Reporter(), dist or Dist()
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world} processes")
    model = to_placement(model, placement)
    net = wrap(model) if wrap else model
    model = _unwrap(net)     # the wrapper may have replaced layers (SyncBatchNorm)
    train_set = datasets["train"]
    # The same sampler with or without DDP: one process sees exactly the union of what N see.
    sampler = DistributedSampler(train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    train_loader = _loader(train_set, cfg.batch_size // dist.world, placement, sampler=sampler)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    weight = class_weights(train_set.labels, num_classes).to(placement.device) if cfg.class_weighted else None
    loss_fn = make_loss(cfg.loss, weight, cfg.focal_gamma).to(placement.device)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    step = TrainStep(net, optimizer, loss_fn, placement, scheduler)
    val_loader = _loader(datasets["val"], cfg.eval_batch_size, placement) if dist.is_main else None
    result, bad_epochs = FitResult(), 0
    for epoch in range(1, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        net.train()
        if cfg.freeze_bn:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loss_sum = torch.zeros((), device=placement.device)
        seen, started = 0, time.perf_counter()
        with reporter.progress(steps, f"epoch {epoch}/{cfg.epochs}") as bar:
            for i, (images, labels) in enumerate(train_loader):
                if i >= steps:
                    break
                loss_sum += step(images, labels) * len(labels)
                seen += len(labels)
                # reading the loss syncs the GPU: only now and then, for the bar
                bar.advance(1, **({"loss": f"{float(loss_sum) / seen:.4f}"} if i % 20 == 0 else {}))
        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=placement.device)])
        if dist.world > 1:      # every rank's share, so rank 0 reports the whole epoch
            torch.distributed.all_reduce(totals)
        train_loss = float(totals[0] / totals[1].clamp_min(1))    # one sync per epoch, not per step
        if placement.is_cuda:
            torch.cuda.synchronize(placement.device)
        seconds = time.perf_counter() - started
        stop = torch.zeros(1, device=placement.device)
        if dist.is_main:
            _end_of_epoch(model, val_loader, loss_fn, placement, positive, cfg, epoch,
                                     train_loss, seconds, int(totals[1]), optimizer, result,
                                     checkpoint, meta, reporter)
            bad_epochs = 0 if result.best_epoch == epoch else bad_epochs + 1
            stop[0] = float(bad_epochs >= cfg.patience and epoch < cfg.epochs)
        if dist.world > 1:
            torch.distributed.broadcast(stop, src=0)     # every rank stops at the same epoch
        if stop.item():
            result.stopped_early = True
            break
    if dist.is_main:
        result.overfitting = detect_overfitting(result.history)
        _finish(model, checkpoint, datasets, placement, positive, num_classes, cfg, result, reporter)
    return result


def _end_of_epoch(model, val_loader, loss_fn, placement, positive, cfg, epoch, train_loss, seconds,
                  images, optimizer, result: FitResult, checkpoint, meta, reporter) -> None:
    val_loss, probs, labels = predict(_unwrap(model), val_loader, placement, loss_fn)
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
                      epoch, cfg.epochs, train_loss, val_loss, scores["accuracy"], scores["auc"],
                      row["train_images_per_s"], " (best so far)" if improved else "")
    if improved:
        result.best_epoch, result.best_val_loss = epoch, val_loss
        save_checkpoint(_unwrap(model), checkpoint, {**meta, "epoch": epoch, "val_loss": val_loss})


def _finish(model, checkpoint, datasets, placement, positive, num_classes, cfg, result: FitResult,
            reporter) -> None:
    """Reload the best epoch (safely) and score it on the test split."""
    if not checkpoint.exists():
        raise TrainingError("validation loss was never finite, so no epoch was worth keeping",
                            "lower lr, or set amp: off if fp16 overflowed")
    state = torch.load(checkpoint, map_location=placement.device, weights_only=True)
    _unwrap(model).load_state_dict(state["state_dict"])
    result.train_images_per_s = max((h["train_images_per_s"] for h in result.history), default=0.0)
    test_loader = _loader(datasets["test"], cfg.eval_batch_size, placement)
    _, probs, labels = predict(_unwrap(model), test_loader, placement)
    scores = classification_metrics(labels, probs, positive)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    result.test = {**scores, "confusion_matrix": matrix.tolist(), "images": int(len(labels))}
    for name, value in scores.items():
        reporter.metric(f"test_{name}", value)
