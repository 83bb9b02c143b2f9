"""Training throughput, measured the same way wherever it is asked for (the DALI step,
benchmarks/train_throughput.py): a model's optimisation step fed from a batch source, timed
between two device synchronisations after a warm-up, whole batches only.

"Resident" batches are one real-shaped batch kept on the GPU and fed again and again: the
model's own speed, the ceiling any loader is measured against.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch

from handlers.ml.batches import BatchSource
from handlers.ml.data import preprocess_batch
from handlers.ml.device import Placement
from handlers.ml.models import build_model
from handlers.ml.training import TrainConfig, TrainStep, make_optimizer, to_placement


def training_step(placement: Placement, arch: str = "resnet50", num_classes: int = 2, freeze: str | None = None,
                  compile_model: bool = False, seed: int = 0) -> tuple[TrainStep, int]:
    """(a TrainStep of a fresh model, its trainable parameters); random weights: the speed of
    a step does not depend on them."""
    torch.manual_seed(seed)
    built = build_model(arch, num_classes, weights="none", freeze=freeze)
    model = to_placement(built.model, placement)
    net = torch.compile(model) if compile_model else model
    optimizer, _ = make_optimizer(model, TrainConfig(schedule="constant"), 1)
    return TrainStep(net, optimizer, torch.nn.CrossEntropyLoss(), placement), built.trainable_params


def resident_batches(batch: int, size: int, placement: Placement, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One preprocessed batch of random pixels on the device, forever (in `dtype`: the same
    as a loader's output, so a compiled model is not recompiled between the two feeds)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g)
    x = preprocess_batch(images, placement.device, channels_last=placement.channels_last).to(dtype)
    y = torch.randint(0, 2, (batch,), generator=g).to(placement.device)
    while True:
        yield x, y


def epochs_of(source: BatchSource) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A batch source's batches over as many epochs as asked for."""
    epoch = 0
    while True:
        source.set_epoch(epoch)
        got = False
        for item in source:
            got = True
            yield item
        if not got:
            raise RuntimeError(f"{getattr(source, 'name', 'the loader')} yielded no batch in a whole epoch")
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: TrainStep, batches: Iterable, warmup: int, iters: int, batch: int,
                device: torch.device) -> dict:
    """Images/s of `iters` steps after `warmup` steps, whole batches only (a short batch is a
    new shape, which cuDNN would autotune inside the timed window)."""
    it = (b for b in batches if len(b[1]) == batch)
    for _ in range(warmup):
        step(*next(it))
    _sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        step(*next(it))
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": iters * batch / seconds, "seconds": seconds, "iterations": iters, "batch": batch}
