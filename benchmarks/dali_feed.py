"""What limits DALI-fed training on one GPU: the DALI training pipeline alone and ResNet-50
training fed by it (eager and torch.compile), beside the same model on batches resident on
the GPU, for several shares of JPEG decoding given to the GPU's hardware decoder (the rest
runs nvJPEG's CUDA/hybrid decoder on the SMs, which the training needs too). Same images,
batch, precision and layout as AG-DS-DALI-001.

    python benchmarks/dali_feed.py --out benchmarks/results/dali-feed-h200-<date>.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from handlers.ml.data import ImageFileDataset  # noqa: E402
from handlers.ml.device import cpu_count, place  # noqa: E402
from handlers.ml.synthetic import ensure_synthetic  # noqa: E402
from handlers.ml.throughput import epochs_of, resident_batches, timed_steps, training_step  # noqa: E402
from handlers.preprocessing.dali_loader import DaliBatches, dali_threads  # noqa: E402
from handlers.preprocessing.dali_spec import PipelineSpec  # noqa: E402
from handlers.preprocessing.loader_speed import dali_pipeline_rate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--loads", default="0.65,1.0")
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cache = Path(tempfile.gettempdir()) / "atlas-dali-feed"
    root = ensure_synthetic(cache, ["NORMAL", "PNEUMONIA"], {"train": args.images // 2}, args.size,
                            source_size=1024, image_format="jpeg", workers=cpu_count())
    samples = [(p, k) for k, name in enumerate(["NORMAL", "PNEUMONIA"])
               for p in sorted((root / "train" / name).glob("*.jpg"))]
    dataset = ImageFileDataset(samples, args.size, train=True, seed=0, hflip=0.5)
    placement = place("cuda", "bf16", True, workers=cpu_count())
    base = PipelineSpec(image_size=args.size, batch_size=args.batch, train=True, hflip=0.5, dtype="float16",
                        channels_last=True, decoder="mixed", device_id=0, num_threads=dali_threads(1))
    rows = []
    steps = {mode: training_step(placement, compile_model=mode == "compiled")[0] for mode in ("eager", "compiled")}
    resident = {mode: timed_steps(step, resident_batches(args.batch, args.size, placement, dtype=torch.float16),
                                  args.warmup, args.iters, args.batch, placement.device)
                for mode, step in steps.items()}
    for load in [float(x) for x in args.loads.split(",")]:
        spec = replace(base, hw_decoder_load=load)
        row = {"hw_decoder_load": load,
               "pipeline_alone": dali_pipeline_rate(dataset, spec, 5, args.iters)}
        for mode, step in steps.items():
            fed = timed_steps(step, epochs_of(DaliBatches(dataset, spec)), args.warmup, args.iters, args.batch,
                              placement.device)
            fed["fraction_of_resident"] = fed["images_per_s"] / resident[mode]["images_per_s"]
            row[mode] = fed
        rows.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else round(v.get("images_per_s", 0)))
                          for k, v in row.items()}), flush=True)
    result = {"benchmark": "DALI-fed ResNet-50 training vs GPU-resident batches, by hardware-decoder share",
              "machine": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                          "dali": __import__("nvidia.dali", fromlist=["x"]).__version__, "python": platform.python_version(),
                          "cpu_cores": cpu_count(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
              "command": " ".join(sys.argv), "images": len(samples), "batch": args.batch, "image_size": args.size,
              "resident": resident, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
