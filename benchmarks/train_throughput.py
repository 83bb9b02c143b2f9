"""ResNet-50 training throughput (images/s) through atlas's own training step.

Two feeds: "tensors" (uint8 batches already on the GPU: the model alone) and "loader" (the
synthetic X-ray PNG set through the same DataLoader + preprocessing the SCRIPTGPU step
uses). Full fine-tuning (nothing frozen) is what NVIDIA's published figures measure; the
project's default (frozen up to layer3) is measured as well.

    python benchmarks/train_throughput.py --out benchmarks/results/train-throughput.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.ml.data import ImageFileDataset, scan_folder  # noqa: E402
from handlers.ml.device import place  # noqa: E402
from handlers.ml.synthetic import ensure_synthetic  # noqa: E402
from handlers.ml.batches import TorchBatches  # noqa: E402
from handlers.ml.throughput import epochs_of, resident_batches, timed_steps, training_step  # noqa: E402

CLASSES = ["NORMAL", "PNEUMONIA"]


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "host": platform.node(), "cpu_count": torch.get_num_threads(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm=f"{p.major}.{p.minor}")
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    ap.add_argument("--images-per-class", type=int, default=1500)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures GPU training", file=sys.stderr)
        return 2
    placement = place("cuda", args.amp, True, args.workers)
    runs = []
    variants = [("full fine-tune", None, False), ("frozen to layer3 (project default)", "layer3", False)]
    if args.compile:
        variants.insert(1, ("full fine-tune, torch.compile", None, True))
    for label, freeze, comp in variants:
        step, trainable = training_step(placement, freeze=freeze, compile_model=comp)
        r = timed_steps(step, resident_batches(args.batch, args.size, placement), args.warmup, args.iters,
                        args.batch, placement.device)
        runs.append({"feed": "tensors on GPU", "model": label, "trainable_params": trainable, **r})
        print(json.dumps(runs[-1]), flush=True)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="atlas-bench-"))
    started = time.perf_counter()
    root = ensure_synthetic(data_dir, CLASSES, {"train": args.images_per_class, "val": 1, "test": 1},
                            args.size, seed=0)
    generated = time.perf_counter() - started
    samples, _ = scan_folder(root, CLASSES, 0.1, 0)
    dataset = ImageFileDataset(samples["train"], args.size, train=True, seed=0)
    source = TorchBatches(dataset, args.batch, placement, train=True, drop_last=True)
    for label, freeze, comp in variants:
        step, trainable = training_step(placement, freeze=freeze, compile_model=comp)
        r = timed_steps(step, epochs_of(source), args.warmup, args.iters, args.batch, placement.device)
        runs.append({"feed": f"DataLoader, {placement.workers} workers, PNG decode", "model": label,
                     "trainable_params": trainable, **r})
        print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "ResNet-50 training throughput", "machine": machine(),
              "settings": {"batch": args.batch, "image_size": args.size, "amp": args.amp, "channels_last": True,
                           "optimizer": "AdamW", "workers": placement.workers,
                           "dataset": f"{len(dataset)} synthetic PNGs ({generated:.0f} s to generate)"},
              "reference": "NVIDIA published ResNet-50 v1.5 training, A100 80GB, AMP: 2,470 img/s",
              "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
