"""The INT8 calibration set: N training images, decoded and normalised exactly as the model's
inputs are at inference, saved as arrays so any quantizer (ONNX Runtime, ModelOpt, a
TensorRT calibrator) reads the same data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from handlers.ml.arrays import model_input, split_arrays
from handlers.ml.data import PreparedData

PREPROCESSING = ("decode to grayscale, resize to S x S (no training crop), /255, replicate to 3 channels, "
                 "(x - ImageNet mean) / ImageNet std; float32 NCHW")


def build_calibration(data: PreparedData, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, 3, S, S] and labels, class-stratified from the training split."""
    images, labels = split_arrays(data, "train", limit=n, seed=seed)
    return model_input(images), labels


def save_calibration(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                     source: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    info = {"images": int(len(images)), "shape": list(images.shape), "dtype": str(images.dtype),
            "split": "train", "per_class": np.bincount(labels, minlength=len(classes)).tolist(),
            "classes": classes, "preprocessing": PREPROCESSING, "source": source,
            "files": {"images": "images.npy", "labels": "labels.npy"}}
    (folder / "calibration.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
