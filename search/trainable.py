"""The Ray Tune function trainable: one trial of a study, wrapped around ``run_trial``.

The decoded dataset arrives through ``tune.with_parameters``, i.e. Ray's object store:
one copy per node, shared read-only by every trial on it. Each epoch's checkpoint goes to
Tune with the epoch's report, so ``training_iteration`` equals the epoch and a retried or
resumed trial continues from its last epoch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune import Checkpoint

from trainables.config import TrialConfig
from trainables.data import ImageDataset
from trainables.trial import run_trial


def trial_config(sampled: dict[str, Any], fixed: dict[str, Any]) -> TrialConfig:
    """The typed config of a trial: the space's fixed params overridden by sampled ones."""
    return TrialConfig.from_dict({**fixed, **sampled})


def train(config: dict[str, Any], data: ImageDataset, fixed: dict[str, Any], ended_dir: str) -> None:
    """Run one trial inside a Tune worker, reporting once per epoch with a checkpoint.

    ``ended_dir`` holds a marker per trial the driver saw end. Tune's experiment snapshot
    can lag the driver by a moment, so after a killed driver ``--resume`` may restart a
    trial that had in fact finished; the marker makes it return at once instead of
    training (and being logged) a second time.
    """
    if os.path.exists(os.path.join(ended_dir, tune.get_context().get_trial_id())):
        return
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
    settings = trial_config(config, fixed)
    with tempfile.TemporaryDirectory(prefix="medtune-trial-") as tmp:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume = Path(checkpoint.to_directory(os.path.join(tmp, "resume")))

        def report(metrics: dict[str, float], directory: Path | None) -> None:
            tune.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)) if directory else None)

        run_trial(settings, data, report=report, checkpoint_dir=os.path.join(tmp, "checkpoint"), resume_from=resume)
