"""On-disk cache of decoded datasets, keyed by content, written atomically.

The key is a SHA-256 over the source's bytes and every setting that changes the decoded
arrays (never over paths or mtimes), so a renamed copy of the data hits the cache and an
edited image misses it. Splitting is not part of the key: changing the seed, fractions or
``train_fraction`` reuses the decoded arrays.

Each entry is a directory written under a temporary name and renamed into place in one
step, so concurrent trials or processes never read a half-written entry; if two
processes decode the same data at once, the first rename wins and the other is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_FORMAT = 1  # layout of an entry on disk


@dataclass
class CachedData:
    """What a cache entry holds: decoded images plus per-image metadata.

    Attributes:
        images: uint8 ``(N, H, W, C)``.
        labels: int64 ``(N,)``.
        paths: per image, its name in the source.
        split: the source's own split codes ``(N,)`` int8, or None.
        groups: group ids ``(N,)``, or None.
        class_names: index = label.
        skipped: ``{"unreadable": n, "blank": m}``.
        examples: a few skipped paths per reason, for the warning.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    split: np.ndarray | None
    groups: np.ndarray | None
    class_names: list[str]
    skipped: dict[str, int]
    examples: dict[str, list[str]]


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$MEDTUNE_CACHE``, else ``~/.cache/medtune``."""
    chosen = cache_dir or os.environ.get("MEDTUNE_CACHE") or "~/.cache/medtune"
    return Path(os.path.expanduser(chosen))


def content_digest(files: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 over ``(name, bytes)`` of each file, in the order given.

    Names are relative paths (or roles like ``"zip"``), so moving the data elsewhere keeps
    the digest. A missing file contributes a marker instead of failing: it is reported
    later as unreadable, like a corrupt one.
    """
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0")
        try:
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            digest.update(b"\0missing\0")
        digest.update(b"\0end\0")
    return digest.hexdigest()


def cache_key(digest: str, settings: dict[str, Any]) -> str:
    """Key of one decoded dataset: the content digest plus the decode settings."""
    blob = json.dumps({"content": digest, "settings": settings, "format": _FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_dir(root: Path, key: str) -> Path:
    """The directory of one cache entry."""
    return root / "decoded" / key[:40]


def load(root: Path, key: str) -> CachedData | None:
    """The cached data for ``key``, or None when absent or unreadable (then it is rebuilt).

    ``images`` is a plain ndarray over a copy-on-write map of the entry's ``images.npy``.
    """
    entry = entry_dir(root, key)
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != key:
            raise ValueError("key mismatch")
        # Copy-on-write memory map: a hit costs no read up front, processes on one node
        # share the page cache, and writes (never expected) stay private to the process.
        images = np.asarray(np.load(entry / "images.npy", mmap_mode="c", allow_pickle=False))
        index = np.load(entry / "index.npz", allow_pickle=False)
        labels = index["labels"]
        if images.shape[0] != len(labels) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images {images.dtype} {images.shape} do not match {len(labels)} labels")
        return CachedData(
            images=images,
            labels=labels.astype(np.int64),
            paths=index["paths"],
            split=index["split"] if "split" in index.files else None,
            groups=index["groups"] if "groups" in index.files else None,
            class_names=list(meta["class_names"]),
            skipped={k: int(v) for k, v in meta["skipped"].items()},
            examples={k: list(v) for k, v in meta["examples"].items()},
        )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        logger.warning("ignoring broken cache entry %s (%s); decoding again", entry, exc)
        _remove(entry)
        return None


def save(root: Path, key: str, data: CachedData, settings: dict[str, Any]) -> Path | None:
    """Write an entry atomically; returns its directory, or None if the cache is not writable.

    A read-only or full cache disk is not an error: the study runs, only uncached.
    """
    entry = entry_dir(root, key)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "images.npy", np.ascontiguousarray(data.images), allow_pickle=False)
        arrays = {"labels": data.labels, "paths": np.asarray(data.paths, dtype=str)}
        if data.split is not None:
            arrays["split"] = data.split
        if data.groups is not None:
            arrays["groups"] = np.asarray(data.groups, dtype=str)
        np.savez(tmp / "index.npz", **arrays)
        meta = {"key": key, "settings": settings, "class_names": data.class_names,
                "skipped": data.skipped, "examples": data.examples,
                "shape": list(data.images.shape)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, entry)  # atomic; fails if another process got there first
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
            logger.info("cache entry %s was written concurrently; keeping that one", entry)
            _remove(tmp)
        return entry
    except OSError as exc:
        logger.warning("could not write the data cache at %s (%s); continuing without it. Set "
                       "cache_dir or MEDTUNE_CACHE to a writable folder to avoid decoding again", root, exc)
        _remove(tmp)
        return None


def _remove(path: Path) -> None:
    """Delete a directory without racing readers: rename it away first."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


__all__ = ["CachedData", "cache_root", "content_digest", "cache_key", "entry_dir", "load", "save"]
