"""MedMNIST .npz files (PneumoniaMNIST, ChestMNIST) as uint8 image arrays and class labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from handlers.ml.errors import DataError
from handlers.ml.layout import PROJECT_FILE, SPLITS

CHESTMNIST_FINDINGS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass",
                       "nodule", "pneumonia", "pneumothorax", "consolidation", "edema",
                       "emphysema", "fibrosis", "pleural", "hernia")


def _to_gray(images: np.ndarray, key: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{key} has dtype {images.dtype}; MedMNIST images are uint8")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    elif images.ndim == 4 and images.shape[-1] == 3:   # ITU-R 601 luma, as PIL's convert("L")
        images = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5
        images = np.clip(images, 0, 255).astype(np.uint8)
    if images.ndim != 3:
        raise DataError(f"{key} has shape {images.shape}; expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)")
    return images


def load_npz(path: Path, classes: list[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """(images uint8 (N,H,W), labels int64 (N,)) per split from a PneumoniaMNIST/ChestMNIST file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}", "is it a MedMNIST .npz file?") from e
    with archive:
        keys = set(archive.files)
        wanted = [f"{s}_{part}" for s in SPLITS for part in ("images", "labels")]
        missing = [k for k in wanted if k not in keys]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)} (found: {', '.join(sorted(keys)) or 'nothing'})",
                            "use a MedMNIST file such as pneumoniamnist.npz or chestmnist.npz")
        raw = {s: (_to_gray(archive[f"{s}_images"], f"{s}_images"), archive[f"{s}_labels"]) for s in SPLITS}
    notes: list[str] = []
    out = {}
    columns = None
    for split, (images, labels) in raw.items():
        labels = labels.reshape(len(labels), -1).astype(np.int64)
        if len(labels) != len(images):
            raise DataError(f"{path}: {split}_labels has {len(labels)} rows, {split}_images {len(images)}")
        if labels.shape[1] == 1:
            y = labels[:, 0]
            bad = y[(y < 0) | (y >= len(classes))]
            if len(bad):
                raise DataError(f"{path}: {split}_labels holds label {int(bad[0])} but data.classes has "
                                f"{len(classes)} names ({', '.join(classes)})",
                                f"list one class per label value in data.classes in {PROJECT_FILE}")
            out[split] = (images, y)
            continue
        if columns is None:
            columns = _finding_columns(path, labels.shape[1], classes)
        keep, y = _multi_label(labels, columns)
        if (~keep).any():
            notes.append(f"{split}: dropped {int((~keep).sum())} of {len(keep)} images of {path.name} "
                         f"that have findings but none or several of {', '.join(classes[1:])}")
        out[split] = (images[keep], y[keep])
    return out, notes


def _finding_columns(path: Path, n_columns: int, classes: list[str]) -> list[int]:
    if n_columns != len(CHESTMNIST_FINDINGS):
        raise DataError(f"{path}: labels have {n_columns} columns; multi-label files must be "
                        f"ChestMNIST's {len(CHESTMNIST_FINDINGS)}")
    columns = []
    for name in classes[1:]:
        if name.lower() not in CHESTMNIST_FINDINGS:
            raise DataError(f"class {name!r} is not a ChestMNIST finding",
                            f"in data.classes ({PROJECT_FILE}) the first class means 'no finding'; "
                            f"name the others from: {', '.join(CHESTMNIST_FINDINGS)}")
        columns.append(CHESTMNIST_FINDINGS.index(name.lower()))
    return columns


def _multi_label(labels: np.ndarray, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 = no finding at all; class j = finding j and no other selected finding."""
    selected = labels[:, columns] > 0
    normal = labels.sum(axis=1) == 0
    single = selected.sum(axis=1) == 1
    y = np.where(normal, 0, selected.argmax(axis=1) + 1)
    return normal | single, y.astype(np.int64)
