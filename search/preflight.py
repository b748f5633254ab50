"""Checks that need more than the YAML itself, run before Ray starts.

The data source exists, every backbone named in the space exists in timm (or is a
scratch baseline), weights files exist, and stage indices fit the backbones.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from search.space import Space, SpaceError
from trainables.config import TrialConfig
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
    from trainables.models import ModelError, check_model_config, list_backbones
    from trainables.models.scratch import SCRATCH_MODELS as scratch_names

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
    # The model settings fixed in `params`, for every backbone the space can produce
    # (searched stage indices are clipped per trial, so they are checked at 0 here).
    searched = set(space.search)
    for key, name in backbones_of(space):
        values = {**space.default_params(), "backbone": name}
        values.update({k: (0 if k == "frozen_stages" else None) for k in ("frozen_stages", "truncate_after") if k in searched})
        if "pretrained" in searched and name in scratch_names:
            values["pretrained"] = False
        try:
            check_model_config(TrialConfig.from_dict(values))
        except ModelError as err:
            where = next((f"params.{k}" for k in ("pretrained", "frozen_stages", "truncate_after")
                          if k in space.params and k.split("_")[0] in str(err)), key)
            raise SpaceError(space.path, where, str(err)) from None
