"""Where training and evaluation batches come from: a source yields ready (input, label)
pairs on the model's device, so the loop does not care whether PyTorch's DataLoader (here)
or DALI (handlers/preprocessing/dali_loader.py) decoded them.

A source has `__len__` (batches per epoch on this process), `set_epoch(n)` (reshuffling and
the epoch's augmentation), `__iter__` and `name` (said in the result: which loader fed the
model). The DataLoader source decodes on CPU workers; `preprocess_batch` then does the one
normalisation of the project on the device.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from handlers.ml.data import preprocess_batch
from handlers.ml.device import Placement


class BatchSource(Protocol):
    name: str

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def data_loader(dataset: Dataset, batch: int, placement: Placement, sampler=None, shuffle=False,
                drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=placement.workers, pin_memory=placement.pin_memory,
                      persistent_workers=placement.workers > 0, drop_last=drop_last,
                      prefetch_factor=4 if placement.workers > 0 else None)


class TorchBatches:
    """PyTorch's DataLoader (decoding in worker processes) + preprocessing on the device."""

    name = "dataloader"

    def __init__(self, dataset: Dataset, batch: int, placement: Placement, *, train: bool = False,
                 rank: int = 0, world: int = 1, seed: int = 0, drop_last: bool = False) -> None:
        self.dataset, self.placement = dataset, placement
        # The same sampler with or without DDP: one process sees exactly the union of what N see.
        self.sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                           drop_last=drop_last) if train else None)
        self.loader = data_loader(dataset, batch, placement, sampler=self.sampler, drop_last=drop_last)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self.placement
        for images, labels in self.loader:
            yield (preprocess_batch(images, p.device, channels_last=p.channels_last, non_blocking=p.pin_memory),
                   labels.to(p.device, non_blocking=p.pin_memory))
