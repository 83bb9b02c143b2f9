"""Datasets: folder scanning and its errors, image checks, MedMNIST files, decoding,
augmentation, preprocessing and prepare_data."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import handlers.ml.data as data_module  # noqa: E402
from handlers.ml.npz import CHESTMNIST_FINDINGS, load_npz  # noqa: E402
from handlers.ml.data import (IMAGENET_MEAN, IMAGENET_STD, ArrayDataset,
                              DataError, ImageFileDataset, check_images, load_image,
                              prepare_data, preprocess_batch, scan_folder)

CLASSES = ["NORMAL", "PNEUMONIA"]
LOG = logging.getLogger("test.ml.data")


def _png_bytes(seed: int, size=(40, 36)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, size=size[::-1], dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG")
    return buf.getvalue()


def make_folder(root: Path, per_class=None, splits=("train", "val", "test"), classes=CLASSES) -> Path:
    per_class = per_class or {"train": 6, "val": 3, "test": 3}
    for split in splits:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class[split]):
                (folder / f"img{i:03d}.png").write_bytes(_png_bytes(1000 * k + i))
    return root


def _data(root, **kw) -> dict:
    return {"root": None if root is None else str(root), "classes": CLASSES, "positive_class": None,
            "image_size": 32, "val_fraction": 0.25, "max_bad_fraction": 0.01,
            "synthetic": {"train": 8, "val": 3, "test": 3, "seed": 0}, **kw}


class Progress:
    def __init__(self):
        self.calls, self.done = [], 0

    def __call__(self, total, description):
        self.calls.append((total, description))
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def advance(self, n=1, **fields):
        self.done += n


# ---------------------------------------------------------------- scan_folder

def test_scan_folder_layout(tmp_path):
    root = make_folder(tmp_path / "xr")
    (root / "train" / "NORMAL" / ".hidden.png").write_bytes(b"x")
    (root / "train" / "NORMAL" / "notes.txt").write_text("x")
    (root / "train" / "NORMAL" / "UPPER.JPEG").write_bytes(b"x")
    (root / "train" / "COVID").mkdir()
    samples, notes = scan_folder(root, CLASSES, 0.2, 0)
    assert set(samples) == {"train", "val", "test"}
    train = samples["train"]
    assert [p.name for p, k in train if k == 0] == ["UPPER.JPEG"] + [f"img{i:03d}.png" for i in range(6)]
    assert [k for _, k in train] == [0] * 7 + [1] * 6
    assert len(samples["val"]) == len(samples["test"]) == 6
    assert notes == [f"ignored folder {root / 'train' / 'COVID'} (not in data.classes)"]


def test_scan_folder_missing_root(tmp_path):
    with pytest.raises(DataError) as e:
        scan_folder(tmp_path / "nope", CLASSES, 0.1, 0)
    assert str(tmp_path / "nope") in e.value.message
    assert "data.root" in e.value.hint and "null" in e.value.hint


def test_scan_folder_missing_train_points_at_nested_copy(tmp_path):
    make_folder(tmp_path / "xr" / "chest_xray")
    with pytest.raises(DataError) as e:
        scan_folder(tmp_path / "xr", CLASSES, 0.1, 0)
    assert e.value.message == f"{tmp_path / 'xr' / 'train'}/ is missing"
    assert f"did you mean data.root: {tmp_path / 'xr' / 'chest_xray'}" in e.value.hint


def test_scan_folder_missing_test_split(tmp_path):
    root = make_folder(tmp_path / "xr", splits=("train", "val"))
    with pytest.raises(DataError, match="test/ is missing"):
        scan_folder(root, CLASSES, 0.1, 0)


def test_scan_folder_missing_class_folder(tmp_path):
    root = make_folder(tmp_path / "xr", classes=["NORMAL", "pneumonia"])
    with pytest.raises(DataError) as e:
        scan_folder(root, CLASSES, 0.1, 0)
    path = root / "train" / "PNEUMONIA"
    assert e.value.message == f"class folder {path}/ is missing (found 'pneumonia': names are case-sensitive)"
    assert e.value.hint == f"create {path}/ with images, or fix data.classes in tasks/project.yaml"


def test_scan_folder_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "xr")
    folder = root / "test" / "NORMAL"
    for p in folder.iterdir():
        p.unlink()
    (folder / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        scan_folder(root, CLASSES, 0.1, 0)
    assert e.value.message.startswith(f"class folder {folder}/ has no images (.bmp, .jpeg")
    assert e.value.hint == f"put images into {folder}/, or fix data.classes in tasks/project.yaml"


def test_val_carved_from_train_stratified_and_deterministic(tmp_path):
    root = make_folder(tmp_path / "xr", {"train": 10, "test": 2}, splits=("train", "test"))
    samples, notes = scan_folder(root, CLASSES, 0.2, seed=3)
    again, _ = scan_folder(root, CLASSES, 0.2, seed=3)
    other, _ = scan_folder(root, CLASSES, 0.2, seed=4)
    assert samples == again and samples["val"] != other["val"]
    assert sorted(k for _, k in samples["val"]) == [0, 0, 1, 1]
    assert len(samples["train"]) == 16
    assert not {p for p, _ in samples["train"]} & {p for p, _ in samples["val"]}
    assert "val/ is missing: took a stratified 20% of train/" in notes[0]
    with pytest.raises(DataError, match="data.val_fraction is 0"):
        scan_folder(root, CLASSES, 0.0, 0)


# ---------------------------------------------------------------- check_images

def _corrupt(folder: Path) -> tuple[Path, Path, Path]:
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    png = _png_bytes(7, (200, 200))
    truncated = folder / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(buf, "JPEG")
    jpeg = folder / "truncated.jpg"
    jpeg.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return garbage, truncated, jpeg


@pytest.mark.parametrize("workers", [0, 2])
def test_check_images_reports_corrupt_files(tmp_path, workers):
    good = [(tmp_path / f"ok{i}.png", i % 2) for i in range(5)]
    for i, (p, _) in enumerate(good):
        p.write_bytes(_png_bytes(i))
    bad_paths = _corrupt(tmp_path)
    samples = good[:2] + [(p, 1) for p in bad_paths] + good[2:]
    progress = Progress()
    ok, bad = check_images(samples, workers, progress)
    assert ok == good
    assert [p for p, _ in bad] == list(bad_paths)
    assert "UnidentifiedImageError" in bad[0][1]
    assert "truncated" in bad[1][1].lower() or "error" in bad[1][1].lower()
    assert "truncated" in bad[2][1].lower()
    assert progress.calls == [(8, "checking images")] and progress.done == 8


def test_prepare_data_fails_above_bad_threshold(tmp_path):
    root = make_folder(tmp_path / "xr")
    bad = _corrupt(root / "train" / "PNEUMONIA")
    with pytest.raises(DataError) as e:
        prepare_data(_data(root), tmp_path, tmp_path / "cache", log=LOG)
    assert e.value.message.startswith("3 of 15 images in train are unreadable")
    for p in bad:
        assert str(p) in e.value.message
    assert "max_bad_fraction" in e.value.hint


def test_prepare_data_skips_bad_below_threshold(tmp_path, caplog):
    root = make_folder(tmp_path / "xr")
    bad = _corrupt(root / "train" / "PNEUMONIA")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        prepared = prepare_data(_data(root, max_bad_fraction=0.25), tmp_path, tmp_path / "cache",
                                log=LOG, workers=2)
    assert sorted(s for s, _ in prepared.skipped) == sorted(str(p) for p in bad)
    assert prepared.counts() == {"train": [6, 6], "val": [3, 3], "test": [3, 3]}
    for p in bad:
        assert str(p) in caplog.text
    assert prepared.source == f"image folder {root}" and not prepared.synthetic



def test_prepare_data_with_known_bad_drops_them_without_decoding_again(tmp_path, monkeypatch):
    """DDP ranks after rank 0 take its check result: same list, no second decode."""
    root = make_folder(tmp_path / "xr")
    bad = _corrupt(root / "train" / "PNEUMONIA")
    first = prepare_data(_data(root, max_bad_fraction=0.25), tmp_path, tmp_path / "cache", log=LOG)

    def no_decoding(*args, **kwargs):
        raise AssertionError("check_images ran again")
    monkeypatch.setattr(data_module, "check_images", no_decoding)
    again = prepare_data(_data(root, max_bad_fraction=0.25), tmp_path, tmp_path / "cache", log=LOG,
                         known_bad=first.skipped)
    assert again.skipped == first.skipped and len(again.skipped) == len(bad)
    assert again.counts() == first.counts()
    assert again.datasets["train"].paths == first.datasets["train"].paths

# ---------------------------------------------------------------- MedMNIST .npz

def _npz(path: Path, labels: dict[str, np.ndarray], shape=(28, 28), drop=()) -> Path:
    arrays = {}
    for split, y in labels.items():
        arrays[f"{split}_images"] = np.random.default_rng(0).integers(0, 256, (len(y), *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = y
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def test_npz_single_label(tmp_path):
    y = np.array([[0], [1], [1], [0]], np.uint8)
    path = _npz(tmp_path / "pneumoniamnist.npz", {"train": y, "val": y[:2], "test": y[:3]}, shape=(28, 28, 3))
    splits, notes = load_npz(path, CLASSES)
    images, labels = splits["train"]
    assert images.shape == (4, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 1, 0] and notes == []
    assert len(splits["val"][0]) == 2 and len(splits["test"][1]) == 3


def test_npz_rgb_to_gray_matches_pil(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    y = np.zeros((1, 1), np.uint8)
    np.savez(tmp_path / "c.npz", **{f"{s}_{k}": v for s in ("train", "val", "test")
                                    for k, v in (("images", rgb), ("labels", y))})
    gray = load_npz(tmp_path / "c.npz", CLASSES)[0]["train"][0][0]
    pil = np.asarray(Image.fromarray(rgb[0], "RGB").convert("L"))
    assert np.abs(gray.astype(int) - pil).max() <= 1


def test_npz_label_out_of_range(tmp_path):
    y = np.array([[0], [2]], np.uint8)
    path = _npz(tmp_path / "p.npz", {"train": y, "val": y, "test": y})
    with pytest.raises(DataError, match="holds label 2 but data.classes has 2 names"):
        load_npz(path, CLASSES)


def test_npz_missing_keys(tmp_path):
    y = np.zeros((2, 1), np.uint8)
    path = _npz(tmp_path / "p.npz", {"train": y, "val": y, "test": y}, drop=("val_images", "test_labels"))
    with pytest.raises(DataError) as e:
        load_npz(path, CLASSES)
    assert "lacks val_images, test_labels" in e.value.message
    assert "found: test_images, train_images, train_labels, val_labels" in e.value.message


def _row(*findings: str) -> list[int]:
    return [int(f in findings) for f in CHESTMNIST_FINDINGS]


def test_npz_multi_label_mapping(tmp_path):
    rows = np.array([_row(), _row("effusion"), _row("effusion", "mass"), _row("effusion", "pneumonia"),
                     _row("mass"), _row("pneumonia"), _row()], np.uint8)
    path = _npz(tmp_path / "chestmnist.npz", {"train": rows, "val": rows, "test": rows})
    splits, notes = load_npz(path, ["NORMAL", "Effusion", "PNEUMONIA"])
    images, labels = splits["train"]
    assert labels.tolist() == [0, 1, 1, 2, 0]
    assert len(images) == 5
    assert notes[0] == ("train: dropped 2 of 7 images of chestmnist.npz that have findings but none "
                        "or several of Effusion, PNEUMONIA")


def test_npz_multi_label_unknown_class(tmp_path):
    rows = np.array([_row(), _row("mass")], np.uint8)
    path = _npz(tmp_path / "chestmnist.npz", {"train": rows, "val": rows, "test": rows})
    with pytest.raises(DataError) as e:
        load_npz(path, ["NORMAL", "COVID"])
    assert e.value.message == "class 'COVID' is not a ChestMNIST finding"
    assert "atelectasis, cardiomegaly" in e.value.hint and "hernia" in e.value.hint


def test_prepare_data_npz_with_subset(tmp_path):
    y = np.array([[0], [1]] * 10, np.uint8)
    _npz(tmp_path / "p.npz", {"train": y, "val": y, "test": y})
    prepared = prepare_data(_data("p.npz"), tmp_path, tmp_path / "cache", log=LOG, subset_per_class=3)
    assert prepared.counts() == {"train": [3, 3], "val": [3, 3], "test": [10, 10]}
    x, label = prepared.datasets["test"][1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8 and label == 1
    assert prepared.source == f"MedMNIST file {tmp_path / 'p.npz'}"


# ---------------------------------------------------------------- datasets and decoding

def test_image_dataset_shapes_and_eval_matches_load_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    (tmp_path / "b.png").write_bytes(_png_bytes(3))
    samples = [(tmp_path / "a.jpg", 1), (tmp_path / "b.png", 0)]
    ds = ImageFileDataset(samples, 32, train=False)
    assert ds.labels == [1, 0] and len(ds) == 2
    for i, (path, label) in enumerate(samples):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (1, 32, 32) and y == label
        assert np.array_equal(x[0].numpy(), load_image(path, 32))


def test_train_augmentation_is_deterministic_per_epoch_and_index(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes(4, (64, 64)))
    samples = [(tmp_path / "a.png", 0)] * 2
    ds = ImageFileDataset(samples, 32, train=True, seed=1)
    twin = ImageFileDataset(samples, 32, train=True, seed=1)
    first, second = ds[0][0], ds[1][0]
    assert torch.equal(first, twin[0][0])           # same (seed, epoch, index)
    assert not torch.equal(first, second)           # same file, other index
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], first)
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], first)
    plain = ImageFileDataset(samples, 32, train=False)
    assert torch.equal(plain[0][0], plain[1][0])    # eval: no randomness


def test_array_dataset_matches_the_same_rule():
    images = np.random.default_rng(5).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    ds = ArrayDataset(images, [0, 1, 0], 32, train=True, seed=2)
    x, y = ds[1]
    assert x.shape == (1, 32, 32) and x.dtype == torch.uint8 and y == 1
    assert torch.equal(ds[1][0], x)
    ds.set_epoch(3)
    assert not torch.equal(ds[1][0], x)
    evald = ArrayDataset(images, [0, 1, 0], 28, train=False)
    assert np.array_equal(evald[2][0][0].numpy(), images[2])     # same size: untouched
    with pytest.raises(ValueError):
        ArrayDataset(images.astype(np.float32), [0, 1, 0], 32, train=False)


def test_preprocess_batch_values():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    x[1] = 255
    out = preprocess_batch(x, "cpu")
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 2, 3], (1 - mean) / std)
    assert preprocess_batch(x, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_batch(x.float(), "cpu")


# ---------------------------------------------------------------- prepare_data

def test_prepare_data_synthetic(tmp_path):
    prepared = prepare_data(_data(None, positive_class="NORMAL"), tmp_path, tmp_path / "cache", log=LOG)
    assert prepared.synthetic and prepared.positive == 0 and prepared.classes == CLASSES
    assert prepared.source.startswith("synthetic X-ray-like set (built-in generator, seed 0): ")
    assert prepared.root.parent == tmp_path / "cache"
    assert prepared.counts() == {"train": [8, 8], "val": [3, 3], "test": [3, 3]}
    assert prepared.datasets["train"].train and not prepared.datasets["val"].train
    nosignal = prepare_data(_data(None), tmp_path, tmp_path / "cache", log=LOG, synthetic_signal=False)
    assert nosignal.positive == 1 and nosignal.root != prepared.root
    assert "labels independent of content" in nosignal.source


def test_prepare_data_subset_per_class(tmp_path):
    make_folder(tmp_path / "xr")
    kw = dict(log=LOG, subset_per_class=2, seed=0)
    prepared = prepare_data(_data("xr"), tmp_path, tmp_path / "cache", **kw)   # relative root
    assert prepared.counts() == {"train": [2, 2], "val": [2, 2], "test": [3, 3]}
    again = prepare_data(_data("xr"), tmp_path, tmp_path / "cache", **kw)
    assert prepared.datasets["train"].paths == again.datasets["train"].paths
    assert any("prototyping subset" in n for n in prepared.notes)


def test_prepare_data_config_errors(tmp_path):
    with pytest.raises(DataError) as e:
        prepare_data(_data("missing"), tmp_path, tmp_path / "cache", log=LOG)
    assert e.value.message == f"data.root {tmp_path / 'missing'} does not exist"
    assert "set data.root in tasks/project.yaml" in e.value.hint and "null" in e.value.hint
    with pytest.raises(DataError, match="positive_class 'COVID'"):
        prepare_data(_data(None, positive_class="COVID"), tmp_path, tmp_path / "cache", log=LOG)
    with pytest.raises(DataError, match="at least two distinct"):
        prepare_data(_data(None, classes=["NORMAL"]), tmp_path, tmp_path / "cache", log=LOG)


def test_set_epoch_reaches_persistent_loader_workers():
    images = np.random.default_rng(6).integers(0, 256, (2, 40, 40), dtype=np.uint8)
    ds = ArrayDataset(images, [0, 1], 32, train=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True)
    first = next(iter(loader))[0]
    ds.set_epoch(1)
    second = next(iter(loader))[0]
    assert torch.equal(first[0], ArrayDataset(images, [0, 1], 32, True, 0)[0][0])
    assert torch.equal(second[1], ds[1][0]) and not torch.equal(first, second)
