"""The project's image preprocessing as DALI pipelines (NVIDIA DALI imported here only).

Training: file reader (shuffled each epoch, sharded) -> fused decode + random crop (nvJPEG
on the GPU with decoder "mixed") -> resize to S x S -> grayscale to three channels ->
normalise with the model's mean/std, mirrored with probability hflip, to FP16/FP32 NCHW
(or NHWC memory for channels_last). Evaluation: decode -> shorter side to S -> centre S x S
-> the same normalisation. The crop ranges, flip probability and mean/std are the ones the
DataLoader path uses (handlers/ml/layout.py, data.hflip), so both loaders train the same
model. Chest X-rays are decoded as GRAY (one channel through decode and resize, a third of
the work of RGB) and replicated to three channels just before normalising, as the
DataLoader path does, so ImageNet weights and mean/std apply unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from handlers.preprocessing.dali_spec import PipelineSpec

READER = "Reader"
# Same arguments as NVIDIA's ResNet-50 example: nvJPEG's scratch buffers sized once for
# large images instead of growing during the first batches.
_DEVICE_PADDING = 211025920
_HOST_PADDING = 140544512


def _dali():
    from nvidia.dali import fn, pipeline_def, types
    return fn, pipeline_def, types


def _normalise(fn, types, images, spec: PipelineSpec, mirror=None):
    images = fn.cat(images, images, images, axis=2)          # HW1 -> HW3, gray replicated
    kwargs = {"mirror": mirror} if mirror is not None else {}
    if not spec.train:
        kwargs["crop"] = (spec.image_size, spec.image_size)  # centre crop (crop_pos 0.5)
    dtype = types.FLOAT16 if spec.dtype == "float16" else types.FLOAT
    return fn.crop_mirror_normalize(images, dtype=dtype, output_layout=spec.layout, mean=spec.mean_255,
                                    std=spec.std_255, **kwargs)


def _decode_args(spec: PipelineSpec, types) -> dict:
    args = {"device": spec.decoder, "output_type": types.GRAY}
    if spec.decoder == "mixed":
        args.update(device_memory_padding=_DEVICE_PADDING, host_memory_padding=_HOST_PADDING)
        if spec.hw_decoder_load is not None:
            args["hw_decoder_load"] = float(spec.hw_decoder_load)
    return args


def file_pipeline(files: Sequence[str | Path], labels: Sequence[int], spec: PipelineSpec):
    """A built pipeline over image files; outputs ("images", "labels")."""
    fn, pipeline_def, types = _dali()

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  seed=spec.pipeline_seed, prefetch_queue_depth=spec.prefetch)
    def pipe():
        encoded, label = fn.readers.file(files=[str(f) for f in files], labels=[int(v) for v in labels],
                                         shard_id=spec.shard_id, num_shards=spec.num_shards,
                                         shuffle_after_epoch=spec.train, pad_last_batch=True,
                                         seed=spec.seed, name=READER)
        if spec.decode_only:
            images = fn.decoders.image(encoded, **_decode_args(spec, types))
            return images, label
        if spec.train:
            images = fn.decoders.image_random_crop(encoded, random_area=list(spec.crop_area),
                                                   random_aspect_ratio=list(spec.crop_aspect), num_attempts=10,
                                                   **_decode_args(spec, types))
            images = fn.resize(images, size=[spec.image_size, spec.image_size], interp_type=types.INTERP_LINEAR,
                               antialias=True)
            mirror = fn.random.coin_flip(probability=spec.hflip) if spec.hflip > 0 else None
        else:
            images = fn.decoders.image(encoded, **_decode_args(spec, types))
            images = fn.resize(images, resize_shorter=spec.image_size, interp_type=types.INTERP_LINEAR,
                               antialias=True)
            mirror = None
        return _normalise(fn, types, images, spec, mirror), label.gpu() if spec.on_gpu else label

    built = pipe()
    built.build()
    return built


class ArraySource:
    """In-memory uint8 (N, H, W) images (the .npz sets) fed to DALI with the file reader's
    semantics: a permutation of all images per epoch that every rank shares, this rank's
    shard of it, whole batches only when training."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], spec: PipelineSpec) -> None:
        from handlers.preprocessing.dali_spec import full_batches, shard_bounds
        self.images, self.labels, self.spec = images, np.asarray(labels, dtype=np.int32), spec
        self.epoch, self._pos, self._order = -1, 0, np.arange(0)
        n, b = len(images), spec.batch_size
        self._full = full_batches(n, spec.num_shards, b)
        self._bounds = lambda: shard_bounds(n, spec.shard_id, spec.num_shards)

    def __iter__(self) -> "ArraySource":
        self.epoch += 1
        order = (np.random.default_rng((self.spec.seed, self.epoch)).permutation(len(self.images))
                 if self.spec.train else np.arange(len(self.images)))
        start, end = self._bounds()
        self._order, self._pos = order[start:end], 0
        if self.spec.train:
            self._order = self._order[:self._full * self.spec.batch_size]
        return self

    def __next__(self):
        if self._pos >= len(self._order):
            raise StopIteration
        idx = self._order[self._pos:self._pos + self.spec.batch_size]
        self._pos += len(idx)
        return [self.images[i][:, :, None] for i in idx], [self.labels[i:i + 1] for i in idx]


def array_pipeline(source: ArraySource):
    """A built pipeline over in-memory images; outputs ("images", "labels")."""
    fn, pipeline_def, types = _dali()
    spec = source.spec

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  seed=spec.pipeline_seed, prefetch_queue_depth=spec.prefetch)
    def pipe():
        images, label = fn.external_source(source=source, num_outputs=2, layout=["HWC", ""], cycle="raise",
                                           dtype=[types.UINT8, types.INT32])
        if spec.on_gpu:
            images, label = images.gpu(), label.gpu()
        if spec.train:
            images = fn.random_resized_crop(images, size=[spec.image_size, spec.image_size],
                                            random_area=list(spec.crop_area), random_aspect_ratio=list(spec.crop_aspect),
                                            num_attempts=10, antialias=True)
            mirror = fn.random.coin_flip(probability=spec.hflip) if spec.hflip > 0 else None
        else:
            images = fn.resize(images, resize_shorter=spec.image_size, interp_type=types.INTERP_LINEAR,
                               antialias=True)
            mirror = None
        return _normalise(fn, types, images, spec, mirror), label

    built = pipe()
    built.build()
    return built
