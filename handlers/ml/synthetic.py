"""The built-in synthetic chest X-ray-like image set (numpy and Pillow only).

Used when `data.root` is null, so that the whole chain (training, export, engines,
benchmarks) runs without a download. The images are NOT radiographs: a dark background,
a body outline, two darker lung fields, a bright spine band, rib arcs, a heart shadow and
noise. Class 0 has clear lungs; every other class adds a pattern inside the lung fields
(see PATTERNS and ZONES), varied in count, position, size and strength so that a model
has to learn it. Each image also gets its own size, brightness, contrast and position.

With signal=False an image's content is drawn from a class chosen independently of the
folder it is written to, so the labels carry no information: a set a model can only
memorise (overfitting checks).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Bump when the images change, so cached sets are rebuilt (the version enters the hash).
GENERATOR_VERSION = 2
META_NAME = "SYNTHETIC.json"
SYNTHETIC_LABEL = "SYNTHETIC DATA"    # every result trained or scored on this set carries it


def synthetic_tag(synthetic: bool) -> str:
    """" [SYNTHETIC DATA]" for a step message about this set, else ""."""
    return f" [{SYNTHETIC_LABEL}]" if synthetic else ""
SIZE_RANGE = (0.9, 1.3)          # each side, times image_size: real data varies in size
PATTERNS = ("patchy opacities", "diffuse haze", "reticular texture")
ZONES = ("", "upper zones", "lower zones", "left lung", "right lung")


def describe_class(k: int) -> str:
    """What class k (0-based) looks like."""
    if k == 0:
        return "clear lungs"
    pattern, variant = PATTERNS[(k - 1) % len(PATTERNS)], (k - 1) // len(PATTERNS)
    zone, strength = ZONES[variant % len(ZONES)], 1 + variant // len(ZONES)
    text = pattern + (f" in the {zone}" if zone else " in one or both lungs")
    return text + (f", x{strength} strength" if strength > 1 else "")


FORMATS = {"png": ".png", "jpeg": ".jpg"}
JPEG_QUALITY = 90


def _params(classes, per_class, image_size, seed, signal, source_size=None, image_format="png") -> dict:
    if image_format not in FORMATS:
        raise ValueError(f"synthetic format {image_format!r}: use one of {', '.join(FORMATS)}")
    if source_size is not None and int(source_size) < 16:
        raise ValueError(f"synthetic size {source_size}: at least 16 pixels")
    params = {"classes": list(classes), "per_class": {s: int(n) for s, n in per_class.items()},
              "image_size": int(image_size), "seed": int(seed), "signal": bool(signal),
              "generator_version": GENERATOR_VERSION}
    if source_size is not None or image_format != "png":     # older sets keep their hash
        params.update(source_size=None if source_size is None else int(source_size), format=image_format)
    return params


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_params(meta: dict | None, params: dict) -> bool:
    return meta is not None and all(meta.get(k) == v for k, v in params.items())


def _ellipse(x, y, cx, cy, ax, ay, edge=0.15):
    """Soft-edged ellipse mask in [0, 1] (1-D terms first: the 2-D work is one add)."""
    r = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
    return np.clip((1.0 - r) * (1.0 / edge), 0.0, 1.0)


def render(rng: np.random.Generator, content: int, image_size: int, exact_size: int | None = None) -> np.ndarray:
    """One uint8 (H, W) image whose content shows class `content`: about image_size on each
    side (varied by SIZE_RANGE), or exactly exact_size x exact_size (large-image sets)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))   # Python floats keep the arrays float32
    h, w = (int(round(u(*SIZE_RANGE) * image_size)) for _ in range(2))
    if exact_size is not None:      # the draws above still happen: the content stays the same
        h = w = int(exact_size)
    # Normalised coordinates in [-1, 1] along each axis (anatomy stretches with the aspect).
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    cx, cy, s = u(-0.06, 0.06), u(-0.06, 0.06), u(0.92, 1.05)

    body = _ellipse(x, y, cx, cy + 0.08 * s, 0.9 * s, 1.15 * s, edge=0.08)
    lx, ly, lax, lay = 0.36 * s, cy - 0.08 * s, u(0.22, 0.27) * s, u(0.5, 0.6) * s
    left = _ellipse(x, y, cx - lx, ly, lax, lay)
    right = _ellipse(x, y, cx + lx, ly, lax, lay)
    lungs = np.maximum(left, right)
    img = 0.07 + 0.45 * body - 0.27 * lungs
    # Ribs: arcs curving down laterally, cos(a(y) - b(x)) expanded into 1-D cos/sin terms.
    period = u(0.14, 0.18) * s
    a = 2 * np.pi / period * ((y - cy) + u(0, period))
    b = 2 * np.pi / period * (0.45 * (x - cx) ** 2)
    ribs = 0.5 + 0.5 * (np.cos(a) * np.cos(b) + np.sin(a) * np.sin(b))
    ribs *= ribs
    img += (0.06 * body + 0.06 * lungs) * (ribs * ribs)
    img += 0.35 * body * np.exp(-((x - cx) / (0.075 * s)) ** 2)              # spine
    img += 0.12 * _ellipse(x, y, cx + 0.14 * s, cy + 0.3 * s, 0.28 * s, 0.22 * s, 0.4)  # heart
    # Low-frequency mottle, upsampled from a coarse grid (soft-tissue texture).
    coarse = rng.standard_normal((6, 6), dtype=np.float32)
    img += 0.035 * np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.BILINEAR))

    if content > 0:
        img += _pattern(rng, content, x, y, left, right, ly, lax, lay, cx, lx)

    contrast, brightness = u(0.8, 1.2), u(-0.08, 0.08)
    img = img * (contrast * 255) + ((0.4 * (1 - contrast) + brightness) * 255 + 0.5)
    img += (u(0.015, 0.04) * 255) * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _pattern(rng, k, x, y, left, right, ly, lax, lay, cx, lx) -> np.ndarray:
    """The additive abnormality of class k > 0, confined to the lung fields."""
    kind, variant = (k - 1) % len(PATTERNS), (k - 1) // len(PATTERNS)
    zone, strength = variant % len(ZONES), 1 + variant // len(ZONES)
    if zone == 3:
        mask = left
    elif zone == 4:
        mask = right
    elif kind == 0 and zone == 0:     # blobs: one lung or both, at random
        mask = (left, right, np.maximum(left, right))[rng.integers(3)]
    else:
        mask = np.maximum(left, right)
    if zone in (1, 2):                # upper or lower half of the lungs, soft boundary
        t = np.clip((y - ly) / (0.3 * lay) + 0.5, 0.0, 1.0)
        mask = mask * (1.0 - t if zone == 1 else t)

    u = lambda lo, hi: float(rng.uniform(lo, hi))
    if kind == 0:                     # patchy opacities: gaussian blobs inside the mask
        pat = np.zeros(mask.shape, np.float32)
        sides = [s for s, m in ((-1, left), (1, right)) if (mask * m).max() > 0.5]
        for _ in range(rng.integers(2, 6)):
            side = sides[rng.integers(len(sides))]
            ang, rad = u(0, 2 * math.pi), math.sqrt(u(0, 1)) * 0.75
            dy = rad * lay * math.sin(ang)
            if zone in (1, 2):        # keep the blob in its zone, not faded out by the mask
                dy = abs(dy) * (-1 if zone == 1 else 1)
            bx, by = cx + side * lx + rad * lax * math.cos(ang), ly + dy
            k2 = -0.5 / u(0.08, 0.16) ** 2
            # A 2-D gaussian is the outer product of two 1-D ones.
            pat += u(0.25, 0.45) * (np.exp(k2 * (y - by) ** 2) * np.exp(k2 * (x - bx) ** 2))
        np.minimum(pat, 0.6, out=pat)
    elif kind == 1:                   # diffuse haze, denser towards the bases
        grad = np.clip((y - ly) / lay * 0.5 + 0.5, 0.0, 1.0)
        pat = u(0.1, 0.2) * (0.6 + 0.4 * grad)
    else:                             # reticular: a fine net of lines
        f = u(12, 18) * np.pi
        net_x = np.abs(np.cos(f * x + u(0, 2 * np.pi))) ** 6
        net_y = np.abs(np.cos(f * y + u(0, 2 * np.pi))) ** 6
        pat = u(0.12, 0.2) * np.maximum(net_x, net_y)
    return (strength * mask * pat).astype(np.float32)


