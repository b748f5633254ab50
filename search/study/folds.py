"""How many folds a study cross-validates over, decided once when it starts.

``tune.cv_folds`` (or ``search run --cv K``) is an integer or ``auto``. ``auto``
cross-validates where one validation split is too small to rank trials on. The standard
error of an AUC near 0.9 (Hanley & McNeil's formula,
:func:`search.evaluation.intervals.hanley_mcneil_se`) on a 1:3 imbalanced validation
split is 0.049 at 78 images (BreastMNIST's), 0.019 at 524 (PneumoniaMNIST's) and 0.017
at 600, the 15% split of 4,000 images, and it shrinks only as 1/sqrt(n) above that.
Above the cut-off one split is kept, since K folds cost K times the training. The
cut-off is a judgement on these numbers, not a measured optimum.

The resolved K goes into every trial's config (``cv_folds``) and into the study record,
so a resumed study trains its remaining trials with the same folds.
"""

from __future__ import annotations

import dataclasses

from search.space import Space, SpaceError
from trainables.data import DataError, ImageDataset
from trainables.data.folds import check_folds, fold_pool

AUTO_FOLDS = 5
AUTO_MAX_IMAGES = 4000


def resolve_cv_folds(setting: int | str, data: ImageDataset) -> tuple[int, str]:
    """(K, the reason, in words) for ``tune.cv_folds`` on ``data``."""
    pooled = len(fold_pool(data.splits))
    if setting == "auto":
        if pooled <= AUTO_MAX_IMAGES:
            return AUTO_FOLDS, (f"cv_folds auto: {AUTO_FOLDS} folds, since train + val hold {pooled} images "
                                f"(<= {AUTO_MAX_IMAGES}: one validation split would rank trials on noise)")
        return 1, f"cv_folds auto: the single train/val split, since train + val hold {pooled} images (> {AUTO_MAX_IMAGES})"
    k = int(setting)
    return k, (f"cv_folds {k}: each trial trains {k} fold models on the {pooled} train + val images" if k > 1
               else "cv_folds 1: the single train/val split")


def with_cv_folds(space: Space, data: ImageDataset, k: int) -> Space:
    """``space`` whose trials cross-validate over ``k`` folds, checked against the data before Ray starts.

    Raises:
        SpaceError: ``k`` is larger than the smallest class's (or group's) count in train + val.
    """
    if k == 1:
        return space
    pool = fold_pool(data.splits)
    try:
        check_folds(data.labels[pool], data.groups[pool] if data.groups is not None else None, k,
                    list(data.class_names))
    except DataError as err:
        raise SpaceError(space.path, "tune.cv_folds", str(err)) from None
    return dataclasses.replace(space, params={**space.params, "cv_folds": k})


__all__ = ["AUTO_FOLDS", "AUTO_MAX_IMAGES", "resolve_cv_folds", "with_cv_folds"]
