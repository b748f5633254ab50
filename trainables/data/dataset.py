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
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from ..config import DataConfig
from . import cache
from .decode import DECODER_VERSION, BlankRule, Decoded, convert_arrays, decode_files
from .errors import DataError, DataWarning
from .medmnist import ensure_medmnist, known_file
from .sources import Manifest, missing_source_error, open_source, resolve_data_path
from .splits import SPLITS, groups_across_source_splits, make_splits, subsample_train

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


def load_dataset(config: DataConfig) -> ImageDataset:
    """Load, decode (once, cached) and split the images a :class:`DataConfig` describes.

    Args:
        config: a :class:`trainables.config.DataConfig`.

    Returns:
        The decoded dataset with its deterministic split.

    Raises:
        DataError: any problem with the settings or the data, raised before decoding
            where possible; the message names the file, column or value and the fix.

    Warns:
        DataWarning: once, when unreadable or blank images were skipped (with counts
            and example paths).
    """
    _check_config(config)
    path = _find_source(config.source)
    manifest = open_source(path, config)
    try:
        settings = _decode_settings(manifest, config)
        key = cache.cache_key(cache.content_digest(manifest.hash_files), settings)
        root = cache.cache_root(config.cache_dir)
        data = cache.load(root, key)
        from_cache = data is not None
        if data is None:
            _split(manifest.labels, manifest.split, manifest.groups, config)  # fail before decoding
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
    splits = _split(data.labels, data.split, data.groups, config)
    crossing = groups_across_source_splits(data.split, data.groups)
    if crossing:
        logger.info("%d group ids occur in more than one of the source's own splits (e.g. %s); the "
                    "source's split is kept as given", len(crossing), crossing[:3])
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
    )


def _split(labels: np.ndarray, source_split: np.ndarray | None, groups: np.ndarray | None,
           config: DataConfig) -> dict[str, np.ndarray]:
    splits = make_splits(labels, source_split, groups, val_fraction=config.val_fraction,
                         test_fraction=config.test_fraction, seed=config.seed)
    splits["train"] = subsample_train(splits["train"], labels, config.train_fraction, config.seed)
    return splits


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
                              channels=config.channels, blank=rule)
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
    """Range checks that need no data, stated as rules with the offending value."""

    def rule(ok: bool, text: str) -> None:
        if not ok:
            raise DataError(text)

    vf, tf, trf = config.val_fraction, config.test_fraction, config.train_fraction
    rule(0.0 <= vf < 1.0, f"`0 <= val_fraction < 1` must hold, but got val_fraction={vf}")
    rule(0.0 <= tf < 1.0, f"`0 <= test_fraction < 1` must hold, but got test_fraction={tf}")
    rule(vf + tf < 1.0, f"`val_fraction + test_fraction < 1` must hold, but got {vf} + {tf}")
    rule(0.0 < trf <= 1.0 and not math.isnan(trf),
         f"`0 < train_fraction <= 1` must hold, but got train_fraction={trf}")
    rule(isinstance(config.seed, int) and config.seed >= 0,
         f"`seed` must be an integer >= 0, but got seed={config.seed!r}")
    size = config.image_size
    rule(size is None or (isinstance(size, int) and size >= 1),
         f"`image_size` must be null (native size) or an integer >= 1, but got image_size={size!r}")
    rule(config.channels in (None, 1, 3), f"`channels` must be null, 1 or 3, but got channels={config.channels!r}")
    rule(0 <= config.blank_black < config.blank_white <= 255,
         f"`0 <= blank_black < blank_white <= 255` must hold, but got blank_black={config.blank_black}, "
         f"blank_white={config.blank_white}")
    rule(config.blank_max_std >= 0, f"`blank_max_std >= 0` must hold, but got {config.blank_max_std}")


__all__ = ["ImageDataset", "load_dataset"]
