"""Is the DALI pipeline right? Three checks, each on real files:

- evaluation output against torchvision's transforms on the same images (the whole image
  decoded in grayscale, Resize(S) with antialiasing, CenterCrop(S), the model's mean/std):
  max and mean absolute difference after normalisation. They cannot be equal: the JPEG
  decoders (nvJPEG, or DALI's CPU decoder, against Pillow's libjpeg-turbo) round the inverse
  DCT differently, and the two resize filters weigh the same pixels differently at the
  borders; one grey level is 1/255/0.225 = 0.017 after normalisation.
- labels: DALI's labels, in file order, are the dataset's.
- shards: over one epoch, `num_shards` evaluation pipelines see every image exactly once,
  and training shards are disjoint and of equal length.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from handlers.preprocessing.dali_loader import DaliBatches
from handlers.preprocessing.dali_spec import PipelineSpec, full_batches


def torchvision_reference(path: Path, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 (3, S, S): the image decoded whole in grayscale (PIL), then torchvision's
    Resize(S) (antialiased bilinear), CenterCrop(S), and Normalize on three channels."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F
    with Image.open(path) as im:
        image = F.center_crop(F.resize(im.convert("L"), [size], antialias=True), [size, size])
    x = F.to_dtype(F.pil_to_tensor(image), scale=True).expand(3, -1, -1)     # uint8 -> float /255
    return F.normalize(x, list(mean), list(std)).numpy()


def project_reference(path: Path, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The DataLoader path's evaluation input (PIL, JPEG draft decoding), normalised alike."""
    from handlers.ml.data import load_image
    x = load_image(path, size).astype(np.float32) / 255
    return np.stack([(x - m) / s for m, s in zip(mean, std)])


@dataclass
class Difference:
    images: int
    max_abs: float
    mean_abs: float
    p99_abs: float
    gray_levels_max: float       # max_abs in 0-255 grey levels (through the smallest std)

    def as_dict(self) -> dict:
        return asdict(self)


def difference(a: np.ndarray, b: np.ndarray, std: Sequence[float]) -> Difference:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return Difference(len(a), float(d.max()), float(d.mean()), float(np.quantile(d, 0.99)),
                      float(d.max() * min(std) * 255))


def dali_eval_outputs(paths: Sequence[Path], labels: Sequence[int], spec: PipelineSpec) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the evaluation pipeline over `paths` (one shard): (N, 3, S, S), labels."""
    source = DaliBatches(_FileList(paths, labels, spec.image_size, spec.hflip), spec)
    xs, ys = [], []
    for x, y in source:
        x = x.float()
        if spec.channels_last:
            x = x.contiguous()
        xs.append(x.cpu().numpy())
        ys.append(y.cpu().numpy())
    return np.concatenate(xs), np.concatenate(ys)


class _FileList:
    """The part of ImageFileDataset DaliBatches reads."""

    def __init__(self, paths, labels, image_size: int, hflip: float) -> None:
        self.paths, self.labels = [Path(p) for p in paths], [int(v) for v in labels]
        self.image_size, self.hflip = image_size, hflip

    def __len__(self) -> int:
        return len(self.paths)


def check_eval_against_torchvision(paths: Sequence[Path], labels: Sequence[int], spec: PipelineSpec) -> dict:
    """DALI's evaluation output vs torchvision's, and the project's own path vs torchvision."""
    if spec.train or spec.num_shards != 1:
        raise ValueError("the comparison runs the evaluation pipeline on one shard")
    dali, dali_labels = dali_eval_outputs(paths, labels, spec)
    reference = np.stack([torchvision_reference(p, spec.image_size, spec.mean, spec.std) for p in paths])
    project = np.stack([project_reference(p, spec.image_size, spec.mean, spec.std) for p in paths])
    return {"dali_vs_torchvision": difference(dali, reference, spec.std).as_dict(),
            "dataloader_vs_torchvision": difference(project, reference, spec.std).as_dict(),
            "labels_identical": bool(np.array_equal(dali_labels, np.asarray(labels))),
            "dtype": spec.dtype, "decoder": spec.decoder}


def shard_report(seen_eval: list[list[np.ndarray]], seen_train: list[list[np.ndarray]], n: int,
                 num_shards: int, batch: int) -> dict:
    """Checks over what each shard yielded per epoch: seen_*[epoch][shard] = indices."""
    problems = []
    for epoch, shards in enumerate(seen_eval):
        allseen = np.concatenate(shards) if shards else np.array([], int)
        counts = np.bincount(allseen, minlength=n)
        if (counts != 1).any():
            problems.append(f"evaluation epoch {epoch}: {int((counts == 0).sum())} images missing, "
                            f"{int((counts > 1).sum())} seen more than once")
    want = full_batches(n, num_shards, batch) * batch
    for epoch, shards in enumerate(seen_train):
        sizes = [len(s) for s in shards]
        if any(size != want for size in sizes):
            problems.append(f"training epoch {epoch}: shard sizes {sizes}, expected {want} each (whole batches)")
        allseen = np.concatenate(shards) if shards else np.array([], int)
        if len(np.unique(allseen)) != len(allseen):
            problems.append(f"training epoch {epoch}: shards overlap or repeat images")
    return {"images": n, "num_shards": num_shards, "batch": batch, "epochs": len(seen_eval),
            "train_images_per_shard": want, "problems": problems, "ok": not problems}


def run_shard_check(paths: Sequence[Path], base: PipelineSpec, num_shards: int, epochs: int = 2) -> dict:
    """Builds num_shards evaluation and training pipelines (as DDP ranks would) and checks
    what they read over `epochs` epochs."""
    n = len(paths)
    evals = [DaliBatches(_FileList(paths, list(range(n)), base.image_size, base.hflip),
                         replace(base, train=False, shard_id=s, num_shards=num_shards)) for s in range(num_shards)]
    trains = [DaliBatches(_FileList(paths, list(range(n)), base.image_size, base.hflip),
                          replace(base, train=True, shard_id=s, num_shards=num_shards)) for s in range(num_shards)]
    seen_eval, seen_train = [], []
    for _ in range(epochs):
        seen_eval.append([np.concatenate([y.cpu().numpy() for _, y in src] or [np.array([], int)]) for src in evals])
        seen_train.append([np.concatenate([y.cpu().numpy() for _, y in src] or [np.array([], int)]) for src in trains])
    return shard_report(seen_eval, seen_train, n, num_shards, base.batch_size)
