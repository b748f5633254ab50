"""A study's leaderboard, read back from its MLflow child runs.

MLflow is the source of truth: it holds trials from before and after a resume, and the
same table serves the end of ``search run`` and, later, ``search best``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from search.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    FINISHED_STATES,
    STATE_TAG,
    STATUS_TAG,
    STUDY_METRIC_PREFIX,
    TRIAL_COUNT_PREFIX,
    TRIAL_STATES,
    TRIAL_TAG,
)
from search.tracking import MlflowClient, RunTag, children_filter


def leaderboard(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: id, state, best metric and its epoch, epochs run, searched params."""
    runs = client.search_runs([experiment_id], filter_string=children_filter(parent_run_id),
                              max_results=50000)
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        searched = json.loads(tags.get("medtune.searched", "[]"))
        best = tags.get(f"medtune.best_{metric}")
        rows.append({
            "trial_id": tags.get(TRIAL_TAG),
            "state": tags.get(STATE_TAG, "unknown"),
            metric: float(best) if best is not None else run.data.metrics.get(metric),
            "best_epoch": int(tags["medtune.best_epoch"]) if "medtune.best_epoch" in tags else None,
            "epochs_run": int(tags.get("medtune.last_epoch", 0)),
            "run_id": run.info.run_id,
            **{key: params.get(key) for key in searched},
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table.sort_values(metric, ascending=mode == "min", na_position="last").reset_index(drop=True)


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
        client.set_tag(parent_run_id, BEST_TRIAL_TAG, str(best["trial_id"]))
        client.set_tag(parent_run_id, BEST_RUN_TAG, str(best["run_id"]))
        print(f"best trial {best['trial_id']}: {metric} {best[metric]:.4f} at epoch {best['best_epoch']} "
              f"(MLflow run {best['run_id']})", flush=True)
    elif status == "finished":
        status = "no_trial_finished"
    print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    client.set_tag(parent_run_id, STATUS_TAG, status)
    client.set_terminated(parent_run_id, PARENT_STATUS[status])
    return table, status
