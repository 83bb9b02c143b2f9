"""The license inventory: for each library a manifest names, the installed distribution,
its version and the license its package metadata declares (read without importing it)."""
from __future__ import annotations

import importlib.metadata as md

from atlas.probe import PACKAGES, Probe

# a manifest's library name (lower case) -> the import name atlas.probe knows it by
IMPORT_NAMES = {"pytorch": "torch", "torch": "torch", "torchvision": "torchvision", "onnx": "onnx",
                "onnx runtime": "onnxruntime", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt",
                "tensorrt for rtx": "tensorrt_rtx", "nvidia dali": "nvidia.dali", "dali": "nvidia.dali",
                "cupy": "cupy", "numpy": "numpy", "tensorflow": "tensorflow", "tensorflow-gpu": "tensorflow",
                "pycuda": "pycuda", "matplotlib": "matplotlib"}
# parts of the CUDA stack that no Python package carries: their version comes from the probe
SYSTEM = {"nvidia drivers": ("driver", "NVIDIA driver"), "cuda": ("cuda_driver", "CUDA (driver's)"),
          "cudnn": ("cudnn", "cuDNN")}
_CLASSIFIER = "License :: "


def declared_license(dist: str) -> str | None:
    """SPDX expression when the metadata has one, else a short License field, else the
    trove classifier; None when the distribution is not installed."""
    try:
        meta = md.metadata(dist)
    except md.PackageNotFoundError:
        return None
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 80:
        return text
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith(_CLASSIFIER):
            return classifier.rsplit(" :: ", 1)[-1]
    return text.splitlines()[0][:80] if text else "not stated in its metadata"


def _installed(import_name: str) -> tuple[str | None, str | None]:
    for dist in PACKAGES.get(import_name, (import_name,)):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None, None


def inventory(libraries_by_task: dict[str, list[str]], declared_by_task: dict[str, str | None],
              environment: dict | None = None) -> list[dict]:
    """One row per library: which tasks name it, what the manifests say its license is,
    and what the installed package says."""
    rows: dict[str, dict] = {}
    for task, libraries in libraries_by_task.items():
        for library in libraries:
            row = rows.setdefault(library.lower(), {"library": library, "tasks": [], "manifest_license": set()})
            row["tasks"].append(task)
            if declared_by_task.get(task):
                row["manifest_license"].add(declared_by_task[task])
    env = environment or {}
    out = []
    for key, row in sorted(rows.items()):
        entry = {"library": row["library"], "tasks": sorted(row["tasks"]),
                 "manifest_license": "; ".join(sorted(row["manifest_license"])) or "-"}
        if key in SYSTEM:
            field, what = SYSTEM[key]
            entry.update(distribution=None, version=env.get(field), license=None,
                         source=f"{what}: a system component, not a Python package")
        elif key in IMPORT_NAMES:
            dist, version = _installed(IMPORT_NAMES[key])
            entry.update(distribution=dist, version=version, license=declared_license(dist) if dist else None,
                         source="installed package metadata" if dist else "not installed here")
        else:
            entry.update(distribution=None, version=None, license=None,
                         source="atlas does not know which package this is")
        out.append(entry)
    return out


def project_inventory(project, probe: Probe | None = None, environment: dict | None = None) -> list[dict]:
    steps = project.steps.values()
    return inventory({s.id: list(s.manifest.libraries) for s in steps},
                     {s.id: s.manifest.license for s in steps},
                     environment or (probe.as_dict() if probe else None))
