"""Per-epoch checkpoints that resume a trial exactly.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values
(epoch, model, optimizer, schedule, every RNG state, config, metric history), so it
loads with ``weights_only=True``: opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically and return the path.

    The file is written beside its final name and renamed, so a trial killed mid-write
    leaves the previous checkpoint intact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file, or ``checkpoint.pt`` inside a directory, safely."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a trial's checkpoint directory or its {CHECKPOINT_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)
