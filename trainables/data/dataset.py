"""``load_dataset``: from a :class:`DataConfig` to decoded, split, cached arrays.

The pipeline is linear on purpose: check the settings, find the source (downloading a
known MedMNIST file if it is missing), read its manifest (all cheap checks happen here),
hash its content, decode once or load the decoded arrays from the cache, then split.
Splitting comes after the cache so that a different seed or ``train_fraction`` never
decodes again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from ..config import DataConfig
from . import cache
from .decode import (
    DECODER_VERSION,
    BlankRule,
    Decoded,
    convert_arrays,
    decode_files,
)
from .errors import DataError, DataWarning
from .medmnist import ensure_medmnist, known_file
from .sources import (
    Manifest,
    is_under_data_root,
    missing_source_error,
    open_source,
    resolve_data_path,
)
from .splits import (
    SPLITS,
    check_class_presence,
    groups_across_source_splits,
    make_splits,
    subsample_train,
)

logger = logging.getLogger(__name__)

_EXAMPLES = 3


@dataclass(repr=False)
class ImageDataset:
    """A labelled image set decoded into memory, with its fixed train/val/test split.

    Attributes:
        images: uint8 ``(N, H, W, C)``, C in {1, 3}, C-contiguous, all the same size.
        labels: int64 ``(N,)`` class indices.
        splits: ``"train"``/``"val"``/``"test"`` -> sorted int64 indices into ``images``;
            disjoint. ``train`` already has ``train_fraction`` applied.
        class_names: index = label.
        groups: group id per image when a group column was used, else None.
        fingerprint: hex digest of the decoded content, decode settings and split; the
            same data and config give the same string in every process.
        skipped: ``{"unreadable": n, "blank": m}`` images left out while decoding.
        source: the resolved source path.
        paths: per image, its path (or member name) in the source, for reports.
        from_cache: True when the arrays came from the on-disk cache, not a decode.
        content_digest: digest of the source's bytes as these settings read it (file
            names relative to the source, so a copy elsewhere has the same digest).
        group_overlap: how many group ids occur in more than one of the source's own
            splits; always 0 unless ``allow_group_overlap`` accepted them (a DataWarning
            says so too). Log it with the study: a non-zero value may mean leakage.

    Example:
        >>> ds = load_dataset(DataConfig(source="medmnist/pneumoniamnist.npz"))  # doctest: +SKIP
        >>> ds.split_sizes(), ds.num_classes, ds.channels  # doctest: +SKIP
        ({'train': 4708, 'val': 524, 'test': 624}, 2, 1)
    """

    images: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    class_names: list[str]
    groups: np.ndarray | None
    fingerprint: str
    skipped: dict[str, int]
    source: str
    paths: np.ndarray | None = None
    from_cache: bool = False
    group_overlap: int = 0
    content_digest: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``class_names``)."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """1 (grayscale) or 3 (RGB)."""
        return int(self.images.shape[-1])

    def split_sizes(self) -> dict[str, int]:
        """Images per split, e.g. ``{"train": 4708, "val": 524, "test": 624}``."""
        return {name: int(len(self.splits[name])) for name in SPLITS}

    def __repr__(self) -> str:
        n, h, w, c = self.images.shape
        return (f"ImageDataset(source={self.source!r}, images={n}x{h}x{w}x{c}, classes={self.class_names}, "
                f"splits={self.split_sizes()}, skipped={self.skipped}, fingerprint={self.fingerprint[:12]})")


def load_dataset(config: DataConfig, require_classes: bool = True) -> ImageDataset:
    """Load, decode (once, cached) and split the images a :class:`DataConfig` describes.

    Args:
        config: a :class:`trainables.config.DataConfig`.
        require_classes: refuse splits that lack classes (a study needs them; predicting
            on a folder of one class does not).

    Returns:
        The decoded dataset with its deterministic split.

    Raises:
        DataError: any problem with the settings or the data, raised before decoding
            where possible; the message names the file, column or value and the fix.
            Among them: a train or val split with fewer than 2 classes, or a val/test
            class absent from train; group ids shared by the source's own splits (unless
            ``allow_group_overlap``); a decoded array larger than the memory available.

    Warns:
        DataWarning: once, when unreadable or blank images were skipped (with counts
            and example paths); once, when ``allow_group_overlap`` accepted group ids
            shared by the source's own splits.
    """
    _check_config(config)
    path = _find_source(config.source)
    manifest = open_source(path, config)
    try:
        settings = _decode_settings(manifest, config)
        digest = cache.content_digest(manifest.hash_files)
        key = cache.cache_key(digest, settings)
        root = cache.cache_root(config.cache_dir)
        data = cache.load(root, key)
        from_cache = data is not None
        if data is None:  # every check that needs no pixels fails here, before decoding
            _split(manifest.labels, manifest.split, manifest.groups, manifest.class_names, config, require_classes)
            _group_overlap(manifest.split, manifest.groups, config, path, warn=False)
            data = _decode(manifest, config)
            cache.save(root, key, data, settings)
    finally:
        manifest.close()
    if from_cache:
        logger.info("loaded %d decoded images of %s from the cache (%s)", len(data.labels), path,
                    cache.entry_dir(root, key))
    _warn_skipped(data, path, config)

    unused = sorted(set(range(len(data.class_names))) - set(np.unique(data.labels).tolist()))
    if unused:
        logger.warning("classes %s (%s) have no images in %s; labels should run 0..K-1", unused,
                       [data.class_names[i] for i in unused], path)
    splits = _split(data.labels, data.split, data.groups, data.class_names, config, require_classes)
    overlap = _group_overlap(data.split, data.groups, config, path, warn=True)
    return ImageDataset(
        images=data.images,
        labels=data.labels,
        splits=splits,
        class_names=data.class_names,
        groups=data.groups,
        fingerprint=_fingerprint(key, splits),
        skipped=dict(data.skipped),
        source=str(path),
        paths=data.paths,
        from_cache=from_cache,
        group_overlap=overlap,
        content_digest=digest,
    )


def describe(data: ImageDataset) -> str:
    """The one-line summary of a loaded dataset that the CLI prints and the study logs.

    Example: ``data /data/medmnist/pneumoniamnist.npz: train 4708, val 524, test 624;
    28x28x1, 2 classes``. The path is absolute with ``..`` collapsed, so a ``source``
    that climbs out of ``$MEDTUNE_DATA`` shows where it really points; such a path gets
    `` (outside $MEDTUNE_DATA)`` at the end (allowed, but the study then depends on
    files beyond the data folder). Skipped images (``; skipped 3 unreadable, 1 blank``)
    and accepted group overlaps (``; 170 group ids in several source splits``) are
    added when there are any, so the one line says what the study trained on.
    """
    source = os.path.normpath(os.path.abspath(data.source))
    sizes = ", ".join(f"{name} {count}" for name, count in data.split_sizes().items())
    _, height, width, channels = data.images.shape
    line = f"data {source}: {sizes}; {height}x{width}x{channels}, {data.num_classes} classes"
    skipped = [f"{count} {reason}" for reason, count in data.skipped.items() if count]
    if skipped:
        line += "; skipped " + ", ".join(skipped)
    if data.group_overlap:
        line += f"; {data.group_overlap} group ids in several source splits (allow_group_overlap)"
    if not is_under_data_root(source):
        line += " (outside $MEDTUNE_DATA)"
    return line


def _split(labels: np.ndarray, source_split: np.ndarray | None, groups: np.ndarray | None,
           class_names: list[str], config: DataConfig, require_classes: bool = True) -> dict[str, np.ndarray]:
    """The split, subsampled by ``train_fraction``, refused (``require_classes``) when a
    split lacks classes."""
    splits = make_splits(labels, source_split, groups, val_fraction=config.val_fraction,
                         test_fraction=config.test_fraction, seed=config.seed)
    splits["train"] = subsample_train(splits["train"], labels, config.train_fraction, config.seed)
    if require_classes:
        check_class_presence(labels, splits, class_names)
    return splits


def _group_overlap(source_split: np.ndarray | None, groups: np.ndarray | None, config: DataConfig,
                   path: Path, *, warn: bool) -> int:
    """Refuse group ids that the source's own split puts in two splits, unless allowed.

    The same patient in train and test leaks: the model is scored on a patient it has
    trained on. Some sources number patients per official split, so the ids only look
    shared (Kermany's ``person1`` in train and in test are different children); then
    ``allow_group_overlap: true`` keeps the split as given, with a warning.

    Returns:
        How many group ids are shared (0 when none, or when there are no groups).
    """
    crossing = groups_across_source_splits(source_split, groups)
    if not crossing:
        return 0
    assert source_split is not None and groups is not None
    ids = groups.astype(str)
    examples = []
    for group in crossing[:_EXAMPLES]:
        codes = sorted(set(source_split[ids == group].tolist()))
        examples.append(f"{group!r} in {' and '.join(SPLITS[c] for c in codes)}")
    what = (f"{len(crossing)} group ids in column {config.group_column!r} occur in more than one of the "
            f"splits {path} itself defines (e.g. {', '.join(examples)})")
    if not config.allow_group_overlap:
        raise DataError(f"{what}: the same patient in two splits leaks, and the test score comes out "
                        "inflated. Fix the split column so each group sits in one split, or, if the ids "
                        "are only unique within a split (as in Kermany, which numbers patients per "
                        "official split), set data.allow_group_overlap: true to keep the split as given")
    if warn:
        warnings.warn(f"{what}; kept as given because data.allow_group_overlap is true: if they are the "
                      "same patients, test scores are inflated", DataWarning, stacklevel=3)
    return len(crossing)


def _find_source(raw: str) -> Path:
    """Resolve the source path; fetch a known MedMNIST file that is missing."""
    if not raw or not str(raw).strip():
        raise DataError("data `source` is empty; give a .npz, .csv, .zip or image folder path")
    path = resolve_data_path(raw)
    if path.exists():
        return path
    if path.suffix == ".npz" and known_file(path.name) is not None:
        return ensure_medmnist(path)
    raise missing_source_error(str(raw), path)


def _decode_settings(manifest: Manifest, config: DataConfig) -> dict[str, Any]:
    """Everything besides the bytes that changes the decoded arrays: the cache key's other half."""
    return {
        "decoder": DECODER_VERSION,
        "pillow": PIL.__version__,
        "format": manifest.format,
        "layout": manifest.key,
        "image_size": config.image_size,
        "channels": config.channels,
        "blank": [config.blank_white, config.blank_black, config.blank_max_std] if config.blank_filter else None,
        **({"window": list(config.window)} if config.window else {}),  # absent when unset: old cache keys hold
    }


def _decode(manifest: Manifest, config: DataConfig) -> cache.CachedData:
    rule = (BlankRule(config.blank_white, config.blank_black, config.blank_max_std)
            if config.blank_filter else None)
    n = len(manifest.paths)
    if manifest.arrays is not None:
        result: Decoded = convert_arrays(manifest.arrays, image_size=config.image_size,
                                         channels=config.channels, blank=rule)
    elif manifest.read is not None:
        result = decode_files(manifest.read, manifest.paths, image_size=config.image_size,
                              channels=config.channels, blank=rule, window=tuple(config.window) or None)
    else:
        raise DataError(f"{manifest.source}: nothing to decode (format {manifest.format!r})")
    logger.info("decoded %d images of %s in %.1f s (%d unreadable, %d blank)", n, manifest.source,
                result.seconds, len(result.unreadable), len(result.blank))
    paths = np.asarray(manifest.paths, dtype=str)
    if len(result.kept) == 0:
        reasons = list(result.unreadable.items())[:_EXAMPLES]
        detail = "; ".join(f"{paths[i]}: {why}" for i, why in reasons) or "all were blank"
        raise DataError(f"none of the {n} images of {manifest.source} could be used "
                        f"({len(result.unreadable)} unreadable, {len(result.blank)} blank), e.g. {detail}; "
                        "check that the files are images, or set blank_filter: false if they are "
                        "legitimately uniform")
    kept = result.kept
    return cache.CachedData(
        images=result.images,
        labels=manifest.labels[kept],
        paths=paths[kept],
        split=manifest.split[kept] if manifest.split is not None else None,
        groups=manifest.groups[kept] if manifest.groups is not None else None,
        class_names=list(manifest.class_names),
        skipped={"unreadable": len(result.unreadable), "blank": len(result.blank)},
        examples={
            "unreadable": [f"{paths[i]} ({why})" for i, why in list(result.unreadable.items())[:_EXAMPLES]],
            "blank": [str(paths[i]) for i in result.blank[:_EXAMPLES]],
        },
    )


def _warn_skipped(data: cache.CachedData, path: Path, config: DataConfig) -> None:
    """One warning for everything skipped, with counts and a few example paths."""
    unreadable, blank = data.skipped.get("unreadable", 0), data.skipped.get("blank", 0)
    if not unreadable and not blank:
        return
    total = len(data.labels) + unreadable + blank
    parts = []
    if unreadable:
        parts.append(f"{unreadable} unreadable (e.g. {', '.join(data.examples.get('unreadable', []))})")
    if blank:
        parts.append(f"{blank} near-blank (e.g. {', '.join(data.examples.get('blank', []))}; blank = "
                     f"mean >= {config.blank_white:g} or <= {config.blank_black:g} with spatial std <= "
                     f"{config.blank_max_std:g}, set blank_filter: false to keep them)")
    warnings.warn(f"skipped {unreadable + blank} of {total} images in {path}: " + "; ".join(parts),
                  DataWarning, stacklevel=3)


def _fingerprint(key: str, splits: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(key.encode())
    for name in SPLITS:
        digest.update(name.encode() + b":" + np.ascontiguousarray(splits[name], dtype="<i8").tobytes())
    return digest.hexdigest()


def _check_config(config: DataConfig) -> None:
    """The settings' own rules (a DataConfig checks them when built: this catches one that
    skipped that, such as an unpickled copy)."""
    try:
        config.validate()
    except ValueError as err:
        raise DataError(str(err)) from None


__all__ = ["ImageDataset", "describe", "load_dataset"]
