"""How ASHA allows for a small validation split: a longer grace period, and a noise margin.

``scheduler.grace_period: auto`` (the default) lets every trial train
``AUTO_SMALL_GRACE`` epochs before its first rung when trials are judged on fewer than
``AUTO_SMALL_SPLIT`` images, else 1. Measured by ``benchmarks/asha_noise.py`` (rung rules
replayed on studies whose every trial ran 6 epochs, reduction factor 3): with a grace
period of 1, the study kept the trial the full run would pick in 13% of arrival orders on
BreastMNIST (78 validation images) and 80% on PneumoniaMNIST (524); with 2, in 100% and
96%, for 58% and 61% of the full run's epochs (39% and 43% with 1). A margin of one
standard error at a grace period of 1 kept it in 56% and 99% for 48% and 62%: the
second epoch is the cheaper cure, so the margin is off by default. Trials are compared on
the same images, so what misleads a rung is mostly how noisy one epoch of training is,
not the sampling error of the split. The cut-off at 1000 images is a judgement above the
two measured sizes, not a measured optimum.

``scheduler.noise_margin`` is ``auto``, ``0`` (Ray's rule: stop anything below the
rung's cutoff) or a margin in the metric's units. ASHA (:class:`PersistentASHA`) then
stops a trial at a rung only when its metric is more than the margin below the cutoff.

``auto`` sets the margin to ``AUTO_STANDARD_ERRORS`` standard errors of the ranking
metric on the images it is measured on, before any model is trained: for ``val_auc``
Hanley & McNeil's standard error at an AUC of ``REFERENCE_AUC`` with the split's class
counts (for more than two classes, the smallest class against the rest; the larger of
the formula's two class orders, as it is not symmetric in them); for rates
(accuracy, sensitivity...) the binomial standard error at ``REFERENCE_RATE``; losses have
no such scale, so no margin. Under cross-validation the fold mean is measured on every
train + val image, so its margin is that of the pooled images. On BreastMNIST's 78
validation images the AUC margin is 0.047, on PneumoniaMNIST's 524 it is 0.018: the
spread of one AUC measured on a split of that size.
"""

from __future__ import annotations

import math

import numpy as np

from trainables.data import ImageDataset
from trainables.data.folds import fold_pool

AUTO_STANDARD_ERRORS = 1.0
AUTO_SMALL_SPLIT = 1000  # judged images below which `grace_period: auto` waits AUTO_SMALL_GRACE epochs
AUTO_SMALL_GRACE = 2
REFERENCE_AUC = 0.9
REFERENCE_RATE = 0.85


def judged_images(data: ImageDataset, cv_folds: int) -> np.ndarray:
    """The images a trial's ranking metric is measured on: validation, or train + val under CV."""
    return fold_pool(data.splits) if cv_folds > 1 else data.splits["val"]


def standard_error(metric: str, labels: np.ndarray, num_classes: int) -> float | None:
    """The metric's standard error on images with ``labels`` (None for losses: no scale)."""
    from search.evaluation.intervals import hanley_mcneil_se

    counts = np.bincount(labels, minlength=num_classes)
    positives = int(counts[1]) if num_classes == 2 else int(counts.min())
    negatives = len(labels) - positives
    rate = REFERENCE_RATE * (1 - REFERENCE_RATE)
    if metric == "val_auc":
        if not positives or not negatives:
            return None
        # the formula is not symmetric in the two classes: the larger of the two orders
        return max(hanley_mcneil_se(REFERENCE_AUC, positives, negatives),
                   hanley_mcneil_se(REFERENCE_AUC, negatives, positives))
    if metric in ("val_acc", "val_f1"):
        return math.sqrt(rate / len(labels)) if len(labels) else None
    if metric == "val_balanced_acc":
        return 0.5 * math.sqrt(rate / positives + rate / negatives) if positives and negatives else None
    if metric == "val_sensitivity":
        return math.sqrt(rate / positives) if positives else None
    if metric == "val_specificity":
        return math.sqrt(rate / negatives) if negatives else None
    return None


def resolve_grace_period(setting: int | str, data: ImageDataset, cv_folds: int, max_epochs: int) -> tuple[int, str]:
    """(ASHA's grace period in epochs, the reason in words) for ``scheduler.grace_period``."""
    if setting != "auto":
        return min(int(setting), max_epochs), f"scheduler.grace_period {setting}"
    images = len(judged_images(data, cv_folds))
    grace = min(AUTO_SMALL_GRACE if images < AUTO_SMALL_SPLIT else 1, max_epochs)
    where = f"{images} {'train + val' if cv_folds > 1 else 'validation'} images"
    return grace, (f"scheduler.grace_period auto: {grace} epoch{'s' if grace > 1 else ''}, as trials are judged on "
                   f"{where} ({'<' if images < AUTO_SMALL_SPLIT else '>='} {AUTO_SMALL_SPLIT})")


def resolve_noise_margin(setting: float | str, metric: str, data: ImageDataset, cv_folds: int) -> tuple[float, str]:
    """(the margin ASHA allows at a rung, the reason in words) for ``scheduler.noise_margin``."""
    if setting != "auto":
        margin = float(setting)
        return margin, (f"scheduler.noise_margin {margin:g}: ASHA stops a trial only more than {margin:g} below a "
                        "rung's cutoff" if margin else "scheduler.noise_margin 0: ASHA stops any trial below a "
                        "rung's cutoff")
    images = judged_images(data, cv_folds)
    se = standard_error(metric, data.labels[images], data.num_classes)
    where = f"{len(images)} {'train + val' if cv_folds > 1 else 'validation'} images"
    if se is None:
        return 0.0, f"scheduler.noise_margin auto: 0, as {metric} has no standard error to judge noise by"
    margin = AUTO_STANDARD_ERRORS * se
    return margin, (f"scheduler.noise_margin auto: {margin:.3f} ({AUTO_STANDARD_ERRORS:g} standard error of {metric} "
                    f"on {where}): ASHA stops a trial only when it is that far below a rung's cutoff")


__all__ = ["AUTO_SMALL_GRACE", "AUTO_SMALL_SPLIT", "AUTO_STANDARD_ERRORS", "judged_images", "resolve_grace_period",
           "resolve_noise_margin", "standard_error"]
