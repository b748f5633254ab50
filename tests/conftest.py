"""Shared pytest fixtures: where the real data is, and a throwaway cache per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def _data_root() -> Path:
    env = os.environ.get("MEDTUNE_DATA")
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real-data folder: ``$MEDTUNE_DATA``, else ``../shared/data`` beside the repo."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"real test data not found at {root}; set MEDTUNE_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session", autouse=True)
def medtune_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point MEDTUNE_CACHE at a fresh folder for the session (tests never touch ~/.cache),
    and MEDTUNE_DATA at the real data so relative sources resolve. Yields the cache folder."""
    cache = tmp_path_factory.mktemp("medtune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDTUNE_CACHE", str(cache))
        if _data_root().is_dir():
            patch.setenv("MEDTUNE_DATA", str(_data_root()))
        yield cache
