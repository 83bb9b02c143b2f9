"""How `atlas validate` and `atlas plan` scale with the number of steps.

Generates projects of 100, 1,000 and 10,000 steps (realistic manifests: AG-BM-S00001-001
IDs, Turkish and English titles, wbs numbers, the real `manual` and `lib_test` handlers,
a layered DAG whose steps depend on 1-3 steps of earlier layers and take a declared
output of each as an input) in temporary folders, and measures for each size:

  validate   load_project(root), in-process                 (median of N repeats)
  plan       make_plan(project, store, probe, targets=[])    (empty state store)
  render     render.plan_json + json.dumps (what `plan --json` adds)
  cli        `atlas validate` and `atlas plan --json > /dev/null` as subprocesses,
             interpreter start and imports included

The same is measured for the real project (tasks/ next to this folder, in place, with
its own .atlas/ state store), plus the import-only time of the CLI and a bare
interpreter start, so readers can tell start-up cost from work. Nothing is asserted:
the numbers are written to benchmarks/results/plan_scale-<host>-<date>.json and printed.

    python benchmarks/plan_scale.py                  # 100, 1000, 10000
    python benchmarks/plan_scale.py --quick          # 100 and 1000
    python benchmarks/plan_scale.py --sizes 100,5000 --out /tmp/results
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)

REPO = Path(__file__).resolve().parent.parent
PROJECT_CACHE = Path(".atlas") / "cache" / "project.json"     # atlas.project_cache.CACHE_FILE
DEFAULT_SIZES = (100, 1000, 10000)
QUICK_SIZES = (100, 1000)
SEED = 20240601

# (title, title_en) pairs in the style of the seed workplan; a number is appended.
TITLES = [
    ("Eğitim verisinin GPU'ya aktarılması ve DataLoader ayarlarının doğrulanması",
     "Move the training data to the GPU and check the DataLoader settings"),
    ("cuDNN sürümünün PyTorch derlemesiyle uyumluluğunun kontrolü",
     "Check that the cuDNN version matches the PyTorch build"),
    ("Karma hassasiyetli (AMP) eğitimin doğruluk üzerindeki etkisinin ölçülmesi",
     "Measure the effect of mixed-precision (AMP) training on accuracy"),
    ("Literatürdeki göğüs röntgeni modellerinin karşılaştırmalı incelenmesi",
     "Compare chest X-ray models from the literature"),
    ("Çoklu GPU ortamında evrişim ve matris çarpımı performansının test edilmesi",
     "Test convolution and matrix-product performance on several GPUs"),
    ("Veri artırma adımlarının GPU üzerinde hızlandırılmasının değerlendirilmesi",
     "Evaluate accelerating the augmentation steps on the GPU"),
]
LIBRARIES = [["PyTorch"], ["PyTorch", "cuDNN"], ["TensorFlow-GPU", "PyTorch"], [], ["CuPy"], ["NVIDIA DALI"]]
OUTPUTS = {"lib_test": ("report.json", "nvidia-smi.txt"), "manual": ("checklist.md",)}


# -- project generation -------------------------------------------------------

def task_id(n: int) -> str:
    return f"AG-BM-S{n:05d}-001"


def q(text: str) -> str:
    """A YAML double-quoted scalar."""
    return json.dumps(text, ensure_ascii=False)


def layer_sizes(n: int) -> list[int]:
    """Layers about 1.5*sqrt(n) wide: 100 -> 7 layers, 1000 -> 22, 10000 -> 67."""
    width = max(4, int(1.5 * n ** 0.5))
    sizes = [width] * (n // width)
    if n % width:
        sizes.append(n % width)
    return sizes


def manifest_text(tid: str, layer: int, pos: int, handler: str, deps: list[tuple[str, str]],
                  rng: random.Random, evidence: str | None) -> str:
    title, title_en = TITLES[rng.randrange(len(TITLES))]
    number = int(tid[7:12])
    lines = [
        f"id: {tid}",
        f"title: {q(f'{title} ({number})')}",
        f"title_en: {q(f'{title_en} ({number})')}",
        f'wbs: "{layer + 1}.{pos // 100 + 1}.{pos // 10 % 10 + 1}.{pos % 10 + 1}"',
        "module: " + ("null                      # Yok (Test Scripti)" if handler == "lib_test"
                      else "docs/"),
        f"libraries: {json.dumps(LIBRARIES[number % len(LIBRARIES)], ensure_ascii=False)}",
        "license: Apache 2.0 (TF), BSD-style (PyTorch)" if handler == "lib_test" else "license: Yok (none)",
        "description: >-",
        f"  Otomatik üretilmiş kıyaslama adımı, katman {layer}. Generated benchmark step in layer",
        f"  {layer}; it depends on {len(deps)} step(s) of earlier layers.",
        f"handler: {handler}",
        f"depends_on: [{', '.join(dep for dep, _ in deps)}]",
    ]
    if deps:
        lines.append("inputs:")
        for i, (dep, output) in enumerate(deps):
            name = f"{output.split('.')[0].replace('-', '_')}_{i}"
            if rng.random() < 0.15:       # the long form, sometimes optional
                lines.append(f"  {name}: {{from: \"{dep}:{output}\", optional: true}}")
            else:
                lines.append(f"  {name}: {dep}:{output}")
    if handler == "lib_test":
        lines += [
            "requires: [torch]",
            "params:",
            f"  conv_size: {rng.choice((32, 64, 128))}",
            f"  matmul_size: {rng.choice((512, 1024, 2048))}",
            f"  check_tensorflow: {rng.choice(('true', 'false'))}",
            f"timeout: {rng.choice(('5m', '10m', '1h30m'))}",
            "retries: 1                        # a first CUDA context on a cold machine can time out",
        ]
    else:
        lines += [
            "params:",
            "  instructions: >-",
            f"    Review the results of the upstream steps of {tid} and record the decision.",
            "  checklist:",
            "    - Read the upstream reports",
            "    - Record the decision and its reason",
        ]
        if evidence:
            lines += ["  evidence:", f"    - {evidence}"]
    return "\n".join(lines) + "\n"


PROJECT_YAML = """\
# Generated by benchmarks/plan_scale.py: no hierarchy, so wbs numbers are not checked.
name: plan-scale-{n}
title: Ölçek kıyaslaması ({n} adım)
owner: atlas benchmarks
data:
  root: null
  classes: [NORMAL, PNEUMONIA]
  image_size: 224
