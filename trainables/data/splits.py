"""Deterministic, stratified, optionally grouped train/val/test splits.

The split is a pure function of (labels, the source's own split, groups, fractions,
seed): every trial of a study, in every process, sees the same images in the same
split, and the test split is fixed before any search starts. Randomness comes only from
``numpy.random.default_rng([seed, purpose, class])``, so one class's draw never shifts
another's and the result does not depend on the platform or on dict order.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
_ALIASES = {
    "train": TRAIN, "training": TRAIN,
    "val": VAL, "valid": VAL, "validation": VAL, "dev": VAL,
    "test": TEST, "testing": TEST,
}
_SPLIT_SALT, _SUBSAMPLE_SALT = 1, 2


def split_code(value: str) -> int | None:
    """Code (0 train, 1 val, 2 test) of a split name such as ``"valid"``; None if unknown."""
    return _ALIASES.get(value.strip().lower())


def make_splits(
    labels: np.ndarray,
    source_split: np.ndarray | None,
    groups: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Assign every image to train, val or test.

    A split the source defines is used as is. A split it lacks is carved out of the
    source's training images (or out of all images when the source has no split at all):
    ``val_fraction`` / ``test_fraction`` of them, stratified by label, and by whole
    groups when ``groups`` is given so that no group lands in two carved splits.

    Args:
        labels: int64 labels, one per image.
        source_split: split codes from the source (0 train, 1 val, 2 test), or None.
        groups: group id per image (e.g. patient), or None.
        val_fraction: share of the pool for a missing val split.
        test_fraction: share of the pool for a missing test split (0 leaves test empty).
        seed: seeds the draw; same seed, same split.

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 indices; disjoint, covering all.

    Raises:
        DataError: a split ends up empty (the message says which fraction to change).
    """
    n = len(labels)
    codes = np.full(n, TRAIN, np.int8) if source_split is None else source_split.astype(np.int8).copy()
    present = {code for code in (VAL, TEST) if np.any(codes == code)}
    pool = np.flatnonzero(codes == TRAIN)
    carve = {VAL: val_fraction if VAL not in present else 0.0,
             TEST: test_fraction if TEST not in present else 0.0}
    if (carve[VAL] > 0 or carve[TEST] > 0) and len(pool):
        pool_groups = groups[pool] if groups is not None else None
        assigned = _carve(labels[pool], pool_groups, carve[VAL], carve[TEST], seed)
        codes[pool] = assigned
    splits = {name: np.flatnonzero(codes == code).astype(np.int64) for code, name in enumerate(SPLITS)}
    origin = "the source's own split" if source_split is not None else "a seeded stratified split"
    if len(splits["train"]) == 0:
        raise DataError(f"the train split is empty (from {origin}); the data needs training images, "
                        "e.g. rows with split 'train', or lower val_fraction/test_fraction")
    if len(splits["val"]) == 0:
        raise DataError(f"the val split is empty: the source has no validation images and "
                        f"val_fraction={val_fraction} of {len(pool)} training images gives none; "
                        "set val_fraction > 0 (e.g. 0.15) or add 'val' rows to the split column")
    if len(splits["test"]) == 0 and test_fraction > 0:
        raise DataError(f"the test split is empty although test_fraction={test_fraction}: "
                        f"{len(pool)} training images are too few; add data or set test_fraction=0")
    return splits


