"""How closely two backends' outputs agree: the ONNX export against PyTorch, and every
optimised model against the FP32 reference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handlers.ml.arrays import softmax
from handlers.ml.metrics import classification_metrics, predictions


@dataclass
class Agreement:
    n: int
    max_abs_diff: float          # on logits
    mean_abs_diff: float
    max_prob_diff: float         # on softmax probabilities
    top1_agreement: float        # share of images with the same predicted class

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        return (f"max |Δlogit| {self.max_abs_diff:.2e}, top-1 agreement {self.top1_agreement:.2%} "
                f"on {self.n} images")


def compare(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    prob_diff = np.abs(softmax(reference) - softmax(candidate))
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    return Agreement(len(reference), float(diff.max()), float(diff.mean()), float(prob_diff.max()),
                     float(same.mean()))


def parity_failure(agreement: Agreement, atol: float, min_agreement: float) -> str | None:
    """Why the candidate fails parity, or None."""
    problems = []
    if not np.isfinite(agreement.max_abs_diff) or agreement.max_abs_diff > atol:
        problems.append(f"max |Δlogit| {agreement.max_abs_diff:.3e} exceeds {atol:g}")
    if agreement.top1_agreement < min_agreement:
        problems.append(f"top-1 agreement {agreement.top1_agreement:.2%} is below {min_agreement:.2%}")
    return "; ".join(problems) or None


def scores(labels: np.ndarray, logits: np.ndarray, positive: int, reference: np.ndarray | None = None,
           threshold: float | None = None) -> dict:
    """Accuracy, AUC and F1 of `logits` on the labels, classes decided by the training's
    threshold (binary) or the largest logit; with a reference model's logits, also how often
    both decide the same class and the largest probability difference."""
    probs = softmax(logits)
    metrics = classification_metrics(labels, probs, positive, threshold)
    entry = {"accuracy": metrics["accuracy"], "auc": metrics["auc"], "f1": metrics["f1"]}
    if reference is not None:
        agreement = compare(reference, logits)
        same = predictions(softmax(reference), positive, threshold) == predictions(probs, positive, threshold)
        entry.update(agreement=float(same.mean()), max_prob_diff=agreement.max_prob_diff)
    return entry
