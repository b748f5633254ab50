"""ASHA that survives a driver restart.

``Tuner.restore`` rebuilds the scheduler from the state pickled when the study started,
so a resumed ASHA forgets every rung it recorded (ray#30838) and lets weak trials run to
the end. :class:`PersistentASHA` writes its rungs to a JSON file in the study directory
after every decision and reloads them the first time it sees a trial after a restore.

Its rung judgement can allow for the noise of a small validation split
(``noise_margin``): a trial is stopped only when its metric is more than the margin below
the rung's cutoff, so two trials that one epoch on a few dozen images cannot tell apart
both go on (:mod:`search.study.noise`).

Both schedulers here also ask Tune for an experiment snapshot right after a trial is
added or ends (:class:`SnapshotOnTrialEvents`). Tune otherwise snapshots on a timer, and a
driver killed between a trial's start and the next snapshot leaves a trial the resumed
study does not know (it proposes another in its place), or one it thinks still runs.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from search.records.storage import StudyFiles
from search.study.ray_compat import (
    asha_forget,
    asha_knows,
    asha_metric,
    asha_rungs,
    asha_stopped,
    request_snapshot,
    set_asha_stopped,
)


class SnapshotOnTrialEvents:
    """Scheduler mixin: a Tune experiment snapshot after every trial start and end."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
        request_snapshot(tune_controller)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]
        request_snapshot(tune_controller)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]
        request_snapshot(tune_controller)


class SnapshotFIFO(SnapshotOnTrialEvents, FIFOScheduler):
    """Tune's first-in-first-out scheduler (no early stopping), snapshotting on trial events."""


class PersistentASHA(SnapshotOnTrialEvents, AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` (ASHA) with its rungs mirrored to ``store/filename``.

    Only the driver runs a scheduler, so the file has one writer even on a cluster; it
    lives beside the study (local folder or ``s3://...``) so any driver can resume.
    ``noise_margin`` (in the metric's units, 0: Ray's rule) is the benefit of the doubt a
    trial gets at a rung: it is stopped only below ``cutoff - noise_margin``; the value
    recorded at the rung, and so every later cutoff, is the trial's real metric.
    """

    def __init__(self, store: StudyFiles, filename: str, noise_margin: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._filename = filename
        self._loaded = False
        self._noise_margin = float(noise_margin)

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        text = self._store.read_optional(self._filename)
        if text is None:
            return
        state = json.loads(text)
        for bracket, rungs in zip(asha_rungs(self), state["brackets"]):
            for (milestone, recorded), saved in zip(bracket, rungs):
                recorded.update(saved["recorded"])
        set_asha_stopped(self, state["num_stopped"])

    def _save(self) -> None:
        """Write the rungs, merged with what the file already holds.

        Merging keeps the file monotonic: a second scheduler copy in the driver (Tune may
        restore one from its pickles) can add records but never erase another's.
        """
        text = self._store.read_optional(self._filename)
        saved = json.loads(text) if text else None
        brackets = []
        for b, bracket in enumerate(asha_rungs(self)):
            rungs = []
            for r, (milestone, recorded) in enumerate(bracket):
                merged = dict(saved["brackets"][b][r]["recorded"]) if saved else {}
                merged.update(recorded)
                rungs.append({"milestone": milestone, "recorded": merged})
            brackets.append(rungs)
        state = {"num_stopped": max(asha_stopped(self), saved["num_stopped"] if saved else 0), "brackets": brackets}
        self._store.write_text(self._filename, json.dumps(state))

    def __getstate__(self) -> dict[str, Any]:
        # Whatever pickled copy Tune restores from must reload the mirrored rungs.
        return {**self.__dict__, "_loaded": False}

    def _ensure_added(self, tune_controller, trial) -> None:
        self._load_once()
        if not asha_knows(self, trial.trial_id):
            super().on_trial_add(tune_controller, trial)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()
        super().on_trial_add(tune_controller, trial)  # ASHA's, then a snapshot

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._ensure_added(tune_controller, trial)
        metric, sign = asha_metric(self)
        margin = getattr(self, "_noise_margin", 0.0)  # a scheduler pickled before margins existed has none
        if not margin or metric not in result:
            action = super().on_trial_result(tune_controller, trial, result)
        else:
            # judged as if the metric were the margin better, then recorded as it is
            before = self._recorded_at(trial.trial_id)
            action = super().on_trial_result(tune_controller, trial,
                                             {**result, metric: result[metric] + sign * margin})
            for rung in self._recorded_at(trial.trial_id, without=before):
                rung[trial.trial_id] = sign * result[metric]
        self._save()
        return action

    def _recorded_at(self, trial_id: str, without: list[dict] | None = None) -> list[dict]:
        """The rungs (their ``{trial_id: value}`` dicts) that hold a value of the trial, less ``without``."""
        skip = {id(rung) for rung in without or []}
        return [recorded for bracket in asha_rungs(self) for _, recorded in bracket
                if trial_id in recorded and id(recorded) not in skip]

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._ensure_added(tune_controller, trial)
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        asha_forget(self, trial.trial_id)
