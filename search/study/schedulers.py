"""ASHA that survives a driver restart.

``Tuner.restore`` rebuilds the scheduler from the state pickled when the study started,
so a resumed ASHA forgets every rung it recorded (ray#30838) and lets weak trials run to
the end. :class:`PersistentASHA` writes its rungs to a JSON file in the study directory
after every decision and reloads them the first time it sees a trial after a restore.

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
    """

    def __init__(self, store: StudyFiles, filename: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._filename = filename
        self._loaded = False

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
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._ensure_added(tune_controller, trial)
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        asha_forget(self, trial.trial_id)
