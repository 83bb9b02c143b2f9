"""Chest X-ray datasets: folder layout, MedMNIST .npz files, or the built-in synthetic set.

Every source ends as torch Datasets of uint8 [1, S, S] grayscale tensors; `preprocess_batch`
turns a batch into the network's input on the device, and is the one preprocessing of the
project (training, export parity checks and calibration all call it).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from handlers.ml.errors import DataError
from handlers.ml.imagecheck import check_one
from handlers.ml.layout import (CROP_ASPECT, CROP_AREA, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401
                                PROJECT_FILE, SPLITS)
from handlers.ml.synthetic import ensure_synthetic

MAX_LISTED = 20
# Training images are mirrored left-right with this probability unless data.hflip says
# otherwise (CheXNet's augmentation; set 0 where laterality matters to the labels).
DEFAULT_HFLIP = 0.5
_NO_PROGRESS = contextlib.nullcontext(SimpleNamespace(advance=lambda n=1, **fields: None))




# ---------------------------------------------------------------- folder layout

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _layout_hint(root: Path) -> str:
    """Point at a nested copy (the Kaggle zip unpacks to chest_xray/chest_xray/)."""
    nested = [d for d in root.iterdir() if d.is_dir() and (d / "train").is_dir()] if root.is_dir() else []
    return f"; did you mean data.root: {nested[0]}?" if nested else ""


def scan_folder(root: Path, classes: list[str], val_fraction: float,
                seed: int) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """Samples (path, class index) per split of root/{train,val,test}/{CLASS}/*, and notes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist",
                        f"set data.root in {PROJECT_FILE} to a folder with train/ val/ test/, "
                        "or null for the built-in synthetic set")
    notes: list[str] = []
    samples: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            if split == "val":
                continue
            raise DataError(f"{split_dir}/ is missing",
                            f"create {split_dir}/<CLASS>/ with images for each of {', '.join(classes)}"
                            + _layout_hint(root))
        found = {d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")}
        for extra in sorted(found - set(classes)):
            notes.append(f"ignored folder {split_dir / extra} (not in data.classes)")
        samples[split] = []
        for k, name in enumerate(classes):
            folder = split_dir / name
            fix = f"or fix data.classes in {PROJECT_FILE}"
            if not folder.is_dir():
                near = [f for f in found if f.lower() == name.lower()]
                seen = f" (found {near[0]!r}: names are case-sensitive)" if near else ""
                raise DataError(f"class folder {folder}/ is missing{seen}",
                                f"create {folder}/ with images, {fix}")
            paths = _images_in(folder)
            if not paths:
                raise DataError(f"class folder {folder}/ has no images "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})",
                                f"put images into {folder}/, {fix}")
            samples[split] += [(p, k) for p in paths]
    if "val" not in samples:
        if not 0 < val_fraction < 1:
            raise DataError(f"{root / 'val'}/ is missing and data.val_fraction is {val_fraction}",
                            f"create {root / 'val'}/<CLASS>/, or set data.val_fraction in "
                            f"{PROJECT_FILE} between 0 and 1 to carve it from train/")
        samples["train"], samples["val"] = _carve(samples["train"], classes, val_fraction, seed)
        notes.append(f"{root / 'val'}/ is missing: took a stratified {val_fraction:.0%} of train/ "
                     f"as validation ({len(samples['val'])} images, seed {seed})")
    return {s: samples[s] for s in SPLITS}, notes


def _carve(train, classes, fraction, seed):
    """Split off a stratified, deterministic validation part (at least one per class)."""
    labels = np.array([label for _, label in train])
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for k, name in enumerate(classes):
        idx = np.flatnonzero(labels == k)
        if len(idx) < 2:
            raise DataError(f"class {name} has {len(idx)} training image: too few to carve a "
                            "validation set from", "add a val/ folder or more training images")
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.update(rng.permutation(idx)[:n].tolist())
    return ([s for i, s in enumerate(train) if i not in val_idx],
            [s for i, s in enumerate(train) if i in val_idx])


# ---------------------------------------------------------------- decoding and checking

def check_images(samples: list[tuple[Path, int]], workers: int,
                 progress: Callable[[int, str], Any] | None = None,
                 ) -> tuple[list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Decode every image fully; (good samples, [(path, reason)] for the unreadable ones)."""
    paths = [p for p, _ in samples]
    step = 256                         # one progress event per chunk, not per image
    reasons: list[str | None] = []
    pool = None
    with (progress(len(paths), "checking images") if progress else _NO_PROGRESS) as bar:
        if workers <= 1 or len(paths) < 2:
            results = map(check_one, paths)
        else:
            # spawn, not fork: forking a process whose torch/ONNX Runtime thread pools are
            # running can deadlock the child on a lock held by a thread that was not copied.
            # The children import only imagecheck (PIL), so starting them is cheap.
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap(check_one, paths, chunksize=max(1, min(64, len(paths) // (4 * workers))))
        try:
            reported = 0
            for reason in results:
                reasons.append(reason)
                if len(reasons) - reported == step or len(reasons) == len(paths):
                    bar.advance(len(reasons) - reported)
                    reported = len(reasons)
        finally:
            if pool is not None:
                pool.terminate()
    good = [s for s, r in zip(samples, reasons) if r is None]
    bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    return good, bad


def _gray(im: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit and float images are scaled by their range, not clipped."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray((a + 0.5).astype(np.uint8), "L")
    return im if im.mode == "L" else im.convert("L")


def _crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[float, float, float, float]:
    area = rng.uniform(*CROP_AREA) * w * h
    aspect = float(np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]))))
    cw, ch = min(w, (area * aspect) ** 0.5), min(h, (area / aspect) ** 0.5)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return (float(x0), float(y0), float(x0 + cw), float(y0 + ch))


def _finish(im: Image.Image, size: int, rng: np.random.Generator | None, hflip: float = 0.0) -> np.ndarray:
    """uint8 (S, S). Training (rng given): a random crop resized to S x S, mirrored with
    probability `hflip`. Evaluation: the shorter side resized to S, then the centre S x S
    (torchvision's Resize(S) + CenterCrop(S); the DALI pipeline does the same)."""
    im = _gray(im)
    if rng is not None:
        box = _crop_box(rng, im.width, im.height)
        flip = hflip > 0 and rng.random() < hflip
        out = im.resize((size, size), Image.BILINEAR, box=box)
        return np.array(out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out, dtype=np.uint8)
    w, h = im.size
    if (w, h) != (size, size):
        # torchvision's rule for the resized size, and its rounding of the crop offset
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    return np.array(im, dtype=np.uint8)


def _decode(path: Path, size: int, rng: np.random.Generator | None, hflip: float = 0.0) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("L", (size, size))    # JPEG: decode at a reduced scale, still >= size
        return _finish(im, size, rng, hflip)


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Eval-mode decode, exactly as the datasets do with train=False: uint8 (S, S)."""
    return _decode(Path(path), image_size, None)


class _Augmented(torch.utils.data.Dataset):
    """Shared epoch/seed bookkeeping: the crop of (seed, epoch, index) is the same in any worker.

    The epoch lives in shared memory, so set_epoch reaches DataLoader workers that were started
    earlier (persistent_workers=True) as long as it is called before iterating the loader."""

    def __init__(self, labels, image_size: int, train: bool, seed: int, hflip: float = 0.0) -> None:
        self.labels = [int(v) for v in labels]
        self.image_size, self.train, self.seed = int(image_size), bool(train), int(seed)
        self.hflip = float(hflip)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def as_eval(self) -> "_Augmented":
        """The same images with evaluation preprocessing (no crop, no flip)."""
        view = copy.copy(self)
        view.train = False
        return view

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.labels)

    def _rng(self, index: int) -> np.random.Generator | None:
        return np.random.default_rng((self.seed, int(self._epoch), index)) if self.train else None

    def _tensor(self, array: np.ndarray, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(array)[None], self.labels[index]


class ImageFileDataset(_Augmented):
    """Image files -> (uint8 [1, S, S], label)."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int, train: bool, seed: int = 0,
                 hflip: float = 0.0) -> None:
        super().__init__([label for _, label in samples], image_size, train, seed, hflip)
        self.paths = [Path(p) for p, _ in samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._tensor(_decode(self.paths[index], self.image_size, self._rng(index), self.hflip), index)


class ArrayDataset(_Augmented):
    """In-memory uint8 (N, H, W) images -> (uint8 [1, S, S], label)."""

    def __init__(self, images: np.ndarray, labels, image_size: int, train: bool, seed: int = 0,
                 hflip: float = 0.0) -> None:
        super().__init__(labels, image_size, train, seed, hflip)
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(self.labels):
            raise ValueError(f"need uint8 (N, H, W) images matching {len(self.labels)} labels, "
                             f"got {images.dtype} {images.shape}")
        self.images = images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        im = Image.fromarray(self.images[index], "L")
        return self._tensor(_finish(im, self.image_size, self._rng(index), self.hflip), index)


@functools.lru_cache(maxsize=None)
def _norm_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them each batch would be a host-to-device copy per batch.
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return mean, 1.0 / std


def preprocess_batch(x: torch.Tensor, device, channels_last: bool = False,
                     non_blocking: bool = True) -> torch.Tensor:
    """uint8 [B, 1, S, S] -> float [B, 3, S, S] on device: /255, gray to 3 channels, ImageNet norm."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a uint8 [B, 1, S, S] batch, got {x.dtype} {tuple(x.shape)}")
    x = x.to(device, non_blocking=non_blocking)
    mean, inv_std = _norm_constants(x.device)
    # Broadcasting [B,1,S,S] against [1,3,1,1] replicates the gray channel in the same op.
    out = (x.float() - mean) * inv_std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


# ---------------------------------------------------------------- prepare_data

@dataclass
class PreparedData:
    classes: list[str]
    positive: int
    datasets: dict[str, torch.utils.data.Dataset]
    source: str
    synthetic: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    root: Path | None = None

    def counts(self) -> dict[str, list[int]]:
        """Images per class, per split."""
        return {split: np.bincount(np.asarray(ds.labels, dtype=np.int64),
                                   minlength=len(self.classes)).tolist()
                for split, ds in self.datasets.items()}


def _subset(items: list, labels, n_classes: int, per_class: int | None, seed: int) -> list:
    """At most per_class items of each class, chosen by seed, kept in their original order."""
    if per_class is None:
        return items
    labels, rng = np.asarray(labels), np.random.default_rng((seed, 1))
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(n_classes)])
    return [items[i] for i in sorted(keep.tolist())]


def _read_config(data: dict) -> tuple[list[str], int, int]:
    classes = [str(c) for c in (data.get("classes") or [])]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(classes):
        raise DataError(f"data.classes must list at least two distinct names, got {classes}",
                        f"e.g. classes: [NORMAL, PNEUMONIA] in {PROJECT_FILE}")
    positive = data.get("positive_class")
    if positive is not None and positive not in classes:
        raise DataError(f"data.positive_class {positive!r} is not one of {classes}",
                        f"fix data.positive_class in {PROJECT_FILE}, or null for the last class")
    size = int(data.get("image_size") or 224)
    if size < 16:
        raise DataError(f"data.image_size is {size}; it must be at least 16", f"fix it in {PROJECT_FILE}")
    return classes, classes.index(positive) if positive is not None else len(classes) - 1, size


def _hflip(data: dict) -> float:
    value = data.get("hflip", DEFAULT_HFLIP)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise DataError(f"data.hflip is {value!r}; it must be a probability between 0 and 1",
                        f"fix data.hflip in {PROJECT_FILE} (0 turns mirroring off)")
    return float(value)


def prepare_data(data: dict, project_root: Path, cache_dir: Path, *, log, progress=None,
                 workers: int = 0, subset_per_class: int | None = None, seed: int = 0,
                 synthetic_signal: bool = True, known_bad: list[tuple[str, str]] | None = None) -> PreparedData:
    """Datasets for train/val/test from the project's `data` settings (see tasks/project.yaml).

    subset_per_class caps train and val (never test) per class, for prototyping. known_bad
    is another process's check result (DDP ranks after rank 0): those images are dropped
    without decoding every image again."""
    classes, positive, size = _read_config(data)
    hflip = _hflip(data)
    n = len(classes)
    if subset_per_class is not None and subset_per_class < 1:
        raise DataError(f"subset_per_class is {subset_per_class}; it must be at least 1 (or null for all)")
    skipped: list[tuple[str, str]] = []
    if data.get("root") is None:
        syn = data.get("synthetic") or {}
        per_class = {s: int(syn.get(s, d)) for s, d in zip(SPLITS, (120, 30, 30))}
        syn_seed = int(syn.get("seed", 0))
        root = ensure_synthetic(Path(cache_dir), classes, per_class, size, syn_seed, synthetic_signal,
                                source_size=syn.get("size"), image_format=str(syn.get("format", "png")),
                                progress=progress, workers=workers)
        kind = "synthetic X-ray-like set" + ("" if synthetic_signal else " with labels independent of content")
        source = f"{kind} (built-in generator, seed {syn_seed}): {root}"
    else:
        root = Path(str(data["root"])).expanduser()
        root = root if root.is_absolute() else Path(project_root) / root
        if not root.exists():
            raise DataError(f"data.root {root} does not exist",
                            f"set data.root in {PROJECT_FILE} to a chest X-ray folder (train/ val/ "
                            "test/, one folder per class) or a MedMNIST .npz file, or null for the "
                            "built-in synthetic set")
        source = f"{'MedMNIST file' if root.is_file() else 'image folder'} {root}"
    cap = lambda split, items, labels: items if split == "test" else _subset(  # noqa: E731
        items, labels, n, subset_per_class, seed)

    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise DataError(f"data.root {root} is a file but not a .npz",
                            f"point data.root in {PROJECT_FILE} at a folder or a MedMNIST .npz file")
        from handlers.ml.npz import load_npz
        arrays, notes = load_npz(root, classes)
        datasets = {}
        for split, (images, labels) in arrays.items():
            idx = cap(split, list(range(len(labels))), labels)
            datasets[split] = ArrayDataset(images[idx], labels[idx], size, split == "train", seed, hflip)
    else:
        samples, notes = scan_folder(root, classes, float(data.get("val_fraction", 0.1)), seed)
        samples = {s: cap(s, items, [k for _, k in items]) for s, items in samples.items()}
        if data.get("root") is not None:        # the synthetic set is ours: no need to check it
            skipped = _drop_bad(samples, float(data.get("max_bad_fraction", 0.01)), workers, progress, log,
                                known_bad)
        datasets = {s: ImageFileDataset(samples[s], size, s == "train", seed, hflip) for s in SPLITS}
    if subset_per_class is not None:
        notes.append(f"prototyping subset: at most {subset_per_class} images per class in train "
                     "and val (test in full)")
    for note in notes:
        log.info("%s", note)
    return PreparedData(classes, positive, datasets, source, data.get("root") is None, skipped, notes, root)


def _drop_bad(samples, max_bad_fraction, workers, progress, log, known_bad=None) -> list[tuple[str, str]]:
    """Check every image (samples edited in place); fail a split whose unreadable share
    exceeds max_bad_fraction, else skip and name the bad ones."""
    if known_bad is None:
        _, known_bad = check_images([s for split in SPLITS for s in samples[split]], workers, progress)
    reasons = {str(p): r for p, r in known_bad}
    skipped: list[tuple[str, str]] = []
    for split in SPLITS:
        split_bad = [(p, reasons[str(p)]) for p, _ in samples[split] if str(p) in reasons]
        total = len(samples[split])
        if total and len(split_bad) / total > max_bad_fraction:
            listed = "\n".join(f"  {p}: {r}" for p, r in split_bad[:MAX_LISTED])
            more = f"\n  ... and {len(split_bad) - MAX_LISTED} more" if len(split_bad) > MAX_LISTED else ""
            raise DataError(f"{len(split_bad)} of {total} images in {split} are unreadable "
                            f"(more than data.max_bad_fraction = {max_bad_fraction:g}):\n{listed}{more}",
                            "replace or delete these files, or raise data.max_bad_fraction in "
                            f"{PROJECT_FILE}")
        for p, r in split_bad:
            log.warning("skipping unreadable image %s: %s", p, r)
            skipped.append((str(p), r))
        samples[split] = [s for s in samples[split] if str(s[0]) not in reasons]
    return skipped
