"""Every private Ray Tune internal medtune relies on, in one place, for one Ray version.

Ray Tune has no public hook for what a trustworthy study needs: an experiment snapshot
right after a trial starts or ends, ASHA rungs that survive a driver restart, and knowing
that ``fit()`` returned because of a Ctrl-C. medtune reaches into Tune for those here and
nowhere else, and refuses to run on a Ray it was not tested with (a silent change of any
of these would silently weaken resume). ``tests/test_ray_compat.py`` pins each contract
against the installed Ray, so a Ray upgrade fails there first. One other module leans on
Tune's private state, because it subclasses a Tune class: ``search.study.optuna_search``
extends ``OptunaSearch`` (its Optuna study, the trials it asked for and told, its storage),
pinned by the same tests.

To try another Ray anyway: ``MEDTUNE_ALLOW_UNTESTED_RAY=1``, then run the contract tests.
"""

from __future__ import annotations

import os
from typing import Any

# The Ray versions the contracts below were checked against (pyproject pins the same).
TESTED_RAY = ("2.60.0",)

# Ray Tune's own name for the pickled Tuner in a study folder
# (ray.tune.impl.tuner_internal._TUNER_PKL); ``Tuner.restore`` unpickles it.
from search.records.study_record import TUNER_PICKLE  # noqa: E402

# Tune settings read from the environment (ray.tune.constants / experiment_state).
TUNE_ENVIRONMENT = {
    # Tune warns at every forced snapshot (one per trial start and end): noise for a user.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Snapshot the experiment state every 2 s (small JSON) besides the forced ones.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # A trial that had already ended before a restart returns at once with no metrics
    # (search.study.trainable.train); Tune's strict check would stop the whole study.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


class UntestedRayError(RuntimeError):
    """The installed Ray is not one medtune's Tune internals were checked against."""


def check_ray_version(version: str | None = None) -> None:
    """Refuse an untested Ray before a study starts (see the module docstring).

    Raises:
        UntestedRayError: naming both versions and the two ways out.
    """
    if version is None:
        import ray

        version = ray.__version__
    if version in TESTED_RAY or os.environ.get("MEDTUNE_ALLOW_UNTESTED_RAY") == "1":
        return
    raise UntestedRayError(
        f"medtune was tested with Ray {', '.join(TESTED_RAY)}, but Ray {version} is installed; resuming a study "
        f"relies on Tune internals that change between versions: install ray[tune]=={TESTED_RAY[-1]} (as "
        "pyproject.toml pins), or set MEDTUNE_ALLOW_UNTESTED_RAY=1 and run `pytest tests/test_ray_compat.py` first")


def set_tune_environment() -> None:
    """Apply :data:`TUNE_ENVIRONMENT` (values the user exported win)."""
    for key, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def request_snapshot(tune_controller: Any) -> None:
    """Make Tune save its experiment state at the end of the current step.

    Sets the flag Tune itself sets when trials checkpoint often
    (``_ExperimentCheckpointManager._should_force_sync_up``); the controller saves after
    the step, so the snapshot already holds the trial's new status.
    """
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._checkpoint_manager._should_force_sync_up = True


def asha_rungs(scheduler: Any) -> list[list[tuple[float, dict[str, float]]]]:
    """ASHA's rungs, per bracket: ``(milestone, {trial_id: recorded metric})`` (live objects)."""
    return [list(bracket._rungs) for bracket in scheduler._brackets]


def asha_stopped(scheduler: Any) -> int:
    """How many trials ASHA has stopped."""
    return int(scheduler._num_stopped)


def set_asha_stopped(scheduler: Any, count: int) -> None:
    scheduler._num_stopped = count


def asha_metric(scheduler: Any) -> tuple[str, float]:
    """(the metric ASHA judges, +1 when larger is better, -1 when smaller is)."""
    return scheduler._metric, float(scheduler._metric_op)


def asha_knows(scheduler: Any, trial_id: str) -> bool:
    """Whether ASHA has assigned the trial to a bracket (a restored trial may not be)."""
    return trial_id in scheduler._trial_info


def asha_forget(scheduler: Any, trial_id: str) -> None:
    """Drop a removed trial from ASHA's bracket assignment (Ray's own method raises on unknown ids)."""
    scheduler._trial_info.pop(trial_id, None)


# Tune installs its own SIGINT handler during fit(); on the first Ctrl-C it saves the
# experiment, returns normally and re-installs the handler that was there before
# (ray.tune.tune._setup_signal_catching). search.study.stopping.InterruptWatch relies on
# that re-install to know a Ctrl-C came; tests/test_ray_compat.py checks it is still so.
SIGINT_CONTRACT = "signal.signal(signal.SIGINT, original_handler)"


__all__ = ["SIGINT_CONTRACT", "TESTED_RAY", "TUNER_PICKLE", "TUNE_ENVIRONMENT", "UntestedRayError", "asha_forget",
           "asha_knows", "asha_metric", "asha_rungs", "asha_stopped", "check_ray_version", "request_snapshot",
           "set_asha_stopped", "set_tune_environment"]
