"""What atlas's benchmark harness costs: ResNet-50 (2 classes) img/s through the harness
(TorchBackend + measure, resident input) against a bare CUDA-event loop over the same model,
mode and batch:

    start.record(); for _ in range(n): model(x); end.record(); end.synchronize()

The bare loop runs before and after the harness, so clock drift between them shows.

    python benchmarks/harness_overhead.py --mode fp16-channels-last --out benchmarks/results/harness-overhead.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_throughput import machine  # noqa: E402
from handlers.inference.perf.backends import TORCH_MODES, TorchBackend, to_native  # noqa: E402
from handlers.inference.perf.harness import TimingSettings, measure, prepare  # noqa: E402


def bare_event_loop(module, x, warmup: int, iters: int) -> float:
    """img/s of `iters` forwards between two CUDA events, after `warmup` forwards."""
    import torch
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            module(x)
        end.record()
        end.synchronize()
    return x.shape[0] * iters / (start.elapsed_time(end) / 1000.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cuda only: the comparison is of CUDA-event timing")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=100, help="timed iterations, the same for both")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations of the bare loop")
    parser.add_argument("--mode", default="fp16-channels-last", choices=sorted(TORCH_MODES))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch
    import torchvision
    if args.device != "cuda" or not torch.cuda.is_available():
        why = "--device cpu" if args.device != "cuda" else "no CUDA device visible to torch"
        print(f"harness_overhead: {why}; this compares CUDA-event timings and only runs on a GPU machine",
              file=sys.stderr)
        return 2

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=2)
    backend = TorchBackend(model, args.device, args.mode)
    prepare(backend)        # the one prepared (maybe compiled) module serves both loops
    batch = torch.randn(args.batch, 3, args.image_size, args.image_size).numpy()
    x = to_native(torch.from_numpy(batch).to(args.device), args.mode)   # the bare loop's input; the harness stages its own

    bare_before = bare_event_loop(backend.module, x, args.warmup, args.iters)
    settings = TimingSettings(warmup_s=0.0, min_warmup_iters=args.warmup, duration_s=0.0,
                              min_iters=args.iters, max_iters=args.iters)
    m = measure(backend, batch, settings, copy_input=False)
    bare_after = bare_event_loop(backend.module, x, args.warmup, args.iters)
    bare = (bare_before + bare_after) / 2

    report = {"model": "resnet50 (num_classes=2, random weights)", "mode": args.mode, "backend": backend.name,
              "batch": args.batch, "image_size": args.image_size, "iters": args.iters, "warmup": args.warmup,
              "bare_img_s_before": bare_before, "bare_img_s_after": bare_after, "bare_img_s": bare,
              "harness_img_s": m.throughput, "harness_over_bare": m.throughput / bare,
              "harness_latency_ms": m.latency_ms, "harness_timer": m.timer, "setup_s": backend.setup_s,
              "first_call_ms": m.first_call_ms, "machine": machine()}
    print(f"{report['machine']['gpu']}, torch {report['machine']['torch']} (CUDA {report['machine']['cuda']}); "
          f"resnet50 {args.mode}, batch {args.batch}, {args.image_size}px, {args.iters} iterations")
    print(f"bare CUDA-event loop: {bare_before:,.1f} img/s before, {bare_after:,.1f} after (mean {bare:,.1f})")
    print(f"atlas harness:        {m.throughput:,.1f} img/s ({m.timer}; p50 {m.latency_ms['p50']:.3f} ms, "
          f"p99 {m.latency_ms['p99']:.3f} ms)")
    print(f"harness / bare:       {report['harness_over_bare']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
