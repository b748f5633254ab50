"""The end (and the restart) of a driver run: the parent run's counts, best trial and
state, and each trial's checkpoints trimmed to those worth keeping."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from search.records.runs import leaderboard
from search.records.storage import StudyFiles
from search.records.tags import (
    BEST_LINK_TAG,
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    CONFIG_TAG,
    FINISHED_STATES,
    STATUS_TAG,
    STUDY_METRIC_PREFIX,
    TRIAL_COUNT_PREFIX,
    TRIAL_STATES,
)
from search.records.tracking import (
    MlflowClient,
    Param,
    RunTag,
    display_number,
    param_text,
)


def reopen_study_run(client: Any, exp_id: str, parent_run_id: str) -> None:
    """Mark a resumed study's parent run running again, with its trial counts recounted
    (a Ctrl-C can leave counts from the moment it came)."""
    client.set_terminated(parent_run_id, "RUNNING")
    client.set_tag(parent_run_id, STATUS_TAG, "running")
    record_counts(client, parent_run_id, leaderboard(client, exp_id, parent_run_id, "val_loss", "min"))


def prune_checkpoints(directory: StudyFiles, metric: str, mode: str, keep: int = 2) -> int:
    """Delete each trial's checkpoints except its ``keep`` best by ``metric`` and its latest.

    Reads Tune's ``result.json`` (one line per epoch, naming the checkpoint it wrote).
    Works on local folders and on URIs alike. Returns the number of checkpoint folders removed.
    """
    import math

    removed = 0
    for trial_dir in directory.list_dirs():
        text = directory.read_optional(f"{trial_dir}/result.json")
        if text is None:
            continue
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        named = [(row[metric], row["checkpoint_dir_name"]) for row in rows
                 if row.get("checkpoint_dir_name") and isinstance(row.get(metric), (int, float))
                 and math.isfinite(row[metric])]
        if not named:
            continue
        ranked = sorted(named, key=lambda item: item[0], reverse=mode == "max")
        kept = {name for _, name in ranked[:keep]} | {rows[-1].get("checkpoint_dir_name") or named[-1][1]}
        trial = StudyFiles(directory.uri, trial_dir)
        for folder in trial.list_dirs():
            if folder.startswith("checkpoint_") and folder not in kept:
                trial.delete_dir(folder)
                removed += 1
    return removed


def record_counts(client: MlflowClient, parent_run_id: str, table: pd.DataFrame) -> dict[str, int]:
    """Tag the parent run with the number of trials in every state (zeros included, so a
    count left from an earlier driver run never stays stale)."""
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    states = list(TRIAL_STATES) + [s for s in counts if s not in TRIAL_STATES]
    client.log_batch(parent_run_id, tags=[RunTag(f"{TRIAL_COUNT_PREFIX}{state}", str(int(counts.get(state, 0))))
                                          for state in states])
    return counts


# How the parent run ends for each way a driver run ends (MLflow's run statuses).
PARENT_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "no_trial_finished": "FAILED"}


def finish_study(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, mode: str,
                 status: str = "finished") -> tuple[pd.DataFrame, str]:
    """Log the leaderboard CSV, the trial counts and the best trial to the parent run, and
    end it with the study's real state (``status``: ``finished`` or ``interrupted``;
    ``finished`` with no finished trial becomes ``no_trial_finished``)."""
    table = leaderboard(client, experiment_id, parent_run_id, metric, mode)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leaderboard.csv"
        table.to_csv(path, index=False)
        client.log_artifact(parent_run_id, str(path))
    counts = record_counts(client, parent_run_id, table)
    # Same rule as `search best`: only trials that ended normally can be the best.
    scored = table[table["state"].isin(FINISHED_STATES)].dropna(subset=[metric]) if not table.empty else table
    if not scored.empty:
        best = scored.iloc[0]
        client.log_metric(parent_run_id, STUDY_METRIC_PREFIX + metric, float(best[metric]))
        mark_best(client, experiment_id, parent_run_id, best, metric, counts, status)
        print(f"best trial {best['trial_id']}: {metric} {best[metric]:.4f} at epoch {best['best_epoch']} "
              f"(MLflow run {best['run_id']})", flush=True)
    elif status == "finished":
        status = "no_trial_finished"
    print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    client.set_tag(parent_run_id, STATUS_TAG, status)
    client.set_terminated(parent_run_id, PARENT_STATUS[status])
    return table, status


def mark_best(client: MlflowClient, experiment_id: str, parent_run_id: str, best: pd.Series, metric: str,
              counts: dict[str, int], status: str) -> None:
    """Point the parent run at its best trial so the MLflow UI shows it at a glance.

    Tags: the best trial and run ids and a link to the run; the parent's description
    (MLflow's note) with a one-paragraph summary; and, once the study finished, the best
    configuration as ``best.<setting>`` params (MLflow params are write-once, so they are
    logged only for the final answer).
    """
    best_run = client.get_run(str(best["run_id"]))
    link = f"#/experiments/{experiment_id}/runs/{best['run_id']}"
    states = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    note = (f"**Best trial: [{best_run.info.run_name}]({link})**, {metric} {float(best[metric]):.4f} at epoch "
            f"{best['best_epoch']}.\n\n{sum(counts.values())} trials: {states}. Study {status.replace('_', ' ')}. "
            f"`search best <name>` lists the leaderboard; `search best <name> --export DIR` hands back the model.")
    client.log_batch(parent_run_id, tags=[RunTag(BEST_TRIAL_TAG, str(best["trial_id"])),
                                          RunTag(BEST_RUN_TAG, str(best["run_id"])), RunTag(BEST_LINK_TAG, link),
                                          RunTag("mlflow.note.content", note)])
    if status != "finished":
        return
    logged = client.get_run(parent_run_id).data.params
    config = json.loads(best_run.data.tags.get(CONFIG_TAG, "{}"))
    params = {f"best.{k}": display_number(v) if isinstance(v, float) else param_text(v) for k, v in config.items()}
    if any(logged.get(k, v) != v for k, v in params.items()):
        return  # a study resumed after it finished found another best: the tags say which
    client.log_batch(parent_run_id, params=[Param(k, v) for k, v in sorted(params.items()) if k not in logged])
