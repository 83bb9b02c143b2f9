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


def classification_metrics(labels: np.ndarray, probs: np.ndarray, positive: int) -> dict[str, float]:
    """accuracy, auc, f1, sensitivity, specificity from true labels and class probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    predictions = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes)
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