def _jobs(params: dict, tmp: Path) -> list[tuple]:
    classes, seed = params["classes"], params["seed"]
    suffix = FORMATS[params.get("format", "png")]
    jobs = []
    for split, n in params["per_class"].items():
        tag = zlib.crc32(split.encode())          # stable across runs (unlike hash())
        for k, name in enumerate(classes):
            (tmp / split / name).mkdir(parents=True)
            for i in range(n):
                jobs.append((str(tmp / split / name / f"{split}_{name.lower()}_{i:05d}{suffix}"),
                             (seed, tag, k, i), k, len(classes)))
    return jobs


def _write_one(job: tuple, params: dict) -> None:
    path, key, k, n_classes = job
    rng = np.random.default_rng(key)
    # The label-free set draws the content class from its own generator.
    content = k if params["signal"] else int(np.random.default_rng((*key, 1)).integers(n_classes))
    image = Image.fromarray(render(rng, content, params["image_size"], params.get("source_size")), "L")
    if path.endswith(".png"):
        image.save(path, compress_level=1)
    else:
        image.save(path, quality=JPEG_QUALITY)


def _write_chunk(args: tuple) -> int:
    jobs, params = args
    for job in jobs:
        _write_one(job, params)
    return len(jobs)


def _write_set(tmp: Path, params: dict, progress=None, workers: int = 1) -> None:
    jobs = _jobs(params, tmp)
    big = params.get("source_size") and params["source_size"] > 256
    with (progress(len(jobs), "generating synthetic images") if progress and big else _quiet()) as bar:
        if workers <= 1 or len(jobs) < 64 or not big:
            for job in jobs:
                _write_one(job, params)
            bar.advance(len(jobs))
            return
        import multiprocessing
        chunks = [(jobs[i:i + 32], params) for i in range(0, len(jobs), 32)]
        # spawn: the caller may hold torch's thread pools, which fork would copy half-locked
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for done in pool.imap_unordered(_write_chunk, chunks):
                bar.advance(done)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n=1, **fields):
        pass


