"""Which loader feeds a training run (the `loader` param): PyTorch's DataLoader or DALI.

auto takes DALI when the step runs on a GPU and DALI imports, else the DataLoader (and says
why when a GPU run could have used DALI). dali asks for it outright: without DALI that is
an error with the install command; on a machine without a GPU DALI decodes on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from atlas.probe import dali_install_hint, detected_cuda_major
from handlers.ml.device import Placement
from handlers.ml.errors import DeviceError
from handlers.ml.training import SourceFactory


@dataclass
class LoaderChoice:
    name: str                          # "dataloader" | "dali"
    factory: SourceFactory | None      # None: the training loop's DataLoader
    note: str | None = None            # a finding when the choice is not what the user may expect


def choose_loader(requested: str, placement: Placement, processes_per_node: int = 1,
                  available: tuple[bool, str] | None = None) -> LoaderChoice:
    if requested == "dataloader":
        return LoaderChoice("dataloader", None)
    if available is None:
        from handlers.preprocessing.dali_loader import dali_available
        available = dali_available()
    ok, why = available
    if requested == "auto":
        if not placement.is_cuda:
            return LoaderChoice("dataloader", None)
        if not ok:
            return LoaderChoice("dataloader", None, f"loader auto: PyTorch's DataLoader fed the GPU because {why}; "
                                f"DALI decodes on the GPU instead: {dali_install_hint(detected_cuda_major())}")
    elif not ok:
        raise DeviceError(f"loader: dali, but {why}", dali_install_hint(detected_cuda_major()))
    note = None if placement.is_cuda else "loader: dali on a machine without a GPU: DALI decodes on the CPU"
    return LoaderChoice("dali", dali_factory(placement, processes_per_node), note)


def dali_factory(placement: Placement, processes_per_node: int) -> SourceFactory:
    def make(dataset, batch: int, dist, seed: int):
        from handlers.preprocessing.dali_loader import DaliBatches, dali_threads
        from handlers.preprocessing.dali_spec import PipelineSpec
        spec = PipelineSpec(image_size=dataset.image_size, batch_size=batch, train=True, hflip=dataset.hflip,
                            dtype="float32" if placement.amp_dtype is None else "float16",
                            channels_last=placement.channels_last,
                            decoder="mixed" if placement.is_cuda else "cpu",
                            device_id=(placement.device.index or 0) if placement.is_cuda else None,
                            shard_id=dist.rank, num_shards=dist.world, seed=seed,
                            num_threads=dali_threads(processes_per_node))
        return DaliBatches(dataset, spec)
    return make
