"""Checks that need more than the YAML itself, run before Ray starts.

The data source exists, every backbone named in the space exists in timm (or is a
scratch baseline), weights files exist, and stage indices fit the backbones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from search.space import Space, SpaceError
from trainables.data.medmnist import known_file


def backbones_of(space: Space) -> list[tuple[str, Any]]:
    """``(key path, name)`` of every backbone the space can produce."""
    if "backbone" in space.params:
        return [("params.backbone", space.params["backbone"])]
    if "backbone" in space.search:
        dist = space.search["backbone"]
        if dist.kind != "choice":
            raise SpaceError(space.path, "search.backbone", "must be a choice of backbone names", "write `choice: [resnet18, cnn3]`")
        return [("search.backbone", name) for name in dist.values]
    return [("params.backbone", "cnn3")]


def check_space(space: Space) -> None:
    """Raise :class:`SpaceError` for the first problem found, with the key and the fix."""
    from trainables.models import backbone_stages, list_backbones

    source = Path(space.data.source)
    if not source.exists() and known_file(source.name) is None:
        raise SpaceError(space.path, "data.source", f"{source} does not exist",
                         "put the file there or set MEDTUNE_DATA to the folder that holds it")
    known = set(list_backbones())
    for key, name in backbones_of(space):
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=3, cutoff=0.6)
            raise SpaceError(space.path, key, f"unknown backbone {name!r}",
                             f"close matches: {', '.join(close)}" if close else "see timm.list_models() or use cnn3/cnn9")
    pretrained = space.params.get("pretrained")
    if isinstance(pretrained, str) and pretrained.lower() not in ("hub", "none", "true", "false", "imagenet"):
        if not Path(pretrained).expanduser().is_file():
            raise SpaceError(space.path, "params.pretrained", f"weights file {pretrained} does not exist",
                             "give a .safetensors/.pth path, true for ImageNet weights, or false")
    min_stages = min(backbone_stages(name) for _, name in backbones_of(space))
    for key in ("frozen_stages", "truncate_after"):
        value = space.params.get(key)
        limit = min_stages if key == "frozen_stages" else min_stages - 1
        if isinstance(value, int) and value > limit:
            raise SpaceError(space.path, f"params.{key}", f"{value} exceeds what the backbones allow ({limit})",
                             f"use a value in 0..{limit} or search it with `int: [0, {limit}]` (clipped per backbone)")