def generate(root: Path, classes: list[str], per_class: dict[str, int], image_size: int,
             seed: int = 0, signal: bool = True, source_size: int | None = None, image_format: str = "png",
             progress=None, workers: int = 1) -> dict:
    """Write the set to root/{split}/{CLASS}/*.png (or .jpg) plus root/SYNTHETIC.json; returns
    the JSON. source_size makes every image exactly that size (e.g. 1024 x 1024 JPEGs, as
    large as real chest X-rays), else images vary around image_size.

    Built in a hidden sibling folder and renamed into place, so a reader never sees half a
    set; when another process wins the rename with the same parameters, its set is used.
    """
    root = Path(root)
    params = _params(classes, per_class, image_size, seed, signal, source_size, image_format)
    meta = _read_meta(root)
    if _same_params(meta, params):
        return meta
    if root.exists() and meta is None:
        raise FileExistsError(f"{root} exists and is not a synthetic set ({META_NAME} missing); "
                              "not overwriting it")
    meta = {**params, "synthetic": True,
            "description": "Synthetic X-ray-like images (not radiographs) from atlas's built-in "
                           "generator: body outline, darker lung fields, spine, ribs, noise."
                           + ("" if signal else " Content is drawn independently of the folder "
                              "label: a model can only memorise these labels."),
            "patterns": {name: describe_class(k) for k, name in enumerate(classes)},
            "counts": {split: {name: int(n) for name in classes} for split, n in per_class.items()}}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_set(tmp, params, progress, workers)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if root.exists():            # ours, from other parameters: move it aside first
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            theirs = _read_meta(root)
            if not _same_params(theirs, params):
                raise
            return theirs            # another process finished the same set first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def ensure_synthetic(cache_dir: Path, classes: list[str], per_class: dict[str, int],
                     image_size: int, seed: int = 0, signal: bool = True, source_size: int | None = None,
                     image_format: str = "png", progress=None, workers: int = 1) -> Path:
    """The cached set for these parameters under cache_dir, generated when missing."""
    params = _params(classes, per_class, image_size, seed, signal, source_size, image_format)
    root = Path(cache_dir) / f"synthetic-{params_hash(params)}"
    if not _same_params(_read_meta(root), params):
        generate(root, classes, per_class, image_size, seed, signal, source_size, image_format, progress, workers)
    return root
