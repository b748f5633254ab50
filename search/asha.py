"""ASHA that survives a driver restart.

``Tuner.restore`` rebuilds the scheduler from the state pickled when the study started,
so a resumed ASHA forgets every rung it recorded (ray#30838) and lets weak trials run to
the end. :class:`PersistentASHA` writes its rungs to a JSON file in the study directory
after every decision and reloads them the first time it sees a trial after a restore.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler


class PersistentASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` (ASHA) with its rungs mirrored to ``state_path``."""

    def __init__(self, state_path: str | os.PathLike, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._loaded = False

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_path)
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            for (milestone, recorded), saved in zip(bracket._rungs, rungs):
                recorded.update(saved["recorded"])
        self._num_stopped = state["num_stopped"]

    def _save(self) -> None:
        """Write the rungs, merged with what the file already holds.

        Merging keeps the file monotonic: a second scheduler copy in the driver (Tune may
        restore one from its pickles) can add records but never erase another's.
        """
        saved = json.loads(Path(self._state_path).read_text()) if os.path.isfile(self._state_path) else None
        brackets = []
        for b, bracket in enumerate(self._brackets):
            rungs = []
            for r, (milestone, recorded) in enumerate(bracket._rungs):
                merged = dict(saved["brackets"][b][r]["recorded"]) if saved else {}
                merged.update(recorded)
                rungs.append({"milestone": milestone, "recorded": merged})
            brackets.append(rungs)
        state = {"num_stopped": max(self._num_stopped, saved["num_stopped"] if saved else 0), "brackets": brackets}
        directory = os.path.dirname(self._state_path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        os.replace(tmp, self._state_path)

    def __getstate__(self) -> dict[str, Any]:
        # Whatever pickled copy Tune restores from must reload the mirrored rungs.
        return {**self.__dict__, "_loaded": False}

    def _ensure_added(self, tune_controller, trial) -> None:
        self._load_once()
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()
        super().on_trial_add(tune_controller, trial)

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
        self._trial_info.pop(trial.trial_id, None)
