"""Classification metrics of one evaluation pass.

Binary tasks treat label 1 as positive (tumour, pneumonia): sensitivity is its recall,
specificity the recall of label 0. Multi-class tasks report macro one-vs-rest AUC and
macro averages of per-class sensitivity and specificity. Medical sets are imbalanced,
so AUC and balanced accuracy are the headline numbers, not accuracy.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """AUC, accuracy, balanced accuracy, F1, sensitivity and specificity.

    Args:
        labels: int labels ``(N,)``.
        probs: class probabilities ``(N, K)``, rows summing to 1.
        prefix: prepended to every key (``val_auc``, ``test_auc``...).

    AUC is NaN when the labels hold a single class (it is undefined there).
    """
    num_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, preds, labels=list(range(num_classes)))
    true_pos = np.diag(matrix).astype(float)
    positives = matrix.sum(axis=1).astype(float)
    negatives = matrix.sum() - positives
    false_pos = matrix.sum(axis=0) - true_pos
    recall = np.divide(true_pos, positives, out=np.full(num_classes, np.nan), where=positives > 0)
    true_neg = negatives - false_pos
    spec = np.divide(true_neg, negatives, out=np.full(num_classes, np.nan), where=negatives > 0)
    binary = num_classes == 2
    metrics = {
        "auc": _auc(labels, probs),
        "acc": float(accuracy_score(labels, preds)),
        "balanced_acc": float(balanced_accuracy_score(labels, preds)) if len(np.unique(labels)) > 1 else float("nan"),
        "f1": float(f1_score(labels, preds, average="binary" if binary else "macro", zero_division=0)),
        "sensitivity": float(recall[1] if binary else np.nanmean(recall)),
        "specificity": float(recall[0] if binary else np.nanmean(spec)),
    }
    return {prefix + key: value for key, value in metrics.items()}


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) < probs.shape[1]:
        # One-vs-rest over the classes present; sklearn refuses missing columns.
        scores = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
        return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=present))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
