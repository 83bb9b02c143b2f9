"""DDP scaling of ResNet-50 training through the DISTRIBUTED step's own launcher and worker:
torchrun at 1 process and at N (one per GPU), same per-process batch (weak scaling), the
synthetic X-ray PNG set through the real DataLoader. Efficiency = N-process img/s / (N x 1).

    python benchmarks/ddp_scaling.py --nproc 1 2 4 --out benchmarks/results/ddp-scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import machine  # noqa: E402
from handlers.training.torchrun import torchrun_command  # noqa: E402


def run(nproc: int, feed: str, args, work: Path) -> dict:
    project = {"data": {"root": None, "classes": ["NORMAL", "PNEUMONIA"], "positive_class": None,
                        "image_size": args.size, "val_fraction": 0.1, "max_bad_fraction": 0.01,
                        "synthetic": {"train": args.images_per_class, "val": 1, "test": 1, "seed": 0}},
               "model": {"arch": "resnet50", "weights": "none", "freeze_until": args.freeze}}
    config = {"mode": "throughput", "params": {"device": args.device, "amp": args.amp, "channels_last": "auto",
                                               "workers": args.workers},
              "project": project, "project_root": str(work), "backend": "auto", "sync_bn": False,
              "events": str(work / f"events-{nproc}.jsonl"), "result": str(work / f"result-{feed}-{nproc}.json"),
              "checkpoint": str(work / "unused.pt"), "per_process_batch": args.batch,
              "steps": args.steps, "warmup_steps": args.warmup, "feed": feed}
    path = work / f"config-{feed}-{nproc}.json"
    path.write_text(json.dumps(config))
    cmd = torchrun_command(nproc, 1, 0, "", f"bench-{nproc}", 60, str(path))
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep
                                                   + os.environ.get("PYTHONPATH", "")})
    return json.loads(Path(config["result"]).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--feed", nargs="+", default=["cached", "loader"], choices=["cached", "loader"])
    ap.add_argument("--batch", type=int, default=256, help="per process")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script out")
    ap.add_argument("--freeze", default=None, help="freeze_until (default: full fine-tune)")
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--images-per-class", type=int, default=3000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atlas-ddp-bench-"))
    results = []
    for feed in args.feed:
        runs = [run(n, feed, args, work) for n in args.nproc]
        base = next((r["images_per_s"] for r in runs if r["processes"] == 1), None)
        for r in runs:
            if base:
                r["scaling_efficiency"] = r["images_per_s"] / (r["processes"] * base)
            print(json.dumps(r), flush=True)
        results += runs
    out = {"benchmark": "ResNet-50 DDP training scaling (torchrun, NCCL; batches cached on the GPU, and the real DataLoader)", "machine": machine(),
           "settings": vars(args), "reference": "NVIDIA published ResNet-50 8x A100 scaling: 84%",
           "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
