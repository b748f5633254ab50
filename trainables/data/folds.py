"""Cross-validation folds over train + val: stratified, grouped by patient, seeded.

A study that cross-validates pools the training and validation splits and deals them
into K folds; the test split never joins. Each fold's held-out part plays the role of
the validation split for the model trained on the other K-1 parts, so every pooled
image is predicted exactly once, by a model that never saw it (out-of-fold).

Dealing is a pure function of (labels, groups, K, seed), like the split itself: every
trial of a study, in every process, gets the same folds. Within each class (for grouped
data: each majority-label stratum of whole groups) the units are shuffled by
``default_rng([seed, salt, class])`` and each goes to the fold holding the fewest images
of that stratum so far, so folds are balanced in size and class mix and no group is in
two folds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError
from .splits import units

if TYPE_CHECKING:
    from .dataset import ImageDataset

_FOLD_SALT = 3


def fold_pool(splits: dict[str, np.ndarray]) -> np.ndarray:
    """The images cross-validation deals into folds: train + val, sorted (never test)."""
    return np.union1d(splits["train"], splits["val"]).astype(np.int64)


def check_folds(labels: np.ndarray, groups: np.ndarray | None, k: int, class_names: list[str]) -> None:
    """Refuse a K that cannot put every class in every fold's held-out part.

    Raises:
        DataError: K < 2, or K larger than the smallest class's image (or group) count,
            naming the class, its count and the largest K that works.
    """
    if k < 2:
        raise DataError(f"cv_folds must be >= 2 to cross-validate (1 is the single train/val split), but got {k}")
    present = np.unique(labels)
    if groups is None:
        counts = {int(c): int((labels == c).sum()) for c in present}
        unit = "images"
    else:
        # groups are dealt by their majority label: count the groups each class is the majority of
        _, unit_label = units(labels, groups)
        counts = {int(c): int((unit_label == c).sum()) for c in present}
        unit = "groups (patients) it is the majority class of"
        total = len(np.unique(groups.astype(str)))
        if total < k:
            raise DataError(f"cv_folds {k} needs at least {k} groups, but train + val hold {total}; "
                            f"use cv_folds <= {total} or no group_column")
    smallest = min(counts, key=lambda c: counts[c])
    if counts[smallest] < k:
        name = class_names[smallest] if smallest < len(class_names) else str(smallest)
        raise DataError(f"cv_folds {k} is larger than class {name!r} has {unit} in train + val "
                        f"({counts[smallest]}): some fold would hold none of it and its AUC is undefined; "
                        f"use cv_folds <= {max(counts[smallest], 1)}"
                        + ("" if counts[smallest] >= 2 else " (and cross-validation needs 2)"))


def make_folds(labels: np.ndarray, pool: np.ndarray, groups: np.ndarray | None, k: int,
               class_names: list[str], seed: int = 0) -> list[np.ndarray]:
    """The held-out indices of each of ``k`` folds of ``pool``.

    Args:
        labels: labels of all images.
        pool: the indices to deal (:func:`fold_pool`).
        groups: group id of every image, or None.
        k: number of folds (checked by :func:`check_folds`).
        class_names: for error messages.
        seed: seeds the deal; same seed, same folds.

    Returns:
        ``k`` sorted int64 index arrays: disjoint, covering ``pool``.
    """
    pool_labels = labels[pool]
    pool_groups = groups[pool] if groups is not None else None
    check_folds(pool_labels, pool_groups, k, class_names)
    unit_of, unit_label = units(pool_labels, pool_groups)
    sizes = np.bincount(unit_of, minlength=len(unit_label))
    unit_fold = np.zeros(len(unit_label), np.int64)
    for c in np.unique(unit_label):
        members = np.flatnonzero(unit_label == c)
        members = members[np.random.default_rng([seed, _FOLD_SALT, int(c)]).permutation(len(members))]
        filled = np.zeros(k, np.int64)
        for position, unit in enumerate(members):
            # the emptiest fold; ties go round-robin so single images deal exactly evenly
            order = np.lexsort(((np.arange(k) - position) % k, filled))
            unit_fold[unit] = order[0]
            filled[order[0]] += sizes[unit]
    image_fold = unit_fold[unit_of]
    return [np.sort(pool[image_fold == f]).astype(np.int64) for f in range(k)]


def held_out_folds(data: "ImageDataset", k: int) -> list[np.ndarray]:
    """The held-out images of each of a data set's ``k`` folds: those every trial of a study uses."""
    return make_folds(data.labels, fold_pool(data.splits), data.groups, k, list(data.class_names))


__all__ = ["check_folds", "fold_pool", "held_out_folds", "make_folds"]
