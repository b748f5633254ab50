"""The Ray Tune function trainable: one trial of a study, wrapped around ``run_trial``.

The decoded dataset arrives through ``tune.with_parameters``, i.e. Ray's object store:
one copy per node, shared read-only by every trial on it. Each epoch's checkpoint goes to
Tune with the epoch's report, so ``training_iteration`` equals the epoch and a retried or
resumed trial continues from its last epoch.

On a cluster this function runs on a worker machine: it writes nothing but what it
hands to Tune (metrics, checkpoints), which Tune puts in the study's shared storage, and
it reads nothing from the driver's disk.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from trainables.config import TrialConfig
from trainables.data import DataError, ImageDataset
from trainables.models import ModelError
from trainables.trial import NonFiniteLossError, TrialSetupError, run_trial

# The result key of a trial that failed in a way a retry would repeat (see DETERMINISTIC_ERRORS).
FAILURE_KEY = "medtune_failure"

# Failures that come from the trial's configuration or data, not from the machine: a
# retry from the last checkpoint (tune.max_failures) would fail the same way, so they
# are reported as the trial's last result instead of raised (Tune retries every raised
# error alike). Lost nodes, out-of-memory kills and other crashes are still raised.
DETERMINISTIC_ERRORS = (NonFiniteLossError, TrialSetupError, ModelError, DataError)

def trial_config(sampled: dict[str, Any], fixed: dict[str, Any]) -> TrialConfig:
    """The typed config of a trial: the space's fixed params overridden by sampled ones."""
    return TrialConfig.from_dict({**fixed, **sampled})


def train(config: dict[str, Any], data: ImageDataset, fixed: dict[str, Any],
          ended: frozenset[str] = frozenset()) -> None:
    """Run one trial inside a Tune worker, reporting once per epoch with a checkpoint.

    ``ended`` holds the trials the driver had seen end before this (resumed) run started,
    read from MLflow. Tune's experiment snapshot can lag the driver by a moment, so after a
    killed driver ``--resume`` may restart a trial that had in fact finished; it then
    returns at once instead of training (and being logged) a second time.

    Every report carries ``node_id``, the Ray node the epoch ran on (the driver tags the
    trial's MLflow run with it).
    """
    if tune.get_context().get_trial_id() in ended:
        return
    node_id = ray.get_runtime_context().get_node_id()
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
    last_epoch = 0

    def report(metrics: dict[str, float], directory: Path | None) -> None:
        nonlocal last_epoch
        last_epoch = int(metrics.get("epoch", last_epoch))
        # reported_at: Tune's own ``timestamp`` is whole seconds; benchmarks need finer.
        tune.report({**metrics, "node_id": node_id, "reported_at": time.time()},
                    checkpoint=Checkpoint.from_directory(str(directory)) if directory else None)

    try:
        try:
            settings = trial_config(config, fixed)
        except ValueError as err:
            raise TrialSetupError(str(err)) from None
        with tempfile.TemporaryDirectory(prefix="medtune-trial-") as tmp:
            checkpoint = tune.get_checkpoint()
            resume = Path(checkpoint.to_directory(os.path.join(tmp, "resume"))) if checkpoint is not None else None
            run_trial(settings, data, report=report, checkpoint_dir=os.path.join(tmp, "checkpoint"),
                      resume_from=resume)
    except DETERMINISTIC_ERRORS as err:
        report_failure(err, last_epoch)


def report_failure(err: BaseException, epoch: int) -> None:
    """End the trial with a result that says it failed (see ``DETERMINISTIC_ERRORS``).

    Every metric a study can rank by is NaN: Optuna records a NaN objective as a failed
    trial, and ASHA leaves NaN out of its rungs.
    """
    import traceback

    from search.space import SEARCH_METRICS

    trace = "".join(traceback.format_exception(err))
    tune.report({**{key: float("nan") for key in SEARCH_METRICS}, FAILURE_KEY: trace, "epoch": epoch})