def subsample_train(train: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified subsample of the training indices, keeping ``fraction`` of each class.

    Each class is permuted once by ``(seed, class)`` and a prefix is kept, so for one seed
    a smaller fraction's subset is contained in a larger one's: training-size curves
    compare nested training sets. Every class present keeps at least one image.

    Args:
        train: sorted indices of the training split.
        labels: labels of all images.
        fraction: share to keep, in (0, 1]; 1 returns ``train`` unchanged.
        seed: the split seed.

    Returns:
        Sorted int64 indices, a subset of ``train``.
    """
    if fraction >= 1.0:
        return train
    keep = []
    train_labels = labels[train]
    for c in np.unique(train_labels):
        members = train[train_labels == c]
        order = np.random.default_rng([seed, _SUBSAMPLE_SALT, int(c)]).permutation(len(members))
        k = max(1, int(round(len(members) * fraction)))
        keep.append(members[order[:k]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def class_counts(labels: np.ndarray, splits: dict[str, np.ndarray], num_classes: int) -> dict[str, list[int]]:
    """Images per class in each split: ``{"train": [n0, n1, ...], "val": [...], "test": [...]}``."""
    return {name: np.bincount(labels[splits[name]], minlength=num_classes).tolist() for name in SPLITS}


def check_class_presence(labels: np.ndarray, splits: dict[str, np.ndarray], class_names: list[str]) -> None:
    """Refuse splits a classifier cannot learn from or be scored on.

    Rules: train and val each hold at least 2 classes, and every class that val or test
    holds is also in train. A train or val split of one class still trains without an
    error, but its AUC is NaN, so a whole study would end "completed" with nothing
    learned or measured; a class only val/test hold is one the model never saw. Classes
    with no image in any split are not refused here (the loader warns about them).
    ``train_fraction`` cannot break these rules: :func:`subsample_train` keeps at least
    one image of every class, so the check gives the same answer before and after it.

    Raises:
        DataError: naming the split, the per-split class counts and what to change.
    """
    k = len(class_names)
    counts = class_counts(labels, splits, k)
    problems = []
    for name in ("train", "val"):
        present = [c for c in range(k) if counts[name][c]]
        if len(present) < 2:
            which = f"only class {class_names[present[0]]!r}" if present else "no class"
            problems.append(f"the {name} split has {which} ({len(present)} of {k} classes present)")
    unseen = [c for c in range(k) if not counts["train"][c] and (counts["val"][c] or counts["test"][c])]
    if unseen:
        problems.append(f"classes {[class_names[c] for c in unseen]} are in val/test but absent from train")
    if not problems:
        return
    table = "; ".join(f"{name} " + ", ".join(f"{class_names[c]}: {counts[name][c]}" for c in range(k))
                      for name in SPLITS)
    raise DataError(f"{'; '.join(problems)}: a classifier needs at least 2 classes in train and in val (with "
                    "one, val_auc is NaN and nothing is learned or measured) and must train on every class it "
                    f"is scored on. Images per class and split: {table}. "
                    "Fix: check `label_column` (the wrong column gives one class), add images of the "
                    "missing classes, or change the split (a larger val_fraction / test_fraction, or the "
                    "source's split column so every split holds every class)")


def units(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """What splits and folds move as a whole: single images, or the groups (patients).

    Returns:
        ``(unit_of, unit_label)``: each image's unit index, and each unit's stratum, its
        majority label.
    """
    if groups is None:
        return np.arange(len(labels)), labels
    _, unit_of = np.unique(groups.astype(str), return_inverse=True)
    counts = np.zeros((unit_of.max() + 1, labels.max() + 1), np.int64)
    np.add.at(counts, (unit_of, labels), 1)
    return unit_of, counts.argmax(axis=1)


def _carve(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float,
           test_fraction: float, seed: int) -> np.ndarray:
    """Split codes for a pool: whole units (groups, or single images) per label stratum.

    A unit's stratum is its majority label. Within each stratum the units are put in a
    seeded random order and taken for val until the stratum's val quota of images is
    reached, then for test, and the rest stay in train.
    """
    unit_of, unit_label = units(labels, groups)
    sizes = np.bincount(unit_of, minlength=len(unit_label))
    unit_code = np.full(len(unit_label), TRAIN, np.int8)
    for c in np.unique(unit_label):
        members = np.flatnonzero(unit_label == c)
        members = members[np.random.default_rng([seed, _SPLIT_SALT, int(c)]).permutation(len(members))]
        total = int(sizes[members].sum())
        position = 0
        for code, fraction in ((VAL, val_fraction), (TEST, test_fraction)):
            quota, filled = int(round(total * fraction)), 0
            while filled < quota and position < len(members):
                unit_code[members[position]] = code
                filled += int(sizes[members[position]])
                position += 1
    return unit_code[unit_of]


def groups_across_source_splits(source_split: np.ndarray | None, groups: np.ndarray | None) -> list[str]:
    """Group ids that occur in more than one of the splits the source itself defines.

    The source's own split is taken as given, so these are reported, not fixed: some
    datasets number patients separately per official split (Kermany's ``person1`` in
    train and ``person1`` in test are different children, one bacterial, one viral).
    """
    if source_split is None or groups is None:
        return []
    first: dict[str, int] = {}
    crossing = set()
    for code, group in zip(source_split.tolist(), groups.astype(str).tolist()):
        if first.setdefault(group, code) != code:
            crossing.add(group)
    return sorted(crossing)


__all__ = ["SPLITS", "TRAIN", "VAL", "TEST", "split_code", "make_splits", "subsample_train",
           "class_counts", "check_class_presence", "groups_across_source_splits", "units"]
