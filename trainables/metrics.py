"""Classification metrics of one evaluation pass.

Binary tasks treat label 1 as positive (tumour, pneumonia): sensitivity is its recall,
specificity the recall of label 0. Multi-class tasks report macro one-vs-rest AUC and
macro averages of per-class sensitivity and specificity. Medical sets are imbalanced,
so AUC and balanced accuracy are the headline numbers, not accuracy.

Plain NumPy, computed as scikit-learn defines them (``tests/test_metrics.py`` checks
each against scikit-learn, ties and missing classes included): a trial worker then never
imports scikit-learn and SciPy, about 0.1 GB of private memory per concurrent trial.
"""

from __future__ import annotations

import numpy as np


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
    labels = np.asarray(labels, dtype=np.int64)
    matrix = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    true_pos = np.diag(matrix).astype(float)
    positives = matrix.sum(axis=1).astype(float)
    negatives = matrix.sum() - positives
    false_pos = matrix.sum(axis=0) - true_pos
    recall = np.divide(true_pos, positives, out=np.full(num_classes, np.nan), where=positives > 0)
    true_neg = negatives - false_pos
    spec = np.divide(true_neg, negatives, out=np.full(num_classes, np.nan), where=negatives > 0)
    binary = num_classes == 2
    predicted = matrix.sum(axis=0)
    # F1 per class, 0 where it has no true and no predicted sample (zero_division=0); the
    # macro mean runs over the classes that occur in labels or predictions, as sklearn's.
    f1_denominator = positives + predicted
    f1 = np.divide(2 * true_pos, f1_denominator, out=np.zeros(num_classes), where=f1_denominator > 0)
    occurring = (positives > 0) | (predicted > 0)
    metrics = {
        "auc": _auc(labels, probs),
        "acc": float(true_pos.sum() / max(len(labels), 1)),
        "balanced_acc": float(np.nanmean(recall)) if (positives > 0).sum() > 1 else float("nan"),
        "f1": float(f1[1] if binary else f1[occurring].mean()),
        "sensitivity": float(recall[1] if binary else np.nanmean(recall)),
        "specificity": float(recall[0] if binary else np.nanmean(spec)),
    }
    return {prefix + key: value for key, value in metrics.items()}


def cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities floored at 1e-12)."""
    labels = np.asarray(labels, dtype=np.int64)
    chosen = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(chosen, 1e-12, 1.0)).mean())


def scores(labels: np.ndarray, probs: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """:func:`classification_metrics` plus the unweighted cross-entropy as ``<prefix>loss``:
    every metric a trial reports for one set of predictions."""
    return {**classification_metrics(labels, probs, prefix=prefix), f"{prefix}loss": cross_entropy(labels, probs)}


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive``: the Mann-Whitney U statistic.

    Tied scores get their average rank, so a tie between a positive and a negative counts
    one half, exactly as the area under sklearn's ROC curve does.
    """
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    # average 1-based rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of class 1, or the macro one-vs-rest AUC over the classes present.

    NaN with a single class present. A class absent from ``labels`` is left out and the
    probabilities renormalised over the present ones (sklearn refuses missing columns).
    """
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return binary_auc(labels == 1, probs[:, 1])
    scores = probs[:, present]
    if len(present) < probs.shape[1]:
        scores = scores / scores.sum(axis=1, keepdims=True)
    if len(present) == 2:  # one-vs-rest of two classes is one binary AUC (both halves equal)
        return binary_auc(labels == present[1], scores[:, 1])
    return float(np.mean([binary_auc(labels == c, scores[:, j]) for j, c in enumerate(present)]))
