"""The INT8 calibration set and the evaluation arrays: class-balanced, decoded without the
training crop, normalised exactly like the model's inputs, saved as arrays."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from handlers.ml.arrays import load_eval_data, model_input, split_arrays  # noqa: E402
from handlers.ml.calibration import build_calibration, save_calibration  # noqa: E402
from handlers.ml.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from handlers.ml.errors import DataError  # noqa: E402

PROJECT = {"data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA",
                    "image_size": 64, "synthetic": {"train": 20, "val": 6, "test": 6, "seed": 0}}}
META = {"classes": ["NORMAL", "PNEUMONIA"], "image_size": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_eval_data(PROJECT, tmp_path_factory.mktemp("proj"), META, logging.getLogger("t"))


def test_eval_data_uses_the_checkpoint_size_and_checks_classes(data, tmp_path):
    images, labels = split_arrays(data, "test")
    assert images.shape == (12, 1, 32, 32) and images.dtype == np.uint8
    with pytest.raises(DataError, match="trained on classes"):
        load_eval_data(PROJECT, tmp_path, {**META, "classes": ["A", "B"]}, logging.getLogger("t"))


def test_limited_sample_is_class_balanced_and_has_no_training_crop(data):
    images, labels = split_arrays(data, "train", limit=10)
    assert np.bincount(labels).tolist() == [5, 5]
    again, _ = split_arrays(data, "train", limit=10)
    assert np.array_equal(images, again)      # no random crop: the same pixels every time


def test_calibration_is_the_model_input_and_saved_as_arrays(data, tmp_path):
    x, labels = build_calibration(data, 8)
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    raw, _ = split_arrays(data, "train", limit=8)
    pixel = raw[0, 0, 3, 4] / 255.0
    for c in range(3):
        assert x[0, c, 3, 4] == pytest.approx((pixel - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)
    assert np.array_equal(x, model_input(raw))
    info = save_calibration(tmp_path / "cal", x, labels, data.classes, data.source)
    assert np.array_equal(np.load(tmp_path / "cal" / "images.npy"), x)
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text())["per_class"] == info["per_class"] == [4, 4]
