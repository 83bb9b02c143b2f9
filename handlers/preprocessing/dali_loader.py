"""DALI as a batch source of the training loop (handlers/ml/batches.py): ready, normalised
(input, label) batches on the GPU from DALI's PyTorch iterator, sharded across DDP ranks.

Training yields the whole batches every rank has (dali_spec: same count on every rank, so
DDP stays in lock-step; each epoch reshuffled over all images); evaluation yields every
image of this rank's shard once, the last batch short.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch

from atlas.probe import dali_install_hint, detected_cuda_major
from handlers.ml.errors import DataError, DeviceError
from handlers.preprocessing.dali_pipelines import READER, ArraySource, array_pipeline, file_pipeline
from handlers.preprocessing.dali_spec import PipelineSpec, batches_per_shard, full_batches


def dali_available() -> tuple[bool, str]:
    """(imports?, why not). Imports DALI's PyTorch plugin, which is what the loader needs."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as exc:
        return False, f"NVIDIA DALI is not installed ({exc.name or exc})"
    except Exception as exc:          # a broken install (missing CUDA libraries) says more than ImportError
        return False, f"NVIDIA DALI does not load: {exc}"
    return True, ""


def dali_threads(processes_per_node: int) -> int:
    """CPU threads per pipeline: the cores shared by the processes of this node, at least 2."""
    return max(2, (os.cpu_count() or 2) // max(1, processes_per_node))


class DaliBatches:
    """A batch source over one dataset (ImageFileDataset: files; ArrayDataset: arrays)."""

    name = "dali"

    def __init__(self, dataset, spec: PipelineSpec) -> None:
        ok, why = dali_available()
        if not ok:
            raise DeviceError(f"loader: dali, but {why}", dali_install_hint(detected_cuda_major()))
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        self.spec = spec
        n = len(dataset)
        if hasattr(dataset, "paths"):
            pipe = file_pipeline(dataset.paths, dataset.labels, spec)
            reader = {"reader_name": READER}
        elif hasattr(dataset, "images"):
            pipe = array_pipeline(ArraySource(dataset.images, dataset.labels, spec))
            reader = {}
        else:
            raise DataError(f"DALI cannot read a {type(dataset).__name__}", "use loader: dataloader")
        # PARTIAL, never DROP: see dali_spec (DROP repeats images in later epochs)
        self.iterator = DALIGenericIterator([pipe], ["images", "labels"], last_batch_policy=LastBatchPolicy.PARTIAL,
                                            auto_reset=True, **reader)
        self.steps = full_batches(n, spec.num_shards, spec.batch_size) if spec.train else \
            batches_per_shard(n, spec.num_shards, spec.batch_size)
        self._open = False

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """DALI reshuffles by itself at each epoch's end; nothing to pass on."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._open:                 # a consumer stopped early: finish that epoch first
            for _ in self.iterator:
                pass
        self._open = True
        yielded = 0
        for out in self.iterator:
            x, y = out[0]["images"], out[0]["labels"].reshape(-1).long()
            if len(y) == 0 or (self.spec.train and (len(y) < self.spec.batch_size or yielded >= self.steps)):
                continue               # padding only, or not a batch every rank has in full
            if self.spec.channels_last:
                x = x.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: a channels_last tensor
            yielded += 1
            yield x, y
        self._open = False