model:
  arch: resnet50
  weights: imagenet
"""


def generate(root: Path, n: int, seed: int = SEED) -> dict:
    """Write tasks/project.yaml and n manifests under root; return the project's shape."""
    rng = random.Random(seed)
    tasks = root / "tasks"
    tasks.mkdir(parents=True)
    (root / "docs").mkdir()
    (tasks / "project.yaml").write_text(PROJECT_YAML.format(n=n), encoding="utf-8")
    layers: list[list[tuple[str, str]]] = []          # (id, handler) per layer
    number, edges, optional, evidence_files, size_bytes = 0, 0, 0, 0, 0
    handlers = {"lib_test": 0, "manual": 0}
    for layer, width in enumerate(layer_sizes(n)):
        current = []
        for pos in range(width):
            number += 1
            tid = task_id(number)
            handler = "lib_test" if rng.random() < 0.6 else "manual"
            deps: list[tuple[str, str]] = []
            if layers:
                # one dependency from the previous layer keeps the DAG layered; the others
                # come from any earlier layer
                picks = {layers[-1][rng.randrange(len(layers[-1]))]}
                for _ in range(rng.randint(1, 3) - 1):
                    earlier = layers[rng.randrange(len(layers))]
                    picks.add(earlier[rng.randrange(len(earlier))])
                for dep, dep_handler in sorted(picks):
                    outputs = OUTPUTS[dep_handler]
                    deps.append((dep, outputs[rng.randrange(len(outputs))]))
            evidence = None
            if handler == "manual" and rng.random() < 0.5:
                evidence = f"docs/{tid}.md"
                if rng.random() < 0.5:      # half of the evidence exists (hashed), half is missing
                    (root / evidence).write_text(f"# {tid}\n\nDecision recorded.\n", encoding="utf-8")
                    evidence_files += 1
            text = manifest_text(tid, layer, pos, handler, deps, rng, evidence)
            (tasks / f"{tid}.yaml").write_text(text, encoding="utf-8")
            size_bytes += len(text.encode())
            handlers[handler] += 1
            edges += len(deps)
            optional += text.count("optional: true")
            current.append((tid, handler))
        layers.append(current)
    return {"steps": number, "layers": len(layers), "edges": edges, "optional_inputs": optional,
            "handlers": handlers, "evidence_files": evidence_files, "manifest_bytes": size_bytes}


