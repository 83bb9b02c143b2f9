"""Losses for imbalanced X-ray sets: class-weighted cross-entropy and focal loss."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (a balanced set gives all ones).
    A class absent from the labels gets weight 0 rather than infinity."""
    counts = Counter(int(label) for label in labels)
    total = sum(counts.values())
    raw = [total / (num_classes * counts[k]) if counts.get(k) else 0.0 for k in range(num_classes)]
    present = [w for w in raw if w > 0]
    scale = len(present) / sum(present) if present else 1.0
    return torch.tensor([w * scale for w in raw], dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, so easy
    examples count less; `weight` plays the role of the alpha term per class."""

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum().clamp_min(1e-12)
        return loss.mean()


def make_loss(kind: str, weight: torch.Tensor | None, gamma: float = 2.0) -> nn.Module:
    if kind == "focal":
        return FocalLoss(weight, gamma)
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weight)
    raise ValueError(f"unknown loss {kind!r}: use cross_entropy or focal")
