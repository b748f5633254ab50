"""Tune callbacks run by the driver: MLflow logging and a compact progress line.

Both are pickled into the study when it starts and unpickled by ``Tuner.restore``, so
they hold only plain settings; whatever they learn during a study is read back from
MLflow or from the trials themselves.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from ray.tune import Callback

from search.tracking import (
    STATE_TAG,
    TRIAL_TAG,
    Metric,
    MlflowClient,
    Param,
    RunTag,
    children_filter,
    find_child_run,
    finite_metrics,
    log_png,
    logged_epochs,
    now_ms,
    param_text,
    roc_and_confusion_png,
)
from trainables.config import TrialConfig
from trainables.trial import PREDICTIONS_FILE

NODE_TAG = "medtune.node_id"   # the Ray node a trial's latest epoch ran on
NODES_TAG = "medtune.nodes"    # every node it ran on, in order (more than one after a lost node)

# What each epoch's report carries (Tune adds its own bookkeeping keys, which are not logged).
EPOCH_METRICS = (
    "val_auc", "val_acc", "val_balanced_acc", "val_f1", "val_sensitivity", "val_specificity", "val_loss",
    "train_loss", "lr", "trainable_params", "trainable_fraction", "epoch_seconds", "images_per_second",
)


def trial_epochs(trial, fixed: dict[str, Any]) -> int:
    """Epochs the trial was configured for (sampled, else fixed, else the default)."""
    return int(trial.config.get("epochs", fixed.get("epochs", TrialConfig.epochs)))


def final_state(trial, fixed: dict[str, Any]) -> tuple[str, int]:
    """``("completed" | "stopped_early", last epoch)`` of a trial that ended without error."""
    epoch = int((trial.last_result or {}).get("epoch", 0))
    return ("completed" if epoch >= trial_epochs(trial, fixed) else "stopped_early"), epoch


class MlflowTrialLogger(Callback):
    """One nested MLflow child run per trial under the study's parent run.

    The run is opened at the trial's first report, not at its start: by then Tune has
    saved the trial in its experiment state, so a killed driver leaves no run behind
    for a trial that ``--resume`` would not know. Params at first report, metrics every epoch (``step`` = epoch), the final state (completed,
    stopped early at epoch k, or errored with the reason), ROC curve and confusion matrix
    of the best epoch.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, fixed: dict[str, Any],
                 metric: str, mode: str, class_names: list[str], stopper: str,
                 budget_s: float | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.fixed = fixed
        self.metric = metric
        self.mode = mode
        self.class_names = class_names
        self.stopper = stopper
        self.budget_s = budget_s
        self._started = time.time()
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._best: dict[str, tuple[float, int, Any]] = {}
        self._orphans_checked = False
        self._ended: set[str] = set()
        self._nodes: dict[str, list[str]] = {}
        self._plotter: ThreadPoolExecutor | None = None
        self._plots: list[Future] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}, "_logged": {}, "_last": {}, "_best": {},
                "_orphans_checked": False, "_ended": set(), "_nodes": {}, "_plotter": None, "_plots": []}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        """The trial's child run: found again after a resume, else created with its params."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        run_id = find_child_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.trial_id}", tags={
                "mlflow.parentRunId": self.parent_run_id,
                TRIAL_TAG: trial.trial_id,
                STATE_TAG: "running",
                "medtune.searched": json.dumps(sorted(trial.config)),
            })
            run_id = run.info.run_id
            # Every setting the trial ran with, defaults included, so runs compare side by side.
            try:
                params = TrialConfig.from_dict({**self.fixed, **trial.config}).to_dict()
            except ValueError:  # the trial itself reports why; logging must not stop the study
                params = {**self.fixed, **trial.config}
            self.client.log_batch(run_id, params=[Param(k, param_text(v)) for k, v in sorted(params.items())])
            self._logged[trial.trial_id] = 0
        elif self.client.get_run(run_id).data.tags.get(STATE_TAG) != "running":
            self._ended.add(trial.trial_id)  # ended before a driver restart: keep its record as is
        else:
            self._logged[trial.trial_id] = logged_epochs(self.client, run_id)
            self._best_so_far(trial.trial_id, run_id)
            nodes = self.client.get_run(run_id).data.tags.get(NODES_TAG)
            self._nodes[trial.trial_id] = nodes.split(",") if nodes else []
        self._runs[trial.trial_id] = run_id
        return run_id

    def setup(self, **info) -> None:
        self._started = time.time()

    def on_experiment_end(self, trials, **info) -> None:
        """Close the runs of trials the time budget cut off (Tune reports no completion).

        Without a spent budget the study was interrupted (Ctrl-C): those runs stay
        ``running`` so that ``--resume`` continues them. Either way, the plots still being
        drawn are finished before the study returns.
        """
        try:
            if not self.budget_s or time.time() - self._started < 0.98 * self.budget_s:
                return
            for trial in trials:
                if trial.trial_id in self._runs and trial.trial_id not in self._ended:
                    self._close(trial, "stopped_early", int((trial.last_result or {}).get("epoch", 0)), "time budget")
        finally:
            self.wait_for_plots()

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self._orphans_checked:
            self._orphans_checked = True
            self.close_orphans({t.trial_id for t in trials})

    def close_orphans(self, known: set[str]) -> None:
        """Mark child runs of trials Tune does not know after a resume as ``lost``.

        A trial started just before the driver died may be missing from Tune's last
        experiment snapshot; Tune then proposes a new trial in its place. Its run stays
        in MLflow (nothing is deleted), clearly marked, so no trial counts twice.
        """
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=children_filter(self.parent_run_id, state="running"),
        )
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) not in known:
                self.client.log_batch(run.info.run_id, tags=[
                    RunTag(STATE_TAG, "lost"),
                    RunTag("medtune.error", "the driver stopped before Tune saved this trial; "
                                            "the search proposed a new trial in its place"),
                ])
                self.client.set_terminated(run.info.run_id, "KILLED")

    def mark_ended(self, trial) -> bool:
        """Record that ``trial`` ended; False when it had already ended before (a resume).

        MLflow is the record: a resumed driver reads the ended trials back from the
        child runs' state (see ``search.study.ended_trials``).
        """
        self.run_id(trial)
        if trial.trial_id in self._ended:
            return False
        self._ended.add(trial.trial_id)
        return True

    def _node_tags(self, trial, result: dict[str, Any]) -> list[RunTag]:
        """Tags naming the Ray node (and IP) the trial runs on, when it changes: a trial
        that lost its node and resumed elsewhere lists both in ``medtune.nodes``."""
        node = result.get("node_id")
        nodes = self._nodes.setdefault(trial.trial_id, [])
        if not isinstance(node, str) or (nodes and nodes[-1] == node):
            return []
        nodes.append(node)
        return [RunTag(NODE_TAG, node), RunTag(NODES_TAG, ",".join(nodes)),
                RunTag("medtune.node_ip", str(result.get("node_ip", "")))]

    def _best_so_far(self, trial_id: str, run_id: str) -> None:
        """After a resume: the best epoch logged before the restart (its plots are not
        re-rendered unless a later epoch beats it)."""
        history = self.client.get_metric_history(run_id, self.metric)
        if history:
            pick = max if self.mode == "max" else min
            best = pick(history, key=lambda m: m.value)
            self._best[trial_id] = (best.value, best.step, None)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_id(trial)
        if trial.trial_id in self._ended:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self._last[trial.trial_id] = result
        tags = self._node_tags(trial, result)
        if epoch <= self._logged.get(trial.trial_id, 0):
            if tags:
                self.client.log_batch(run_id, tags=tags)
            return  # already logged before a restart from an earlier checkpoint
        stamp = now_ms()
        metrics = [Metric(k, v, stamp, epoch) for k, v in finite_metrics(result, EPOCH_METRICS).items()]
        # Metrics and node tags in one write: each MLflow call blocks Tune's event loop.
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._logged[trial.trial_id] = epoch

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        result = self._last.get(trial.trial_id, {})
        value = result.get(self.metric)
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            return
        best = self._best.get(trial.trial_id)
        sign = 1 if self.mode == "max" else -1
        if best is None or sign * value > sign * best[0]:
            self._best[trial.trial_id] = (float(value), int(result.get("epoch", 0)), checkpoint)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        state, epoch = final_state(trial, self.fixed)
        self._close(trial, state, epoch, self.stopper)

    def _close(self, trial, state: str, epoch: int, stopped_by: str) -> None:
        """Final state, best-epoch metric and plots, then end the child run."""
        if not self.mark_ended(trial):
            return
        run_id = self.run_id(trial)
        tags = {STATE_TAG: state, "medtune.last_epoch": str(epoch)}
        if state == "stopped_early":
            tags["medtune.stopped_by"] = stopped_by
        best = self._best.get(trial.trial_id)
        metrics: list[Metric] = []
        if best is not None:
            value, best_epoch, checkpoint = best
            tags.update({"medtune.best_epoch": str(best_epoch), f"medtune.best_{self.metric}": f"{value:.6f}"})
            metrics.append(Metric(f"best_{self.metric}", value, now_ms(), best_epoch))
            if checkpoint is not None:
                self._plot_later(run_id, checkpoint)
        # One write for the metric and the tags: each MLflow call blocks Tune's event loop.
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if not self.mark_ended(trial):
            return
        run_id = self.run_id(trial)
        error = trial_error(trial)
        self.client.log_batch(run_id, tags=[RunTag(STATE_TAG, "errored"), RunTag("medtune.error", error_reason(error))])
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def _plot_later(self, run_id: str, checkpoint) -> None:
        """Draw and log the best epoch's plots on a background thread.

        Drawing two PNGs and logging them takes ~0.2 s; in Tune's event loop that would
        hold every finished trial's slot idle meanwhile. One thread keeps matplotlib
        single-threaded; :meth:`wait_for_plots` joins it at the end of the study.
        """
        if self._plotter is None:
            self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-plots")
        self._plots.append(self._plotter.submit(self._log_best_plots, run_id, checkpoint))

    def wait_for_plots(self) -> None:
        """Block until every queued plot is logged; a failed plot is reported, not raised."""
        for future in self._plots:
            try:
                future.result()
            except Exception as err:  # plots are a convenience: never fail a finished study for one
                print(f"medtune: could not log a trial's ROC/confusion plots ({err!r})", file=sys.stderr)
        self._plots = []
        if self._plotter is not None:
            self._plotter.shutdown(wait=True)
            self._plotter = None

    def _log_best_plots(self, run_id: str, checkpoint) -> None:
        try:
            with checkpoint.as_directory() as directory:
                saved = np.load(f"{directory}/{PREDICTIONS_FILE}")
                labels, probs = saved["labels"], saved["probs"]
        except (OSError, KeyError, ValueError) as err:
            print(f"medtune: no validation predictions in the best checkpoint ({err})", file=sys.stderr)
            return
        for name, content in roc_and_confusion_png(labels, probs, self.class_names).items():
            log_png(self.client, run_id, name, content)


def trial_error(trial) -> str:
    """The trial's error trace as Tune wrote it (the driver-local file, else storage)."""
    path = trial.error_file
    if path and os.path.isfile(path):
        with open(path) as handle:
            return handle.read()
    return str(trial.get_error() or "unknown error")


def error_reason(trace: str) -> str:
    """The line of a trace that says what went wrong (``SomeError: message``)."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b:?", line):
            return line[:1000]
    return lines[-1][:1000] if lines else "unknown error"


class ProgressLine(Callback):
    """A compact status line instead of pages of logs, every ``every_s`` seconds.

    ``[12:04 elapsed, ETA 47:56] running 2 | pending 9 | done 3 | stopped early 4 | errored 0 | best val_auc 0.9612``
    """

    def __init__(self, metric: str, mode: str, fixed: dict[str, Any], budget_s: float | None, every_s: float = 15.0) -> None:
        self.metric, self.mode, self.fixed = metric, mode, fixed
        self.budget_s, self.every_s = budget_s, every_s
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
                counts["done" if final_state(trial, self.fixed)[0] == "completed" else "stopped early"] += 1
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
        if self.budget_s:
            clock += f", {_mmss(max(0.0, self.budget_s - elapsed))} of budget left"
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
