"""The user's model (seeds/004): an ImageNet-pretrained torchvision CNN, early layers frozen
up to a configurable block, the classifier replaced by a new linear layer with one output
per class. The same builder serves the baseline (ResNet-50) and the prototypes.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from handlers.ml.errors import ModelError

# Architectures offered by name; any torchvision classification model also works.
KNOWN_ARCHS = ("resnet50", "resnet18", "densenet121", "efficientnet_b0", "convnext_tiny")
DOWNLOAD_TIMEOUT_S = 60




@dataclass(frozen=True)
class WeightsInfo:
    requested: str          # imagenet | auto | none | a path
    used: str               # imagenet | none | the path
    note: str = ""          # why `used` differs from `requested`, for the step's findings

    @property
    def pretrained(self) -> bool:
        return self.used != "none"


def _imagenet_weights(arch: str):
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ModelError(f"torchvision has no ImageNet weights for {arch!r}: {exc}",
                         "set model.weights: none, or choose an architecture torchvision ships") from exc


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision looks for (and downloads) the ImageNet weights of `arch`."""
    url = _imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _fetch_imagenet(arch: str, log) -> Path:
    """The cached weights file, downloading it when missing; ModelError when neither works."""
    path = imagenet_cache_path(arch)
    if path.is_file():
        return path
    url = _imagenet_weights(arch).url
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading ImageNet weights for %s to %s", arch, path)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)   # a blocked network should fail, not hang
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "not available here"
        raise ModelError(
            f"ImageNet weights for {arch} are not in the cache and could not be downloaded ({exc})",
            f"on a machine with internet access, download torchvision's file {os.path.basename(url)} (its "
            f"address: python -c 'import torchvision; print(torchvision.models.get_model_weights"
            f"(\"{arch}\").DEFAULT.url)') and put it at {path} (or set TORCH_HOME), or set "
            f"model.weights: none in tasks/project.yaml to train from random initialisation") from exc
    finally:
        socket.setdefaulttimeout(previous)
    return path


def _load_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights file {path}: {exc}",
                         "delete it so it is downloaded again, or point model.weights at a valid "
                         ".pth state_dict") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _resolve_weights(arch: str, weights: str, project_root: Path, log) -> tuple[dict | None, WeightsInfo]:
    if weights == "none":
        return None, WeightsInfo(weights, "none")
    if weights in ("imagenet", "auto"):
        try:
            return _load_state_dict(_fetch_imagenet(arch, log)), WeightsInfo(weights, "imagenet")
        except ModelError as exc:
            if weights == "imagenet":
                raise
            note = (f"ImageNet weights unavailable ({exc.message}); trained from random "
                    f"initialisation. Hint: {exc.hint.split(', or set')[0]}")
            return None, WeightsInfo(weights, "none", note)
    path = Path(weights) if Path(weights).is_absolute() else project_root / weights
    if not path.is_file():
        raise ModelError(f"model.weights file {path} does not exist",
                         "use imagenet, auto, none, or the path of a .pth state_dict")
    return _load_state_dict(path), WeightsInfo(weights, str(path))


def _replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the last nn.Linear (fc / classifier / classifier[-1]) for a fresh one."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return name


def freeze_candidates(model: nn.Module) -> list[str]:
    """Module names `freeze_until` accepts: top-level blocks and, for models that keep them
    in a `features` container, its children (features.denseblock3, features.5, ...)."""
    names = []
    for name, child in model.named_children():
        if any(True for _ in child.parameters()):
            names.append(name)
        if name == "features":
            names += [f"features.{sub}" for sub, m in child.named_children() if any(True for _ in m.parameters())]
    return names


def freeze_until(model: nn.Module, module_name: str | None, head: str) -> int:
    """Freeze every parameter registered up to and including `module_name`; returns how
    many parameters stay trainable."""
    if module_name:
        candidates = freeze_candidates(model)
        if module_name not in candidates:
            raise ModelError(f"freeze_until: {module_name!r} is not a block of this model",
                             f"use one of: {', '.join(candidates)}, or null to train everything")
        if head == module_name or head.startswith(module_name + "."):
            raise ModelError(f"freeze_until: {module_name!r} would freeze the new classifier {head!r}",
                             "pick an earlier block")
        prefix, inside, passed = module_name + ".", False, False
        for name, param in model.named_parameters():
            under = name.startswith(prefix)
            passed = passed or (inside and not under)
            inside = inside or under
            if not passed:
                param.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class BuiltModel:
    model: nn.Module
    arch: str
    weights: WeightsInfo
    head: str
    trainable_params: int
    total_params: int


def build_model(arch: str, num_classes: int, weights: str = "imagenet", freeze: str | None = None,
                project_root: Path = Path("."), log=None) -> BuiltModel:
    """A torchvision classifier with `num_classes` outputs, pretrained as asked."""
    import logging
    log = log or logging.getLogger("atlas.model")
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as exc:
        raise ModelError(f"unknown architecture {arch!r}",
                         f"use one of {', '.join(KNOWN_ARCHS)} (any torchvision classification "
                         f"model name works)") from exc
    state, info = _resolve_weights(arch, weights, project_root, log)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"weights do not fit {arch}: {str(exc).splitlines()[0]}",
                             "the file must be a state_dict of the same torchvision architecture "
                             "before its classifier was replaced") from exc
    head = _replace_head(model, num_classes)
    if info.requested == "auto" and not info.pretrained and freeze:
        # frozen random layers would never learn anything: auto's fallback trains them all
        info = WeightsInfo(info.requested, info.used, info.note + f"; nothing frozen (freeze_until: {freeze} "
                                                                   f"applies to pretrained weights)")
        freeze = None
    trainable = freeze_until(model, freeze, head)
    return BuiltModel(model, arch, info, head, trainable, sum(p.numel() for p in model.parameters()))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by the training steps (state_dict + metadata), safely."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    meta = checkpoint["meta"]
    model = torchvision.models.get_model(meta["arch"], weights=None)
    _replace_head(model, len(meta["classes"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model, meta
