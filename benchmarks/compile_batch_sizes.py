"""torch.compile across the benchmark's batch sizes: one compiled module timed at every size
in turn, as AG-DS-TRTTEST-001 does, with dynamo's recompile count, so a silent fallback to
eager (dynamo's recompile limit) shows as a number instead of a slow row.

    TORCH_LOGS=recompiles python benchmarks/compile_batch_sizes.py --out compile-sizes.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.inference.perf.backends import TorchBackend  # noqa: E402
from handlers.inference.perf.harness import TimingSettings, run_benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch
    import torchvision
    from torch._dynamo.utils import counters
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    model = torchvision.models.resnet50(num_classes=2).eval()
    backends = [TorchBackend(model, "cuda", "fp16-channels-last"), TorchBackend(model, "cuda", "compile")]
    x = np.random.default_rng(0).standard_normal((max(args.sizes), 3, args.image_size, args.image_size),
                                                 dtype=np.float32)
    result = run_benchmark(backends, args.sizes, lambda n: x[:n], TimingSettings(duration_s=args.duration))
    rows = [{"backend": m.backend, "batch": m.batch, "h2d": m.h2d, "img_s": round(m.throughput, 1),
             "first_call_ms": m.first_call_ms} for m in result.measurements]
    for row in rows:
        print(row)
    stats = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "frames")}
    print("dynamo counters:", stats)
    report = {"rows": rows, "dynamo_counters": stats, "failures": result.failures, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
