"""How fast each loader delivers images, measured side by side on the same files and batch
size: decode only, and the full training pipeline (decode, random crop, resize, flip,
normalise, on the GPU as the model takes it). Every figure is images/s over whole batches
after a warm-up, between two device synchronisations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from PIL import Image

from handlers.ml.batches import TorchBatches
from handlers.ml.device import Placement
from handlers.ml.throughput import epochs_of, timed_steps
from handlers.preprocessing.dali_loader import DaliBatches
from handlers.preprocessing.dali_pipelines import file_pipeline
from handlers.preprocessing.dali_spec import PipelineSpec


def _rate(batches: Iterable, warmup: int, count: int, batch: int) -> dict:
    """Images/s of `count` whole batches after `warmup` of them: the loader alone."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return timed_steps(lambda *batch_: None, batches, warmup, count, batch, device)


def dali_decode_rate(paths: list[Path], labels: list[int], spec: PipelineSpec, warmup: int, count: int) -> dict:
    """Reader + decoder alone (outputs stay on the device, unused)."""
    from dataclasses import replace
    pipe = file_pipeline(paths, labels, replace(spec, decode_only=True, train=False))

    def runs():
        while True:
            yield pipe.run()
    return _rate(runs(), warmup, count, spec.batch_size)


def dali_pipeline_rate(dataset, spec: PipelineSpec, warmup: int, count: int) -> dict:
    """The training pipeline to ready GPU batches (what SCRIPTGPU's `loader: dali` uses)."""
    return _rate(epochs_of(DaliBatches(dataset, spec)), warmup, count, spec.batch_size)


class _DecodeOnly(torch.utils.data.Dataset):
    """Full PIL decode in the worker; the pixels are not shipped (a decode rate, not a copy rate)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as im:
            im.load()
            return torch.tensor(im.size), 0


def dataloader_decode_rate(paths: list[Path], batch: int, placement: Placement, warmup: int, count: int) -> dict:
    loader = torch.utils.data.DataLoader(_DecodeOnly(paths), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=placement.workers, persistent_workers=placement.workers > 0,
                                         prefetch_factor=4 if placement.workers else None)

    def batches():
        while True:
            yield from loader
    return _rate(batches(), warmup, count, batch)


def dataloader_pipeline_rate(dataset, batch: int, placement: Placement, warmup: int, count: int) -> dict:
    """The project's DataLoader training path: PIL decode (JPEG draft), crop, resize and flip in
    the workers, pinned copy to the GPU, normalisation there."""
    source = TorchBatches(dataset, batch, placement, train=True, drop_last=True)
    return _rate(epochs_of(source), warmup, count, batch)
