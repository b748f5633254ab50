"""The compact progress line a study prints instead of pages of Tune logs.

``[12:04 elapsed, 47:56 of budget left] running 2 | pending 9 | done 3 | stopped early 4 | errored 0 | best val_auc 0.9612``

Pickled into the study with its settings only, like every Tune callback medtune uses.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray.tune import Callback

from search.study.mlflow_logger import error_reason, final_state, trial_error
from search.study.trainable import FAILURE_KEY


class ProgressLine(Callback):
    """The status line of the module docstring, every ``every_s`` seconds (budget left
    from the study's :class:`search.study.stopping.StudyClock`)."""

    def __init__(self, metric: str, mode: str, fixed: dict[str, Any], clock_key: str = "",
                 every_s: float = 15.0) -> None:
        self.metric, self.mode, self.fixed = metric, mode, fixed
        self.clock_key, self.every_s = clock_key, every_s
        self._start = time.time()
        self._last_print = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last_print": 0.0}

    def setup(self, **info) -> None:
        self._start = time.time()

    def counts(self, trials) -> dict[str, int]:
        counts = {"running": 0, "pending": 0, "done": 0, "stopped early": 0, "errored": 0}
        for trial in trials:
            if trial.status == "RUNNING":
                counts["running"] += 1
            elif trial.status in ("PENDING", "PAUSED"):
                counts["pending"] += 1
            elif trial.status == "ERROR":
                counts["errored"] += 1
            elif trial.status == "TERMINATED":
                state = final_state(trial, self.fixed)[0]
                counts[{"completed": "done", "errored": "errored"}.get(state, "stopped early")] += 1
        return counts

    def best(self, trials) -> float | None:
        values = [t.metric_analysis.get(self.metric, {}).get(self.mode) for t in trials]
        values = [v for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def line(self, trials) -> str:
        elapsed = time.time() - self._start
        clock = f"{_mmss(elapsed)} elapsed"
        from search.study.stopping import clock_for

        budget = clock_for(self.clock_key)
        if budget is not None and budget.budget_s:
            clock += f", {_mmss(budget.left_s() or 0.0)} of budget left"
        parts = " | ".join(f"{k} {v}" for k, v in self.counts(trials).items())
        best = self.best(trials)
        return f"[{clock}] {parts} | best {self.metric} " + (f"{best:.4f}" if best is not None else "-")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.time() - self._last_print >= self.every_s:
            self._last_print = time.time()
            print(self.line(trials), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if "epoch" not in (trial.last_result or {}):
            print(f"trial {trial.trial_id} had already ended before the restart", flush=True)
            return
        state, epoch = final_state(trial, self.fixed)
        if state == "errored":
            print(f"trial {trial.trial_id} errored: {error_reason(str(trial.last_result[FAILURE_KEY]))}", flush=True)
            return
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        print(f"trial {trial.trial_id} {state.replace('_', ' ')} at epoch {epoch}: {self.metric} {shown}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"trial {trial.trial_id} errored: {error_reason(trial_error(trial))}", flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        print(self.line(trials), flush=True)


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
