"""The optimisation profile (min/opt/max input shapes) and the engine build settings for
TensorRT 10 and 11, as written to profile.yaml by AG-DS-TRTPROFILE-001.

Pure Python: nothing here imports tensorrt or torch, so the settings can be written and
checked on a machine without either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from atlas.atomic import write_atomically
from handlers.inference.trt.errors import TrtError

PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_MAJORS = ("10", "11")
PROFILE_STEP = "AG-DS-TRTPROFILE-001"
_RERUN = f"re-run {PROFILE_STEP}"
_SHAPE_FLAGS = {"min": "--minShapes", "opt": "--optShapes", "max": "--maxShapes"}
_ENTRY_KEYS = ("onnx", "builder_flags", "network_flags", "trtexec_args")

# The ONNX model TRTPROFILE writes for each precision, and TRTENGINE builds from.
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8_qdq.onnx"}


@dataclass(frozen=True)
class ShapeProfile:
    """One input's shape range; TensorRT tunes its kernels for `opt`."""
    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.input_name, str) or not self.input_name:
            raise TrtError(f"profile input name must be a non-empty string, got {self.input_name!r}", _RERUN)
        for key in ("min", "opt", "max"):
            object.__setattr__(self, key, _dims(key, getattr(self, key)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise TrtError(f"profile shapes of {self.input_name!r} differ in rank: min {self.min}, "
                           f"opt {self.opt}, max {self.max}", "give min, opt and max the same number of dimensions")
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if not lo <= mid <= hi:
                raise TrtError(f"profile of {self.input_name!r}: need min <= opt <= max on axis {axis}, "
                               f"got {lo}/{mid}/{hi}", "order the shapes min <= opt <= max (e.g. min_batch <= "
                               "opt_batch <= max_batch)")

    def as_dict(self) -> dict:
        # lists, not tuples: yaml.safe_dump cannot write tuples
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Any) -> "ShapeProfile":
        if not isinstance(data, dict):
            raise TrtError(f"a profile must be a mapping with input, min, opt and max, got {type(data).__name__}",
                           _RERUN)
        missing = [key for key in ("input", "min", "opt", "max") if key not in data]
        if missing:
            raise TrtError(f"profile lacks {', '.join(missing)}", _RERUN)
        return cls(data["input"], data["min"], data["opt"], data["max"])

    def shape_text(self, which: str) -> str:
        """`input:1x3x224x224`, the form trtexec takes."""
        return f"{self.input_name}:" + "x".join(str(d) for d in getattr(self, which))

    def trtexec_shapes(self) -> dict[str, str]:
        return {flag: self.shape_text(which) for which, flag in _SHAPE_FLAGS.items()}


def _dims(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TrtError(f"profile {key} shape must be a list of integers, got {value!r}", _RERUN)
    dims = tuple(value)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise TrtError(f"profile {key} shape must be positive integers, got {list(dims)}",
                       "every dimension of min/opt/max must be 1 or more (no -1: the profile fixes the range)")
    return dims


def batch_profile(input_name: str, channels: int, image_size: int, min_batch: int = 1, opt_batch: int = 32,
                  max_batch: int = 256) -> ShapeProfile:
    """Only the batch is dynamic: the ONNX input is [batch, channels, S, S]."""
    image = (channels, image_size, image_size)
    return ShapeProfile(input_name, (min_batch, *image), (opt_batch, *image), (max_batch, *image))


# TensorRT 10 is weakly typed: the model stays FP32 and builder flags allow lower precision.
# INT8 is how it accepts a Q/DQ (explicitly quantized) network; FP16 lets the layers around
# the Q/DQ pairs run in half. TF32 is on by default, so FP32 needs no flag.
_TRT10 = {"fp32": ("fp32", [], []), "fp16": ("fp32", ["FP16"], ["--fp16"]),
          "int8": ("int8", ["INT8", "FP16"], ["--int8", "--fp16"])}
# TensorRT 11 removed every weak-typing flag: networks are strongly typed and precision is the
# model's own. STRONGLY_TYPED is accepted and harmless there, and says what the engine is.
_TRT11 = {"fp32": ("fp32", [], ["--stronglyTyped"]), "fp16": ("fp16", [], ["--stronglyTyped"]),
          "int8": ("int8", [], ["--stronglyTyped"])}


def build_settings(profile: ShapeProfile, onnx_files: dict[str, str], workspace_gb: float,
                   precisions: Iterable[str]) -> dict:
    """What the engine step uses, for both TensorRT majors: {"workspace_bytes", "profile",
    "10": {precision: entry}, "11": {precision: entry}}, each entry naming its ONNX file,
    builder flags, network flags and trtexec arguments."""
    precisions = list(precisions)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise TrtError(f"unknown or no precisions {unknown or precisions}", f"use some of {', '.join(PRECISIONS)}")
    if not workspace_gb > 0:
        raise TrtError(f"workspace_gb must be positive, got {workspace_gb}", "e.g. workspace_gb: 4")
    workspace_bytes = int(workspace_gb * (1 << 30))
    common = [f"--memPoolSize=workspace:{workspace_bytes >> 20}M",
              *(f"{flag}={shape}" for flag, shape in profile.trtexec_shapes().items())]
    settings: dict[str, Any] = {"workspace_bytes": workspace_bytes, "profile": profile.as_dict()}
    for major, table, network_flags in (("10", _TRT10, []), ("11", _TRT11, ["STRONGLY_TYPED"])):
        settings[major] = {}
        for precision in precisions:
            model, builder_flags, trtexec_args = table[precision]
            if model not in onnx_files:
                raise TrtError(f"no ONNX file for {model} models (needed by {precision} on TensorRT {major})",
                               f"give onnx_files a {model!r} entry")
            settings[major][precision] = {"onnx": onnx_files[model], "builder_flags": list(builder_flags),
                                          "network_flags": list(network_flags),
                                          "trtexec_args": [*trtexec_args, *common]}
    return settings


def tensorrt_major(version: str) -> int:
    match = re.match(r"\s*v?(\d+)(?:\.|$)", str(version))
    if not match:
        raise TrtError(f"cannot read a TensorRT version from {version!r}", "expected a version such as 10.13.0")
    return int(match.group(1))


def settings_for(settings: dict, version: str, family: str = "tensorrt") -> dict:
    """The settings for this TensorRT: the shared keys plus one entry per precision, and
    "tensorrt" naming the major they were written for. TensorRT for RTX builds only strongly
    typed networks, like TensorRT 11: it takes those entries whatever its own version."""
    if family == "tensorrt-rtx":
        if "11" not in settings:
            raise TrtError(f"the build settings have no strongly typed entry (found {sorted(settings)})", _RERUN)
        return {"workspace_bytes": settings["workspace_bytes"], "profile": settings["profile"], "tensorrt": "11",
                **settings["11"]}
    major = tensorrt_major(version)
    if major < 10:
        raise TrtError(f"TensorRT {version} is too old: the engine step needs TensorRT 10 or newer",
                       "pip install --upgrade tensorrt-cu13 (or tensorrt-cu12), or install TensorRT 10+")
    key = "11" if major >= 11 else "10"
    if key not in settings:
        raise TrtError(f"the build settings have no entry for TensorRT {key} (found {sorted(settings)})", _RERUN)
    return {"workspace_bytes": settings["workspace_bytes"], "profile": settings["profile"], "tensorrt": key,
            **settings[key]}


def write_profile(path: Path, data: dict) -> None:
    write_atomically(Path(path), yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_profile(path: Path) -> dict:
    """profile.yaml, checked: each problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise TrtError(f"{path} not found", _RERUN)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TrtError(f"{path} is not valid YAML: {exc}", _RERUN) from exc
    if not isinstance(data, dict):
        raise TrtError(f"{path}: expected a mapping at the top, got {type(data).__name__}", _RERUN)
    _check_profile_document(path, data)
    return data


def _check_profile_document(path: Path, data: dict) -> None:
    def bad(key: str, why: str) -> TrtError:
        return TrtError(f"{path}: {key} {why}", _RERUN)

    for key in ("profile", "precisions", "onnx", "tensorrt"):
        if key not in data:
            raise bad(key, "is missing")
    try:
        ShapeProfile.from_dict(data["profile"])
    except TrtError as exc:
        raise bad("profile", f"is invalid: {exc.message}") from exc
    precisions = data["precisions"]
    if not isinstance(precisions, list) or not precisions or any(p not in PRECISIONS for p in precisions):
        raise bad("precisions", f"must list some of {', '.join(PRECISIONS)}, got {precisions!r}")
    if not isinstance(data["onnx"], dict):
        raise bad("onnx", "must map precisions to ONNX file names")
    trt = data["tensorrt"]
    if not isinstance(trt, dict):
        raise bad("tensorrt", "must be a mapping of build settings")
    for key in ("workspace_bytes", "profile", *TENSORRT_MAJORS):
        if key not in trt:
            raise bad(f"tensorrt.{key}", "is missing")
    if isinstance(trt["workspace_bytes"], bool) or not isinstance(trt["workspace_bytes"], int) \
            or trt["workspace_bytes"] <= 0:
        raise bad("tensorrt.workspace_bytes", f"must be a positive integer, got {trt['workspace_bytes']!r}")
    for major in TENSORRT_MAJORS:
        if not isinstance(trt[major], dict):
            raise bad(f"tensorrt.{major}", "must map precisions to settings")
        for precision in precisions:
            entry = trt[major].get(precision)
            if not isinstance(entry, dict):
                raise bad(f"tensorrt.{major}.{precision}", "is missing")
            for key in _ENTRY_KEYS:
                if key not in entry:
                    raise bad(f"tensorrt.{major}.{precision}.{key}", "is missing")
            if not isinstance(entry["onnx"], str) or not entry["onnx"]:
                raise bad(f"tensorrt.{major}.{precision}.onnx", "must be a file name")
            for key in _ENTRY_KEYS[1:]:
                if not isinstance(entry[key], list) or not all(isinstance(v, str) for v in entry[key]):
                    raise bad(f"tensorrt.{major}.{precision}.{key}", "must be a list of strings")
