"""The Tune callback that writes every trial of a study to MLflow, as one nested child run.

What a child run holds, so that the MLflow UI reads at a glance:

- its name: trial number, backbone and the searched values (``t07 cnn3 lr=0.0059``),
  with the way it ended right after the number, where MLflow's narrow default column
  still shows it (``t07 stopped@3 cnn3 ...``, ``t07 errored cnn3 ...``);
- params: every setting, floats to 4 significant digits (the full-precision config is
  the ``medtune.config`` tag), and ``log10_<name>`` for log-scale searched settings so a
  parallel-coordinates plot can read them on a log axis;
- metrics under their own names (``val_auc``, ``val_loss``, ...): the values of the
  epoch medtune selects (the best by the study metric, the epoch ``search best`` ranks
  and exports), updated as a better epoch arrives; ``best_epoch`` says which;
- per-epoch curves under ``epoch/<name>`` (step = epoch);
- tags: state, last and best epoch, stop reason, error, nodes (:mod:`search.records.tags`);
- the best epoch's ROC curve and confusion matrix;
- start and end times spanning the trial, and status FINISHED (completed or stopped
  early), FAILED (errored) or KILLED (lost).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from ray.tune import Callback

from search.records.tags import (
    BEST_EPOCH_TAG,
    CONFIG_TAG,
    CURVE_PREFIX,
    EPOCH_METRICS,
    ERROR_TAG,
    LAST_EPOCH_TAG,
    NODE_IP_TAG,
    NODE_TAG,
    NODES_TAG,
    SEARCHED_TAG,
    SELECTED_METRICS,
    STATE_TAG,
    STOPPED_BY_TAG,
    TRIAL_TAG,
    best_metric_tag,
    cv_metric_keys,
)
from search.records.tracking import (
    Metric,
    MlflowClient,
    Param,
    RunTag,
    children_filter,
    display_params,
    find_child_run,
    finite_metrics,
    log_png,
    logged_epochs,
    now_ms,
    roc_and_confusion_png,
    run_label,
)
from search.study.trainable import FAILURE_KEY
from trainables.config import TrialConfig
from trainables.trial import PREDICTIONS_FILE

# How each final state shows in MLflow: run status, and what the run name gets appended.
RUN_STATUS = {"completed": "FINISHED", "stopped_early": "FINISHED", "errored": "FAILED", "lost": "KILLED"}


def trial_epochs(trial, fixed: dict[str, Any]) -> int:
    """Epochs the trial was configured for (sampled, else fixed, else the default)."""
    return int(trial.config.get("epochs", fixed.get("epochs", TrialConfig.epochs)))


def final_state(trial, fixed: dict[str, Any]) -> tuple[str, int]:
    """``("completed" | "stopped_early" | "errored", last epoch)`` of a trial Tune ended
    normally (a deterministic failure is reported as a result, see search.study.trainable)."""
    result = trial.last_result or {}
    epoch = int(result.get("epoch", 0))
    if FAILURE_KEY in result:
        return "errored", epoch
    return ("completed" if epoch >= trial_epochs(trial, fixed) else "stopped_early"), epoch


def ended_name(name: str, state: str, epoch: int) -> str:
    """A run's name once its trial ended: the state right after the trial number
    (``t07 stopped@3 cnn3 lr=0.0059``); a completed trial keeps its name."""
    marker = {"stopped_early": f"stopped@{epoch}", "errored": "errored", "lost": "lost"}.get(state)
    if marker is None:
        return name
    number, _, rest = name.partition(" ")
    return f"{number} {marker} {rest}".rstrip()


@dataclasses.dataclass
class TrialLog:
    """What the driver knows of one trial's MLflow run during this driver run.

    Attributes:
        run_id: the child run.
        name: its name, without the final state.
        logged_epoch: the last epoch logged (a resumed trial re-reports earlier ones).
        best: ``(value, epoch)`` of the selected epoch so far, or None.
        best_checkpoint: that epoch's Tune checkpoint (for the plots), when seen.
        last_result: the latest result Tune reported.
        nodes: the Ray nodes it ran on, in order.
        ended: its run is closed (in this driver run or an earlier one).
    """

    run_id: str
    name: str
    logged_epoch: int = 0
    best: tuple[float, int] | None = None
    best_checkpoint: Any = None
    last_result: dict[str, Any] = dataclasses.field(default_factory=dict)
    nodes: list[str] = dataclasses.field(default_factory=list)
    ended: bool = False


class MlflowTrialLogger(Callback):
    """One nested MLflow child run per trial under the study's parent run (see the module).

    The run is opened at the trial's first report, not at its start: by then Tune has
    saved the trial in its experiment state, so a killed driver leaves no run behind for
    a trial that ``--resume`` would not know. Its start time is set back to the trial's.

    Pickled into the study with its settings only; a resumed driver reads each trial's
    log back from MLflow (:meth:`log_of`).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, fixed: dict[str, Any],
                 metric: str, mode: str, class_names: list[str], stopper: str, clock_key: str = "",
                 log_scale: tuple[str, ...] = ()) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.fixed = fixed
        self.metric = metric
        self.mode = mode
        self.class_names = class_names
        self.stopper = stopper
        self.clock_key = clock_key
        self.log_scale = tuple(log_scale)
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._logs: dict[str, TrialLog] = {}
        self._orphans_checked = False
        self._plotter: ThreadPoolExecutor | None = None
        self._plots: list[Future] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_client", "_logs", "_orphans_checked", "_plotter", "_plots"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("log_scale", ())
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # -- the child run of a trial ------------------------------------------------------

    def log_of(self, trial, result: dict[str, Any] | None = None) -> TrialLog:
        """The trial's log: found again after a resume, else a new child run (``result``:
        the report that opens it, which dates the trial's start)."""
        if trial.trial_id in self._logs:
            return self._logs[trial.trial_id]
        run_id = find_child_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run_id is None:
            log = self._open(trial, result or trial.last_result or {})
        else:
            run = self.client.get_run(run_id)
            log = TrialLog(run_id, run.info.run_name or trial.trial_id)
            if run.data.tags.get(STATE_TAG) != "running":
                log.ended = True  # ended before a driver restart: keep its record as is
            else:
                log.logged_epoch = logged_epochs(self.client, run_id)
                log.best = self._best_logged(run)
                nodes = run.data.tags.get(NODES_TAG)
                log.nodes = nodes.split(",") if nodes else []
        self._logs[trial.trial_id] = log
        return log

    def _open(self, trial, result: dict[str, Any]) -> TrialLog:
        """Create the child run: name, start time, every setting as a param."""
        try:
            config = TrialConfig.from_dict({**self.fixed, **trial.config}).to_dict()
        except ValueError:  # the trial itself reports why; logging must not stop the study
            config = {**self.fixed, **trial.config}
        name = run_label(trial_index(trial), trial.config, self.fixed)
        elapsed = result.get("time_total_s")
        started = now_ms() - int(1000 * elapsed) if isinstance(elapsed, (int, float)) else None
        run = self.client.create_run(self.experiment_id, run_name=name, start_time=started, tags={
            "mlflow.parentRunId": self.parent_run_id,
            TRIAL_TAG: trial.trial_id,
            STATE_TAG: "running",
            SEARCHED_TAG: json.dumps(sorted(trial.config)),
            CONFIG_TAG: json.dumps(config, sort_keys=True, default=str),
        })
        params = display_params(config, {k: trial.config[k] for k in self.log_scale if k in trial.config})
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sorted(params.items())])
        return TrialLog(run.info.run_id, name)

    def _best_logged(self, run) -> tuple[float, int] | None:
        """After a resume: the selected epoch logged before the restart."""
        value, epoch = run.data.metrics.get(self.metric), run.data.metrics.get("best_epoch")
        return (float(value), int(epoch)) if value is not None and epoch is not None else None

    # -- Tune's events -----------------------------------------------------------------

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self._orphans_checked:
            self._orphans_checked = True
            self.close_orphans({t.trial_id for t in trials})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        log = self.log_of(trial, result)
        if log.ended:
            return
        if FAILURE_KEY in result:  # a deterministic failure, reported instead of raised (search.study.trainable)
            self._close_errored(trial, str(result[FAILURE_KEY]))
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        log.last_result = result
        tags = self._node_tags(log, result)
        if epoch <= log.logged_epoch:
            if tags:
                self.client.log_batch(log.run_id, tags=tags)
            return  # already logged before a restart from an earlier checkpoint
        stamp = now_ms()
        folds = cv_metric_keys(result)
        metrics = [Metric(CURVE_PREFIX + k, v, stamp, epoch)
                   for k, v in finite_metrics(result, (*EPOCH_METRICS, *folds)).items()]
        if self._improves(log, result.get(self.metric)):
            log.best, log.best_checkpoint = (float(result[self.metric]), epoch), None
            metrics += [Metric(k, v, stamp, epoch)
                        for k, v in finite_metrics(result, (*SELECTED_METRICS, *folds)).items()]
            metrics.append(Metric("best_epoch", float(epoch), stamp, epoch))
        # Metrics and node tags in one write: each MLflow call blocks Tune's event loop.
        self.client.log_batch(log.run_id, metrics=metrics, tags=tags)
        log.logged_epoch = epoch

    def _improves(self, log: TrialLog, value: Any) -> bool:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if log.best is None:
            return True
        return value > log.best[0] if self.mode == "max" else value < log.best[0]

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        log = self.log_of(trial)
        if log.best is not None and int(log.last_result.get("epoch", -1)) == log.best[1]:
            log.best_checkpoint = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        state, epoch = final_state(trial, self.fixed)
        if state == "errored":
            self._close_errored(trial, str(trial.last_result[FAILURE_KEY]))
        else:
            self._close(trial, state, epoch, self.stopper)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close_errored(trial, trial_error(trial))

    def on_experiment_end(self, trials, **info) -> None:
        """Close the run of every trial that ended in Tune but not yet in MLflow.

        Tune ends the trials the time budget cuts off without a completion event; they
        close here as stopped early by the time budget. After a Ctrl-C nothing is closed:
        the runs of unfinished trials stay ``running``, so that ``--resume`` continues
        them. Either way, the plots still being drawn are finished before the study returns.
        """
        from search.study.stopping import interrupted

        try:
            if interrupted():
                return  # Tune stopped the trials on its way out; --resume continues them
            for trial in trials:
                if trial.trial_id not in self._logs and not trial.last_result:
                    continue  # never reported: no run to close
                if trial.status == "TERMINATED":
                    state, epoch = final_state(trial, self.fixed)
                    if state == "errored":
                        self._close_errored(trial, str(trial.last_result.get(FAILURE_KEY)))
                    else:
                        self._close(trial, state, epoch, "time budget" if self._budget_spent() else self.stopper)
                elif trial.status == "ERROR":
                    self._close_errored(trial, trial_error(trial))
        finally:
            self.wait_for_plots()

    def _budget_spent(self) -> bool:
        from search.study.stopping import clock_for

        clock = clock_for(self.clock_key)
        return clock is not None and clock.exhausted()

    # -- closing a run -----------------------------------------------------------------

    def _end(self, trial) -> TrialLog | None:
        """The trial's log, marked ended; None when it had ended already (a resume)."""
        log = self.log_of(trial)
        if log.ended:
            return None
        log.ended = True
        return log

    def _close(self, trial, state: str, epoch: int, stopped_by: str) -> None:
        """Final state, name and tags, the best epoch's plots, then end the run."""
        log = self._end(trial)
        if log is None:
            return
        tags = {STATE_TAG: state, LAST_EPOCH_TAG: str(epoch), "mlflow.runName": ended_name(log.name, state, epoch)}
        if state == "stopped_early":
            tags[STOPPED_BY_TAG] = stopped_by
        if log.best is not None:
            value, best_epoch = log.best
            tags.update({BEST_EPOCH_TAG: str(best_epoch), best_metric_tag(self.metric): f"{value:.6f}"})
            if log.best_checkpoint is not None:
                self._plot_later(log.run_id, log.best_checkpoint, best_epoch)
        # One write for all the tags: each MLflow call blocks Tune's event loop.
        self.client.log_batch(log.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(log.run_id, RUN_STATUS[state])

    def _close_errored(self, trial, error: str) -> None:
        """State ``errored``, the reason as a tag and the whole trace as ``error.txt``."""
        log = self._end(trial)
        if log is None:
            return
        self.client.log_batch(log.run_id, tags=[RunTag(STATE_TAG, "errored"), RunTag(ERROR_TAG, error_reason(error)),
                                                RunTag("mlflow.runName", ended_name(log.name, "errored", 0))])
        self.client.log_text(log.run_id, error, "error.txt")
        self.client.set_terminated(log.run_id, RUN_STATUS["errored"])

    def close_orphans(self, known: set[str]) -> None:
        """Mark child runs of trials Tune does not know after a resume as ``lost``.

        A trial started just before the driver died may be missing from Tune's last
        experiment snapshot; Tune then proposes a new trial in its place. Its run stays
        in MLflow (nothing is deleted), clearly marked, so no trial counts twice.
        """
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=children_filter(self.parent_run_id, state="running"))
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) not in known:
                self.client.log_batch(run.info.run_id, tags=[
                    RunTag(STATE_TAG, "lost"),
                    RunTag(ERROR_TAG, "the driver stopped before Tune saved this trial; "
                                      "the search proposed a new trial in its place"),
                    RunTag("mlflow.runName", ended_name(run.info.run_name or "", "lost", 0)),
                ])
                self.client.set_terminated(run.info.run_id, RUN_STATUS["lost"])

    def _node_tags(self, log: TrialLog, result: dict[str, Any]) -> list[RunTag]:
        """Tags naming the Ray node (and IP) the trial runs on, when it changes: a trial
        that lost its node and resumed elsewhere lists both in ``medtune.nodes``."""
        node = result.get("node_id")
        if not isinstance(node, str) or (log.nodes and log.nodes[-1] == node):
            return []
        log.nodes.append(node)
        return [RunTag(NODE_TAG, node), RunTag(NODES_TAG, ",".join(log.nodes)),
                RunTag(NODE_IP_TAG, str(result.get("node_ip", "")))]

    # -- plots -------------------------------------------------------------------------

    def _plot_later(self, run_id: str, checkpoint, epoch: int) -> None:
        """Draw and log the best epoch's plots on a background thread.

        Drawing two PNGs and logging them takes ~0.2 s; in Tune's event loop that would
        hold every finished trial's slot idle meanwhile. One thread keeps matplotlib
        single-threaded; :meth:`wait_for_plots` joins it at the end of the study.
        """
        if self._plotter is None:
            self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-plots")
        self._plots.append(self._plotter.submit(self._log_best_plots, run_id, checkpoint, epoch))

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

    def _log_best_plots(self, run_id: str, checkpoint, epoch: int) -> None:
        try:
            with checkpoint.as_directory() as directory:
                saved = np.load(f"{directory}/{PREDICTIONS_FILE}")
                labels, probs = saved["labels"], saved["probs"]
        except (OSError, KeyError, ValueError) as err:
            print(f"medtune: no validation predictions in the best checkpoint ({err})", file=sys.stderr)
            return
        for name, content in roc_and_confusion_png(labels, probs, self.class_names,
                                                   f"validation, epoch {epoch}").items():
            log_png(self.client, run_id, name, content)


def trial_index(trial) -> str:
    """The trial's number in the study (Tune's experiment tag starts with it), else its id."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return head if head.isdigit() else trial.trial_id


def trial_error(trial) -> str:
    """The trial's error trace as Tune wrote it (the driver-local file, else storage)."""
    import os

    path = trial.error_file
    if path and os.path.isfile(path):
        with open(path) as handle:
            return handle.read()
    return str(trial.get_error() or "unknown error")


def error_reason(trace: str) -> str:
    """The line of a trace that says what went wrong (``SomeError: message``)."""
    import re

    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b:?", line):
            return line[:1000]
    return lines[-1][:1000] if lines else "unknown error"


__all__ = ["MlflowTrialLogger", "TrialLog", "error_reason", "final_state", "trial_epochs", "trial_error"]