# -- measuring ----------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict, Any]:
    samples, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return summary(samples), result


def summary(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "n": len(samples), "samples_s": [round(s, 6) for s in samples]}


def atlas_command() -> list[str]:
    script = Path(sys.executable).parent / "atlas"
    return [str(script)] if script.exists() else [sys.executable, "-m", "atlas"]


def run_cli(args: list[str], cwd: Path, repeats: int) -> dict:
    samples, codes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples.append(time.perf_counter() - start)
        codes.append(done.returncode)
    result = summary(samples)
    result["exit_codes"] = codes
    if any(codes):
        result["stderr_tail"] = done.stderr[-2000:]
    return result


def measure_project(root: Path, repeats: int, cli_repeats: int, probe: Any) -> dict:
    """validate, plan and render in-process, then the CLI, for the project at root."""
    from atlas import render
    from atlas.errors import InvalidManifests
    from atlas.loader import load_project
    from atlas.facts import make_plan, open_store

    out: dict[str, Any] = {}
    try:
        out["validate"], project = timed(lambda: load_project(root), repeats)
    except InvalidManifests as exc:
        out["error"] = f"invalid manifests: {[str(p) for p in exc.problems[:5]]}"
        return out
    store = open_store(project)
    try:
        out["store_step_runs"] = store.db.execute("SELECT COUNT(*) FROM step_runs").fetchone()[0]
        out["plan"], (graph, plan) = timed(lambda: make_plan(project, store, probe, targets=[]), repeats)
    finally:
        store.close()
    out["render_json"], _ = timed(lambda: json.dumps(render.plan_json(project, graph, plan), indent=2), repeats)
    out["loaded_steps"] = len(project.steps)
    out["plan_levels"] = len(plan.levels)
    out["plan_counts"] = {a: plan.count(a) for a in ("run", "up-to-date", "skip", "wait")}
    atlas = atlas_command()
    # the first CLI call parses everything and writes the project cache; the later ones read
    # it. The cache trusts a file only 2 s after its last change (atlas.project_cache
    # RACY_NS): wait for the generated manifests to settle, or every call would be a miss
    newest = max(p.stat().st_mtime for p in (root / "tasks").iterdir())
    time.sleep(max(0.0, newest + 2.1 - time.time()))
    (root / PROJECT_CACHE).unlink(missing_ok=True)
    out["cli_validate_first"] = run_cli([*atlas, "validate"], root, 1)
    out["cli_validate"] = run_cli([*atlas, "validate"], root, cli_repeats)
    out["cli_plan_json"] = run_cli([*atlas, "plan", "--json"], root, cli_repeats)
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


# -- machine ------------------------------------------------------------------

def version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def source_digest() -> str:
    """sha256 over atlas/ and handlers/ sources: tells whether the code changed during a run."""
    return machine.source_digest(("atlas", "handlers"))


