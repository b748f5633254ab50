"""Metrics against hand-computed values."""

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from trainables.metrics import classification_metrics


def test_binary_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.3])
    m = classification_metrics(labels, np.stack([1 - p1, p1], 1))
    # predictions: 0 1 0 1 1 0 1 0 -> TP 3, FN 1, TN 3, FP 1
    assert m["val_sensitivity"] == 0.75 and m["val_specificity"] == 0.75
    assert m["val_acc"] == 0.75 and m["val_balanced_acc"] == 0.75
    assert math.isclose(m["val_f1"], 0.75)
    assert math.isclose(m["val_auc"], roc_auc_score(labels, p1))


def test_multiclass_macro_and_prefix():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet(np.ones(3), size=60)
    probs[np.arange(60), labels] += 1.0
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(labels, probs, prefix="test_")
    assert set(m) == {"test_auc", "test_acc", "test_balanced_acc", "test_f1", "test_sensitivity", "test_specificity"}
    assert math.isclose(m["test_auc"], roc_auc_score(labels, probs, multi_class="ovr"))
    assert 0.5 < m["test_specificity"] <= 1.0


def test_single_class_auc_is_nan_not_an_error():
    m = classification_metrics(np.zeros(4, int), np.tile([0.7, 0.3], (4, 1)))
    assert math.isnan(m["val_auc"]) and m["val_acc"] == 1.0
