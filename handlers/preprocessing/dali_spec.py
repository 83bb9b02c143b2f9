"""What a DALI pipeline of the project does, and the arithmetic of its shards, without DALI:
the training steps, the DALI step and the tests all read it, and `atlas validate` never
imports DALI.

Semantics (measured on DALI 2.4, see tests/test_preprocessing_dali.py): the file reader
with `shuffle_after_epoch` reshuffles the whole file list each epoch with a seed all ranks
share, so the shards of one epoch are disjoint and together hold every image once;
`pad_last_batch` gives every shard the same number of batches; the iterator's PARTIAL
policy trims the padding (the last batch of a shard may come out short or empty). DROP,
which would drop the short batch, repeats and loses images in later epochs (measured), so
training keeps PARTIAL and uses only the batches every rank has in full: whole batches,
the same count on every rank (DDP steps in lock-step), at most one batch of images per rank
left out of an epoch, different ones each epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from handlers.ml.layout import CROP_AREA, CROP_ASPECT, IMAGENET_MEAN, IMAGENET_STD

DECODERS = ("mixed", "cpu")          # mixed: nvJPEG on the GPU (hardware decoder where present)
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class PipelineSpec:
    image_size: int
    batch_size: int
    train: bool
    hflip: float = 0.5
    crop_area: tuple[float, float] = CROP_AREA
    crop_aspect: tuple[float, float] = CROP_ASPECT
    mean: tuple[float, ...] = IMAGENET_MEAN          # on the 0-1 scale, like torchvision
    std: tuple[float, ...] = IMAGENET_STD
    dtype: str = "float16"
    channels_last: bool = False                      # NHWC memory (a channels_last NCHW tensor in torch)
    decoder: str = "mixed"
    shard_id: int = 0
    num_shards: int = 1
    seed: int = 0                                    # the reader's: the same on every rank
    num_threads: int = 4
    device_id: int | None = 0                        # None: a CPU-only pipeline (tests, no GPU)
    decode_only: bool = False                        # reader + decoder, nothing after (speed)
    prefetch: int = 2
    # share of JPEGs the GPU's hardware decoder takes; the rest goes to nvJPEG's CUDA/hybrid
    # decoder on the SMs, which the training needs. All of it: on an H200 the pipeline went
    # from 6,976 to 7,981 img/s and compiled DALI-fed training from 65% to 76% of resident
    # (benchmarks/results/dali-feed-h200-2026-12-01.json; DALI's default is 0.65)
    hw_decoder_load: float | None = 1.0

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r}: use one of {DECODERS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: use one of {DTYPES}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id {self.shard_id} must be in [0, {self.num_shards})")
        if self.device_id is None and self.decoder == "mixed":
            raise ValueError("a CPU-only pipeline (device_id None) needs decoder: cpu")
        if self.batch_size < 1 or self.image_size < 1:
            raise ValueError("batch_size and image_size must be positive")

    @property
    def on_gpu(self) -> bool:
        return self.device_id is not None

    @property
    def layout(self) -> str:
        return "HWC" if self.channels_last else "CHW"

    @property
    def mean_255(self) -> list[float]:
        """DALI normalises the 0-255 values: mean and std scaled by 255."""
        return [m * 255 for m in self.mean]

    @property
    def std_255(self) -> list[float]:
        return [s * 255 for s in self.std]

    @property
    def pipeline_seed(self) -> int:
        """Augmentations differ per rank; the reader's shuffle (`seed`) does not."""
        return self.seed * 1009 + 12 + self.shard_id


def shard_bounds(n: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of a shard within one epoch's order: DALI's split (shards differ by at most 1)."""
    return (n * shard_id) // num_shards, (n * (shard_id + 1)) // num_shards


def shard_sizes(n: int, num_shards: int) -> list[int]:
    return [b - a for a, b in (shard_bounds(n, s, num_shards) for s in range(num_shards))]


def batches_per_shard(n: int, num_shards: int, batch: int) -> int:
    """Batches each shard yields with pad_last_batch (the largest shard's count, for all)."""
    return math.ceil(max(shard_sizes(n, num_shards)) / batch) if n else 0


def full_batches(n: int, num_shards: int, batch: int) -> int:
    """Whole batches that every shard has in every epoch: the training steps per epoch."""
    return min(shard_sizes(n, num_shards)) // batch if n else 0


def images_per_epoch(n: int, num_shards: int, batch: int, train: bool) -> int:
    """Images that reach the model in one epoch over all ranks."""
    return full_batches(n, num_shards, batch) * batch * num_shards if train else n