def machine_info() -> dict:
    import yaml

    import atlas

    info = machine.machine()
    info.pop("memory_gib")
    return info | {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "pydantic": version("pydantic"),
        "pydantic_core": version("pydantic-core"),
        "networkx": version("networkx"),
        "pyyaml": version("PyYAML"),
        "libyaml_csafeloader": hasattr(yaml, "CSafeLoader"),
        "click": version("click"),
        "atlas": atlas.__version__,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "atlas_dist": version("atlas-runner"),
        "git": machine.git_revision(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# -- main -----------------------------------------------------------------------

def startup_costs(repeats: int = 5) -> dict:
    python = sys.executable
    return {
        "python_bare": run_cli([python, "-c", "pass"], REPO, repeats),
        "import_cli_loader_workflow": run_cli(
            [python, "-c", "import atlas.cli, atlas.loader, atlas.workflow"], REPO, repeats),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated step counts (default 100,1000,10000)")
    parser.add_argument("--quick", action="store_true", help="100 and 1000 steps only")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for the JSON result (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.sizes:
        args.sizes = machine.parse_sizes(parser, args.sizes)
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    return args


def fmt(entry: dict | None) -> str:
    if not entry or "median_s" not in entry:
        return "-"
    s = entry["median_s"]
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(results: dict) -> str:
    head = ("project", "steps", "validate", "plan", "render", "cli validate", "cli plan --json")
    rows = [head]
    for name, r in [("real tasks/", results["real_project"])] + [
            ("generated", r) for r in results["sizes"]]:
        if "error" in r:
            rows.append((name, "-", r["error"][:60], "", "", "", ""))
            continue
        rows.append((name, str(r.get("loaded_steps", "-")), fmt(r.get("validate")), fmt(r.get("plan")),
                     fmt(r.get("render_json")), fmt(r.get("cli_validate")), fmt(r.get("cli_plan_json"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    start = results["startup"]
    lines.append("")
    lines.append(f"start-up: bare python {fmt(start['python_bare'])}, "
                 f"import atlas.cli+loader+workflow {fmt(start['import_cli_loader_workflow'])}, "
                 f"capability probe (cold, in-process, every field) {fmt(results['probe'])}")
    lines.append("in-process columns are medians (5 repeats, 3 for 10,000 steps); CLI columns include "
                 "interpreter start, imports and the probe")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))          # atlas from this checkout when not installed
    from atlas.probe import probe

    results: dict[str, Any] = {"benchmark": "plan_scale", "machine": machine_info(), "seed": SEED,
                               "source_digest": source_digest(), "loadavg_start": os.getloadavg()}
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cpus_usable']} cpu(s), "
          f"python {results['machine']['python']}", file=sys.stderr)
    results["startup"] = startup_costs()
    # the probe finds each field when first read (atlas.probe.MachineProbe): timed here
    # with every field read, as a run (which records them all) or `atlas env` reads them
    start = time.perf_counter()
    the_probe = probe()
    the_probe.as_dict()
    results["probe"] = summary([time.perf_counter() - start])
    results["probe"]["capabilities"] = sorted(the_probe.capabilities())

    real_root = REPO
    print(f"real project: {real_root}/tasks", file=sys.stderr)
    results["real_project"] = {"root": str(real_root),
                               "manifests": len([p for p in (real_root / "tasks").glob("*.y*ml")
                                                 if p.name != "project.yaml"]),
                               **measure_project(real_root, 5, 3, the_probe)}

    results["sizes"] = []
    for n in args.sizes:
        repeats = 3 if n >= 10000 else 5
        cli_repeats = 1 if n >= 10000 else 3
        with tempfile.TemporaryDirectory(prefix=f"atlas-plan-scale-{n}-") as tmp:
            root = Path(tmp)
            print(f"{n} steps: generating in {root}", file=sys.stderr)
            t0 = time.perf_counter()
            shape = generate(root, n)
            gen_s = time.perf_counter() - t0
            print(f"{n} steps: measuring ({repeats} in-process, {cli_repeats} CLI repeat(s))", file=sys.stderr)
            entry = {"size": n, "repeats": repeats, "cli_repeats": cli_repeats, "shape": shape,
                     "generate_s": round(gen_s, 3), **measure_project(root, repeats, cli_repeats, the_probe)}
        results["sizes"].append(entry)

    end_digest = source_digest()
    results["source_changed_during_run"] = end_digest != results["source_digest"]
    results["loadavg_end"] = os.getloadavg()      # 1, 5, 15 min: other work on the machine skews timings
    if results["source_changed_during_run"]:
        print("warning: atlas/ or handlers/ changed while the benchmark ran; the numbers mix two "
              "versions of the code", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "cpu"
    path = args.out / f"plan_scale-{host}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
