"""Evaluation data as arrays: the checkpoint's data split decoded once (no augmentation) and
turned into the model's float input by the same preprocessing training used."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from handlers.ml.data import PreparedData, prepare_data, preprocess_batch
from handlers.ml.device import cpu_count
from handlers.ml.errors import DataError


def load_eval_data(project: dict, project_root: Path, meta: dict, log, progress=None) -> PreparedData:
    """The project's data at the checkpoint's image size; the classes must be the ones the
    model was trained on, in the same order (the logits are indexed by them)."""
    config = dict(project["data"])
    config["image_size"] = int(meta["image_size"])
    data = prepare_data(config, project_root, Path(project_root) / ".atlas" / "cache", log=log,
                        progress=progress, workers=cpu_count())
    if list(data.classes) != list(meta["classes"]):
        raise DataError(f"the model was trained on classes {meta['classes']}, but the project now lists "
                        f"{data.classes}", "re-run the training step (atlas run AG-DS-SCRIPTGPU-001)")
    return data


def split_arrays(data: PreparedData, split: str, limit: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 1, S, S] and int64 labels of one split, decoded as at inference (no training
    crop, even from train/); `limit` takes a class-stratified, seeded sample so a small N
    still sees every class."""
    dataset = copy.copy(data.datasets[split])
    dataset.train = False
    labels = np.asarray(dataset.labels, dtype=np.int64)
    index = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        rng = np.random.default_rng((seed, 7))
        per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in range(len(data.classes))]
        # round-robin over the classes keeps the sample balanced as far as each class allows
        order = [c[i] for i in range(max(map(len, per_class))) for c in per_class if i < len(c)]
        index = np.sort(np.asarray(order[:limit]))
    if len(index) == 0:
        raise DataError(f"the {split} split has no images", "check data.root in tasks/project.yaml")
    images = np.stack([dataset[int(i)][0].numpy() for i in index]).astype(np.uint8)
    return images, labels[index]


def model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 1, S, S] -> float32 [N, 3, S, S]: the training preprocessing, on the CPU."""
    with torch.no_grad():
        return preprocess_batch(torch.from_numpy(images), "cpu", non_blocking=False).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
