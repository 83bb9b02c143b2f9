"""Metrics and losses of the training steps, checked against hand-computed values."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from handlers.ml.losses import FocalLoss, class_weights, make_loss  # noqa: E402
from handlers.ml.metrics import classification_metrics, confusion_matrix, roc_auc  # noqa: E402


def test_confusion_matrix_rows_are_true_classes():
    m = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 2)
    assert m.tolist() == [[1, 1], [1, 2]]


def test_roc_auc_counts_pairs_and_ties():
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4 -> 1/2, 0.4>0.1)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.8])) == 0.0
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.8])))


def test_binary_metrics_for_the_positive_class():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([[.9, .1], [.8, .2], [.3, .7], [.2, .8], [.4, .6], [.6, .4], [.1, .9]])
    m = classification_metrics(labels, probs, positive=1)
    # tp=3 fn=1 fp=1 tn=2
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # the same numbers with NORMAL as the positive class swap sensitivity and specificity
    flipped = classification_metrics(labels, probs, positive=0)
    assert flipped["sensitivity"] == pytest.approx(m["specificity"])


def test_multiclass_metrics_are_macro_averages():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]]
    m = classification_metrics(labels, probs, positive=2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_class_weights_inverse_frequency_mean_one():
    w = class_weights([0, 0, 0, 1], 2)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert float(w.mean()) == pytest.approx(1.0)
    assert class_weights([0, 0], 2).tolist() == [1.0, 0.0]


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weight)
    assert float(FocalLoss(weight, gamma=0.0)(logits, target)) == pytest.approx(float(expected), rel=1e-5)
    # easy examples count less with gamma > 0
    assert float(FocalLoss(None, gamma=2.0)(logits, target)) < float(FocalLoss(None, gamma=0.0)(logits, target))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge", None)


# ------------------------------------------------------------------ operating threshold, near chance

def test_threshold_maximises_youden_on_shifted_scores():
    from handlers.ml.metrics import choose_threshold, classification_metrics
    # a model that ranks perfectly but whose positive probabilities all sit below 0.5
    labels = np.array([0, 0, 0, 1, 1, 1])
    p_pos = np.array([0.05, 0.10, 0.20, 0.30, 0.35, 0.40])
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    assert classification_metrics(labels, probs, 1)["accuracy"] == 0.5          # argmax: all NORMAL
    t, val = choose_threshold(labels, probs, 1)
    assert t == pytest.approx(0.25) and val["youden_j"] == 1.0                # midway between 0.20 and 0.30
    assert classification_metrics(labels, probs, 1, t)["accuracy"] == 1.0


def test_threshold_ties_go_to_the_one_nearest_half_and_missing_classes_give_none():
    from handlers.ml.metrics import choose_threshold
    labels = np.array([0, 1])
    probs = np.array([[0.9, 0.1], [0.1, 0.9]])
    t, _ = choose_threshold(labels, probs, 1)
    assert t == 0.5                                          # every midpoint separates; 0.5 is nearest
    assert choose_threshold(np.array([1, 1]), probs, 1) == (None, {})
    assert choose_threshold(np.array([0, 1, 2]), np.full((3, 3), 1 / 3), 1) == (None, {})


def test_threshold_decides_for_the_positive_class_only_in_binary_tasks():
    from handlers.ml.metrics import predictions
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert predictions(probs, 1, 0.25).tolist() == [1, 1]
    assert predictions(probs, 0, 0.65).tolist() == [0, 1]            # positive class 0
    assert predictions(probs, 1, None).tolist() == [0, 1]
    three = np.array([[0.2, 0.3, 0.5]])
    assert predictions(three, 1, 0.1).tolist() == [2]                 # argmax beyond two classes


def test_quality_warning_names_chance_auc_and_a_constant_classifier():
    from handlers.ml.metrics import inherited_warning, quality_warning
    classes = ["NORMAL", "PNEUMONIA"]
    assert quality_warning(0.9, np.array([0, 1, 0]), classes) is None
    near = quality_warning(0.532, np.array([0, 1, 0]), classes)
    assert near.startswith("model near chance: test AUC 0.532 is within 0.1 of 0.5")
    constant = quality_warning(0.95, np.array([0, 0, 0]), classes)
    assert "it predicts NORMAL for every test image" in constant
    both = quality_warning(0.55, np.zeros(4, int), classes)
    assert "AUC 0.550" in both and "NORMAL for every" in both
    assert inherited_warning({"quality_warning": near}) == [f"from AG-DS-SCRIPTGPU-001's training: {near}"]
    assert inherited_warning({"quality_warning": None}) == [] and inherited_warning({}) == []
