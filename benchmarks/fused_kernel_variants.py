"""The fused normalisation kernel (uint8 NHWC -> float32 NCHW) in several forms, each checked
against NumPy and timed beside a device-to-device copy of the output's size, in one run:
pixels per thread (4, 8, 16) and plain or streaming (__stcs, evict-first) stores.

    python benchmarks/fused_kernel_variants.py --out benchmarks/results/fused-kernel-h200-<date>.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.ml.layout import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from handlers.preprocessing import array_port, cupy_kernels  # noqa: E402
from handlers.preprocessing.cupy_run import cupy_backend, test_inputs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="the whole comparison again: the spread is the noise")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import cupy
    backend = cupy_backend()
    batch = test_inputs(64, 256, 224)["batch"]
    reference = ((batch.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32))
                 / np.asarray(IMAGENET_STD, np.float32)).transpose(0, 3, 1, 2)
    device = cupy.asarray(batch)
    out = cupy.empty(reference.shape, cupy.float32)
    moved = batch.nbytes + reference.nbytes
    src, dst = cupy.ones(reference.size, cupy.float32), cupy.empty(reference.size, cupy.float32)
    configs = [(g, s) for g in (1, 2, 4) for s in (False, True)]
    rounds = []
    for _ in range(args.rounds):
        copy_s = backend.timer(lambda: cupy.copyto(dst, src), (), args.repeat)
        row = {"copy_gbs": 2 * reference.nbytes / copy_s / 1e9}
        for groups, streaming in configs:
            out.fill(cupy.nan)
            cupy_kernels.vectorized(device, IMAGENET_MEAN, IMAGENET_STD, out, groups=groups, streaming=streaming)
            ok = array_port.compare(reference, cupy.asnumpy(out)).ok
            seconds = backend.timer(lambda g=groups, s=streaming: cupy_kernels.vectorized(
                device, IMAGENET_MEAN, IMAGENET_STD, out, groups=g, streaming=s), (), args.repeat)
            row[f"{4 * groups}px{'-stcs' if streaming else ''}"] = {"equal": ok, "gbs": moved / seconds / 1e9,
                                                                     "fraction_of_copy": moved / seconds / (2 * reference.nbytes / copy_s)}
        rounds.append(row)
        print(json.dumps({k: (round(v, 0) if isinstance(v, float) else round(v["fraction_of_copy"], 3))
                          for k, v in row.items()}), flush=True)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    result = {"benchmark": "fused uint8 NHWC -> float32 NCHW normalisation vs a device copy",
              "machine": {"gpu": props["name"].decode(), "cupy": cupy.__version__,
                          "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
              "command": " ".join(sys.argv), "batch": list(batch.shape), "bytes_moved": moved, "rounds": rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
