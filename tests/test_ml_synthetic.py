"""The built-in synthetic X-ray-like set: layout, determinism, atomic caching, learnability."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.ml import synthetic
from handlers.ml.synthetic import describe_class, ensure_synthetic, generate

CLASSES = ["NORMAL", "PNEUMONIA"]
SIZE = 32


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lung_features(root: Path, split: str, classes=CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Per image: mean, spread and edge energy of the two lung-field boxes, after per-image
    standardisation (so random brightness/contrast cannot carry the class)."""
    xs, ys = [], []
    for k, name in enumerate(classes):
        for p in sorted((root / split / name).glob("*.png")):
            a = np.asarray(Image.open(p).resize((32, 32), Image.BILINEAR), np.float32)
            a = (a - a.mean()) / (a.std() + 1e-6)
            lungs = np.concatenate([a[9:21, 8:13].ravel(), a[9:21, 19:24].ravel()])
            edges = np.abs(np.diff(a[9:21], axis=1))[:, [8, 9, 10, 11, 19, 20, 21, 22]]
            xs.append([lungs.mean(), lungs.std(), edges.mean()])
            ys.append(k)
    return np.array(xs), np.array(ys)


def _nearest_centroid_accuracy(root: Path, classes=CLASSES) -> float:
    x, y = _lung_features(root, "train", classes)
    xt, yt = _lung_features(root, "test", classes)
    mu, sd = x.mean(0), x.std(0)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    centroids = np.stack([x[y == k].mean(0) for k in range(len(classes))])
    pred = ((xt[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == yt).mean())


def test_layout_and_metadata(tmp_path):
    root = tmp_path / "set"
    meta = generate(root, CLASSES, {"train": 4, "val": 2, "test": 3}, SIZE, seed=1)
    for split, n in {"train": 4, "val": 2, "test": 3}.items():
        for name in CLASSES:
            files = sorted((root / split / name).iterdir())
            assert [f.name for f in files] == [f"{split}_{name.lower()}_{i:05d}.png" for i in range(n)]
    on_disk = json.loads((root / "SYNTHETIC.json").read_text())
    assert on_disk == meta
    assert meta["synthetic"] is True and meta["seed"] == 1 and meta["image_size"] == SIZE
    assert meta["classes"] == CLASSES and meta["per_class"] == {"train": 4, "val": 2, "test": 3}
    assert "not radiographs" in meta["description"]
    assert meta["patterns"] == {"NORMAL": "clear lungs", "PNEUMONIA": "patchy opacities in one or both lungs"}
    assert not list(tmp_path.glob(".*")), "temporary build folder left behind"


def test_images_are_grayscale_and_vary_in_size(tmp_path):
    generate(tmp_path / "s", CLASSES, {"train": 20}, 100)
    sizes = set()
    for p in (tmp_path / "s").rglob("*.png"):
        with Image.open(p) as im:
            assert im.mode == "L"
            assert 90 <= im.width <= 130 and 90 <= im.height <= 130
            sizes.add(im.size)
    assert len(sizes) > 20


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    per_class = {"train": 3, "test": 2}
    generate(tmp_path / "a", CLASSES, per_class, SIZE, seed=5)
    generate(tmp_path / "b", CLASSES, per_class, SIZE, seed=5)
    generate(tmp_path / "c", CLASSES, per_class, SIZE, seed=6)
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_ensure_reuses_cache_and_separates_params(tmp_path):
    first = ensure_synthetic(tmp_path, CLASSES, {"train": 2}, SIZE, 0, True)
    stamp = (first / "train" / "NORMAL" / "train_normal_00000.png").stat().st_mtime_ns
    again = ensure_synthetic(tmp_path, CLASSES, {"train": 2}, SIZE, 0, True)
    assert again == first and first.name.startswith("synthetic-")
    assert (first / "train" / "NORMAL" / "train_normal_00000.png").stat().st_mtime_ns == stamp
    other = ensure_synthetic(tmp_path, CLASSES, {"train": 2}, SIZE, 0, False)
    other_meta = json.loads((other / "SYNTHETIC.json").read_text())
    assert other != first and other_meta["signal"] is False and "only memorise" in other_meta["description"]


def test_lost_rename_race_uses_the_winners_set(tmp_path, monkeypatch):
    root = tmp_path / "s"
    winner = generate(tmp_path / "w", CLASSES, {"train": 1}, SIZE)
    real_write = synthetic._write_set

    def write_then_lose(tmp, params, *rest):      # another process finishes first, mid-build
        real_write(tmp, params, *rest)
        if not root.exists():
            (tmp_path / "w").rename(root)

    monkeypatch.setattr(synthetic, "_write_set", write_then_lose)
    assert generate(root, CLASSES, {"train": 1}, SIZE) == winner
    assert not list(tmp_path.glob(".s.tmp-*"))


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a synthetic set"):
        generate(tmp_path / "mine", CLASSES, {"train": 1}, SIZE)
    assert (tmp_path / "mine" / "keep.txt").exists()


def test_signal_is_learnable(tmp_path):
    root = ensure_synthetic(tmp_path, CLASSES, {"train": 60, "test": 40}, SIZE, 0, True)
    x, y = _lung_features(root, "train")
    assert x[y == 1, 0].mean() - x[y == 0, 0].mean() > 0.1     # opacities brighten the lungs
    assert _nearest_centroid_accuracy(root) >= 0.75


def test_three_classes_are_learnable(tmp_path):
    classes = ["NORMAL", "PNEUMONIA", "EDEMA"]
    root = ensure_synthetic(tmp_path, classes, {"train": 40, "test": 30}, SIZE, 0, True)
    assert _nearest_centroid_accuracy(root, classes) >= 0.7     # chance is 0.33


def test_no_signal_is_chance(tmp_path):
    root = ensure_synthetic(tmp_path, CLASSES, {"train": 60, "test": 40}, SIZE, 0, False)
    x, y = _lung_features(root, "train")
    assert abs(x[y == 1, 0].mean() - x[y == 0, 0].mean()) < 0.04
    assert abs(_nearest_centroid_accuracy(root) - 0.5) <= 0.12


def test_class_patterns_generalise():
    assert describe_class(0) == "clear lungs"
    assert describe_class(3) == "reticular texture in one or both lungs"
    assert describe_class(4) == "patchy opacities in the upper zones"
    assert len({describe_class(k) for k in range(1, 30)}) == 29
