"""Classification metrics in plain numpy (no scikit-learn needed).

Binary sets (NORMAL vs PNEUMONIA) report sensitivity, specificity, F1 and ROC AUC for the
positive class; with more classes each becomes the macro average of one-vs-rest scores.
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties
    counting one half (the Mann-Whitney U statistic). NaN when one class is absent."""
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _one_vs_rest(matrix: np.ndarray, k: int) -> tuple[float, float, float]:
    tp = matrix[k, k]
    fn = matrix[k].sum() - tp
    fp = matrix[:, k].sum() - tp
    tn = matrix.sum() - tp - fn - fp
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    if np.isnan(precision) or np.isnan(sensitivity) or precision + sensitivity == 0:
        f1 = 0.0 if tp == 0 and (fp + fn) > 0 else float("nan")
    else:
        f1 = 2 * precision * sensitivity / (precision + sensitivity)
    return sensitivity, specificity, float(f1)


def predictions(probs: np.ndarray, positive: int, threshold: float | None = None) -> np.ndarray:
    """Predicted classes: the positive class where its probability reaches `threshold`
    (binary only), else the most probable class."""
    probs = np.asarray(probs)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, positive: int,
                           threshold: float | None = None) -> dict[str, float]:
    """accuracy, auc, f1, sensitivity, specificity from true labels and class probabilities,
    the classes decided by `threshold` (binary) or by the largest probability."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    matrix = confusion_matrix(labels, predictions(probs, positive, threshold), num_classes)
    if num_classes == 2:
        sens, spec, f1 = _one_vs_rest(matrix, positive)
        auc = roc_auc(labels == positive, probs[:, positive])
    else:
        per_class = [_one_vs_rest(matrix, k) for k in range(num_classes)]
        sens, spec, f1 = (float(np.nanmean([row[i] for row in per_class])) for i in range(3))
        aucs = [roc_auc(labels == k, probs[:, k]) for k in range(num_classes)]
        auc = float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan")
    return {"accuracy": _ratio(np.trace(matrix), matrix.sum()), "auc": auc, "f1": f1,
            "sensitivity": sens, "specificity": spec}


def choose_threshold(labels: np.ndarray, probs: np.ndarray, positive: int) -> tuple[float | None, dict]:
    """The operating threshold on the positive-class probability that maximises Youden's J
    (sensitivity + specificity - 1) on these (validation) images; ties go to the threshold
    nearest 0.5. Candidates are the midpoints between neighbouring scores, so the threshold
    does not sit on one image's score. (None, {}) when a class is missing or not binary."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 2:
        return None, {}
    is_pos = labels == positive
    if is_pos.all() or not is_pos.any():
        return None, {}
    scores = probs[:, positive]
    unique = np.unique(scores)
    candidates = np.unique(np.r_[0.5, (unique[:-1] + unique[1:]) / 2])
    # sensitivity and specificity of "score >= t" for every candidate at once
    sens = (scores[is_pos][None, :] >= candidates[:, None]).mean(axis=1)
    spec = (scores[~is_pos][None, :] < candidates[:, None]).mean(axis=1)
    youden = sens + spec - 1
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    pick = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(candidates[pick]), {"sensitivity": float(sens[pick]), "specificity": float(spec[pick]),
                                     "youden_j": float(youden[pick]), "images": int(len(labels))}


NEAR_CHANCE_AUC = 0.1      # |AUC - 0.5| below this: the scores barely rank the classes


def quality_warning(auc: float, predicted: np.ndarray, classes: list[str]) -> str | None:
    """Why a model's test result is no better than chance, in words; None when it is."""
    problems = []
    if np.isfinite(auc) and abs(auc - 0.5) < NEAR_CHANCE_AUC:
        problems.append(f"test AUC {auc:.3f} is within {NEAR_CHANCE_AUC} of 0.5 (chance)")
    used = np.unique(np.asarray(predicted))
    if len(predicted) and len(used) == 1:
        problems.append(f"it predicts {classes[int(used[0])]} for every test image")
    if not problems:
        return None
    return "model near chance: " + " and ".join(problems) + "; its later results (ONNX, TensorRT, benchmark) describe a model that has not learned"


def inherited_warning(meta: dict) -> list[str]:
    """The training step's near-chance warning, repeated by every step that uses its model."""
    warning = meta.get("quality_warning")
    return [f"from AG-DS-SCRIPTGPU-001's training: {warning}"] if warning else []
