"""The DALI step's run (handlers/preprocessing/input_pipeline.py): images, checks, speeds,
training throughput, and the files and metrics that hold them."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from atlas.handler import Context, Result
from handlers.ml.data import ImageFileDataset, prepare_data
from handlers.ml.device import cpu_count, place
from handlers.ml.errors import DataError
from handlers.ml.layout import IMAGENET_STD
from handlers.ml.synthetic import ensure_synthetic, synthetic_tag
from handlers.preprocessing import loader_speed
from handlers.preprocessing.dali_checks import check_eval_against_torchvision, run_shard_check
from handlers.preprocessing.dali_loader import DaliBatches, dali_threads
from handlers.preprocessing.dali_spec import PipelineSpec
from handlers.preprocessing.figures import dali_figures


def _images(ctx: Context, params) -> tuple[list[Path], list[int], str, bool]:
    """(paths, labels, description, synthetic?) of the images every check and timing uses."""
    data = ctx.project["data"]
    classes = [str(c) for c in data.get("classes") or []]
    use_project = params.images == "project" or (params.images == "auto" and data.get("root") is not None
                                                 and not str(data["root"]).endswith(".npz"))
    if use_project:
        prepared = prepare_data(data, ctx.project_root, ctx.project_root / ".atlas" / "cache", log=ctx.log,
                                progress=ctx.progress, workers=cpu_count())
        train = prepared.datasets["train"]
        if not hasattr(train, "paths"):
            raise DataError("images: project, but the project's data is an .npz file, not image files",
                            "set images: synthetic-jpeg (DALI's gain is decoding files)")
        return list(train.paths), list(train.labels), f"the project's training split ({prepared.source})", \
            prepared.synthetic
    per_class = max(1, params.synthetic_images // len(classes))
    root = ensure_synthetic(ctx.project_root / ".atlas" / "cache", classes, {"train": per_class},
                            int(data["image_size"]), seed=0, source_size=params.synthetic_size,
                            image_format="jpeg", progress=ctx.progress, workers=cpu_count())
    paths, labels = [], []
    for k, name in enumerate(classes):
        found = sorted((root / "train" / name).glob("*.jpg"))
        paths += found
        labels += [k] * len(found)
    return paths, labels, (f"{len(paths)} synthetic {params.synthetic_size}x{params.synthetic_size} grayscale JPEGs "
                           f"(quality 90, built-in generator): {root}"), True


def run_dali_step(ctx: Context) -> Result:
    params = ctx.params
    size = int(ctx.project["data"]["image_size"])
    hflip = float(ctx.project["data"].get("hflip", 0.5))
    paths, labels, described, synthetic = _images(ctx, params)
    if len(paths) < params.batch_size * (params.warmup_batches + 2):
        raise DataError(f"{len(paths)} images are too few for batches of {params.batch_size}",
                        "lower batch_size, or raise synthetic_images")
    cores = cpu_count()
    ctx.log.info("images: %s; %d CPU cores", described, cores)
    spec = PipelineSpec(image_size=size, batch_size=params.batch_size, train=True, hflip=hflip, dtype=params.dtype,
                        channels_last=True, decoder=params.decoder, device_id=0, num_threads=dali_threads(1))
    result: dict = {"images": described, "count": len(paths), "image_size": size, "batch_size": params.batch_size,
                    "cpu_cores": cores, "gpu": torch.cuda.get_device_name(0), "dtype": params.dtype,
                    "decoder": params.decoder}
    findings: list[str] = []

    # --- correctness
    checked = min(params.check_images, len(paths))
    ctx.log.info("comparing the evaluation pipeline with torchvision on %d images", checked)
    eval_spec = replace(spec, train=False, batch_size=min(params.batch_size, checked), channels_last=False)
    compare = check_eval_against_torchvision(paths[:checked], labels[:checked], eval_spec)
    result["check"] = compare
    diff = compare["dali_vs_torchvision"]
    std = min(IMAGENET_STD)
    within = (diff["max_abs"] <= params.max_gray_levels / 255 / std
              and diff["mean_abs"] <= params.mean_gray_levels / 255 / std and compare["labels_identical"])
    ctx.metric("dali_vs_torchvision_max_abs", diff["max_abs"])
    ctx.metric("dali_vs_torchvision_mean_abs", diff["mean_abs"])
    ctx.log.info("sharding check: %d readers over %d images, 2 epochs", params.shards, len(paths))
    shards = run_shard_check(paths, replace(spec, channels_last=False), params.shards)
    result["shards"] = shards
    if not within or not shards["ok"]:
        problems = [] if within else [
            f"evaluation output differs from torchvision's by up to {diff['gray_levels_max']:.1f} grey levels "
            f"(mean {diff['mean_abs'] * 255 * std:.2f}; allowed {params.max_gray_levels:g} / {params.mean_gray_levels:g})"
            + ("" if compare["labels_identical"] else "; labels differ from the file list")]
        ctx.write_json("dali.json", result)
        return Result.failed("DALI pipeline check failed: " + "; ".join(problems + shards["problems"]),
                             "dali.json has the figures; the step's params set the tolerances")

    # --- loader speed
    placement = place("cuda", "bf16", True, workers=cores)      # DataLoader: as many workers as cores
    dataset = ImageFileDataset(list(zip(paths, labels)), size, train=True, seed=0, hflip=hflip)
    w, n = params.warmup_batches, params.timed_batches
    speeds = {}
    with ctx.progress(4, "loader speed") as bar:
        speeds["dali_decode"] = loader_speed.dali_decode_rate(paths, labels, spec, w, n)
        bar.advance()
        speeds["dataloader_decode"] = loader_speed.dataloader_decode_rate(paths, params.batch_size, placement, w, n)
        bar.advance()
        speeds["dali_pipeline"] = loader_speed.dali_pipeline_rate(dataset, spec, w, n)
        bar.advance()
        speeds["dataloader_pipeline"] = loader_speed.dataloader_pipeline_rate(dataset, params.batch_size, placement, w, n)
        bar.advance()
    result["speed"] = speeds
    for name, r in speeds.items():
        ctx.metric(f"{name}_images_per_s", r["images_per_s"], "img/s")
    pipe_x = speeds["dali_pipeline"]["images_per_s"] / speeds["dataloader_pipeline"]["images_per_s"]
    decode_x = speeds["dali_decode"]["images_per_s"] / speeds["dataloader_decode"]["images_per_s"]
    ctx.metric("dali_pipeline_speedup", pipe_x, "x")
    ctx.metric("dali_decode_speedup", decode_x, "x")

    # --- training throughput
    if params.measure_training:
        result["training"] = _training(ctx, params, placement, dataset, spec, findings)
    ctx.write_json("dali.json", result)
    for chart in dali_figures(speeds, result.get("training"), cores):
        ctx.figure(chart)
    ctx.write_text("report.md", report_markdown(result))
    message = (f"DALI ({params.decoder} decode) {speeds['dali_pipeline']['images_per_s']:,.0f} img/s vs DataLoader "
               f"({cores} workers) {speeds['dataloader_pipeline']['images_per_s']:,.0f} img/s for the training "
               f"pipeline ({pipe_x:.1f}x), decode only {decode_x:.1f}x; matches torchvision within "
               f"{diff['gray_levels_max']:.1f} grey levels; {params.shards} shards cover every image once")
    if "training" in result:
        t = result["training"]
        message += "; training fed by DALI at " + ", ".join(
            f"{r['fraction_of_resident']:.0%} of resident ({mode})" for mode, r in t["dali"].items())
    return Result.succeeded(message + synthetic_tag(synthetic), findings)


def _training(ctx, params, placement, dataset, spec, findings) -> dict:
    from handlers.ml.batches import TorchBatches
    from handlers.ml.throughput import epochs_of, resident_batches, timed_steps, training_step
    b, size = params.batch_size, spec.image_size
    dtype = torch.float16 if spec.dtype == "float16" else torch.float32
    modes = ["eager"] + (["compiled"] if params.compile else [])
    out = {"resident": {}, "dali": {}, "dataloader": {}, "model": "resnet50, full fine-tune, bf16 autocast, channels_last"}
    with ctx.progress(len(modes) * 2 + 1, "training throughput") as bar:
        for mode in modes:
            step, _ = training_step(placement, compile_model=mode == "compiled")
            out["resident"][mode] = timed_steps(step, resident_batches(b, size, placement, dtype=dtype),
                                                params.train_warmup, params.train_iterations, b, placement.device)
            bar.advance()
            dali = timed_steps(step, epochs_of(DaliBatches(dataset, spec)), params.train_warmup,
                               params.train_iterations, b, placement.device)
            dali["fraction_of_resident"] = dali["images_per_s"] / out["resident"][mode]["images_per_s"]
            out["dali"][mode] = dali
            bar.advance()
            ctx.metric(f"train_resident_{mode}_images_per_s", out["resident"][mode]["images_per_s"], "img/s")
            ctx.metric(f"train_dali_{mode}_images_per_s", dali["images_per_s"], "img/s")
            ctx.metric(f"train_dali_{mode}_fraction", 100 * dali["fraction_of_resident"], "%")
            if dali["fraction_of_resident"] < 0.9:
                findings.append(f"DALI-fed training ({mode}) reached {dali['fraction_of_resident']:.0%} of the "
                                f"GPU-resident figure (target 90%): the loader, not the model, limits it here")
            del step
            torch.cuda.empty_cache()
        step, _ = training_step(placement)
        out["dataloader"]["eager"] = timed_steps(step, epochs_of(TorchBatches(dataset, b, placement, train=True,
                                                                               drop_last=True)),
                                                 params.train_warmup, params.train_iterations, b, placement.device)
        ctx.metric("train_dataloader_eager_images_per_s", out["dataloader"]["eager"]["images_per_s"], "img/s")
        bar.advance()
    return out


def report_markdown(r: dict) -> str:
    s, c = r["speed"], r["check"]
    lines = ["# DALI input pipeline (AG-DS-DALI-001)", "",
             f"Images: {r['images']}. Batch {r['batch_size']}, output {r['image_size']} px {r['dtype']}, "
             f"{r['gpu']}, {r['cpu_cores']} CPU cores; DataLoader with {r['cpu_cores']} workers.", "",
             "## Speed (images/s, whole batches after warm-up)", "",
             "| | DALI | DataLoader | DALI / DataLoader |", "|---|---|---|---|"]
    for kind, label in (("decode", "decode only"), ("pipeline", "training pipeline to GPU tensors")):
        d, t = s[f"dali_{kind}"]["images_per_s"], s[f"dataloader_{kind}"]["images_per_s"]
        lines.append(f"| {label} | {d:,.0f} | {t:,.0f} | {d / t:.1f}x |")
    if "training" in r:
        t = r["training"]
        lines += ["", f"## Training ({t['model']})", "", "| mode | resident batches | DALI-fed | DALI / resident | DataLoader-fed |",
                  "|---|---|---|---|---|"]
        for mode, res in t["resident"].items():
            dl = t["dataloader"].get(mode, {}).get("images_per_s")
            lines.append(f"| {mode} | {res['images_per_s']:,.0f} | {t['dali'][mode]['images_per_s']:,.0f} | "
                         f"{t['dali'][mode]['fraction_of_resident']:.1%} | {f'{dl:,.0f}' if dl else '-'} |")
    d, p = c["dali_vs_torchvision"], c["dataloader_vs_torchvision"]
    lines += ["", f"## Correctness ({d['images']} images, evaluation path, after normalisation)", "",
              "| against torchvision | max abs | mean abs | p99 abs | max in grey levels |", "|---|---|---|---|---|",
              f"| DALI ({c['decoder']} decoder, {c['dtype']}) | {d['max_abs']:.4f} | {d['mean_abs']:.5f} | "
              f"{d['p99_abs']:.4f} | {d['gray_levels_max']:.1f} |",
              f"| project DataLoader (PIL, JPEG draft) | {p['max_abs']:.4f} | {p['mean_abs']:.5f} | {p['p99_abs']:.4f} | "
              f"{p['gray_levels_max']:.1f} |", "",
              f"Labels identical to the file list: {c['labels_identical']}. Sharding: {r['shards']['num_shards']} readers, "
              f"{r['shards']['epochs']} epochs, every image once per epoch in evaluation, "
              f"{r['shards']['train_images_per_shard']} training images per reader: "
              f"{'ok' if r['shards']['ok'] else '; '.join(r['shards']['problems'])}.", ""]
    return "\n".join(lines)
