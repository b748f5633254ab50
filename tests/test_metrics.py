"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest
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


@pytest.mark.parametrize("num_classes,present", [(2, [0, 1]), (3, [0, 1, 2]), (4, [0, 2, 3]), (5, [1, 4])])
def test_metrics_match_sklearn_with_ties_and_missing_classes(num_classes, present):
    """The NumPy metrics equal sklearn's on rounded (tied) scores, imbalance and absent classes."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(num_classes)
    for trial in range(5):
        labels = rng.choice(present, size=157, p=rng.dirichlet(np.ones(len(present))))
        labels[: len(present)] = present  # every listed class occurs
        probs = rng.dirichlet(np.ones(num_classes), size=157)
        probs[np.arange(157), labels] += rng.uniform(0, 1)
        probs = np.round(probs / probs.sum(1, keepdims=True), 1)  # many ties
        probs[:, 0] += 1e-9  # keep rows non-zero after rounding
        probs /= probs.sum(1, keepdims=True)
        m = classification_metrics(labels, probs)
        preds = probs.argmax(1)
        if num_classes == 2:
            auc = roc_auc_score(labels, probs[:, 1])
        else:
            cols = np.array(present)
            scores = probs[:, cols] / probs[:, cols].sum(1, keepdims=True) if len(cols) < num_classes else probs
            auc = (roc_auc_score(labels == cols[1], scores[:, 1]) if len(cols) == 2  # sklearn: binary then
                   else roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=cols))
        assert math.isclose(m["val_auc"], auc, rel_tol=1e-12), trial
        assert math.isclose(m["val_acc"], accuracy_score(labels, preds))
        assert math.isclose(m["val_balanced_acc"], balanced_accuracy_score(labels, preds))
        average = "binary" if num_classes == 2 else "macro"
        assert math.isclose(m["val_f1"], f1_score(labels, preds, average=average, zero_division=0)), trial


def test_trial_worker_imports_neither_sklearn_nor_timm_for_a_scratch_cnn():
    """A scratch-CNN trial builds and evaluates without scikit-learn, SciPy, timm or torchvision."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from search.study.trainable import train\n"
        "from trainables.config import TrialConfig\n"
        "from trainables.models import build_model\n"
        "from trainables.models.backbone import data_config\n"
        "from trainables.metrics import classification_metrics\n"
        "model = build_model(TrialConfig(backbone='cnn3'), num_classes=2, in_chans=3)\n"
        "data_config(model.backbone, 3)\n"
        "classification_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'timm', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
