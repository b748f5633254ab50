"""Checks that need more than the YAML itself, run before Ray starts.

The data source exists, every backbone named in the space exists in timm (or is a
scratch baseline), every local weights file holds weights the backbones it can meet will
load, and stage indices fit the backbones. A problem found here costs a second; found
inside a Ray trial it costs a cluster start and surfaces as a trial failure.
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


def weights_files_of(space: Space) -> list[tuple[str, Path, list[str]]]:
    """``(key path, file, backbones)`` of every local weights file the space can produce.

    A fixed ``params.pretrained`` file meets every backbone of the space. A file among the
    ``search.pretrained`` choices meets only the timm backbones that its ``when`` condition
    on ``backbone`` (if any) allows: the sampler never sets ``pretrained`` for a scratch
    baseline (:class:`search.space.sampling.DefineByRun`).
    """
    from trainables.models.backbone import pretrained_mode
    from trainables.models.scratch import SCRATCH_MODELS

    names = [name for _, name in backbones_of(space)]
    files: list[tuple[str, Path, list[str]]] = []
    if "pretrained" in space.params:
        mode = pretrained_mode(space.params["pretrained"])
        if isinstance(mode, Path):
            files.append(("params.pretrained", mode, names))
    dist = space.search.get("pretrained")
    if dist is not None and dist.kind == "choice":
        allowed = dict(dist.when).get("backbone")
        met = [n for n in names if n not in SCRATCH_MODELS and (allowed is None or n in allowed)]
        for value in dist.values:
            mode = pretrained_mode(value)
            if isinstance(mode, Path) and met:
                files.append(("search.pretrained", mode, met))
    return files


def check_weights(space: Space) -> None:
    """Open every local weights file of the space and match it to its backbones.

    Raises:
        SpaceError: at ``params.pretrained`` / ``search.pretrained``, naming the file, what
            is wrong with it (missing, not weights, no tensors, another architecture) and
            the fix.
    """
    from trainables.models import ModelError
    from trainables.models.weights import check_weights_file

    in_chans = space.params.get("in_chans")  # None when searched or taken from the data
    for key, path, names in weights_files_of(space):
        for name in dict.fromkeys(names):
            try:
                check_weights_file(path, name, in_chans if isinstance(in_chans, int) else None)
            except ModelError as err:
                fix = ("remove the file from the choice or restrict it with `when: {backbone: [...]}`"
                       if key == "search.pretrained" and len(names) > 1 else "")
                raise SpaceError(space.path, key, str(err), fix) from None


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
    check_weights(space)
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
