"""A study's leaderboard, read back from its MLflow child runs.

MLflow is the source of truth: it holds trials from before and after a resume, and the
same table serves the end of ``search run`` and, later, ``search best``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from search.tracking import STATE_TAG, TRIAL_TAG, MlflowClient, children_filter


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


def finish_study(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, mode: str) -> pd.DataFrame:
    """Log the leaderboard CSV and the best trial to the parent run, and close it."""
    table = leaderboard(client, experiment_id, parent_run_id, metric, mode)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "leaderboard.csv"
        table.to_csv(path, index=False)
        client.log_artifact(parent_run_id, str(path))
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    for state, count in counts.items():
        client.set_tag(parent_run_id, f"medtune.trials_{state}", str(count))
    # Same rule as `search best`: only trials that ended normally can be the best.
    scored = table[table["state"].isin(["completed", "stopped_early"])].dropna(subset=[metric]) if not table.empty else table
    if not scored.empty:
        best = scored.iloc[0]
        client.log_metric(parent_run_id, f"best_{metric}", float(best[metric]))
        client.set_tag(parent_run_id, "medtune.best_trial_id", str(best["trial_id"]))
        client.set_tag(parent_run_id, "medtune.best_run_id", str(best["run_id"]))
        print(f"best trial {best['trial_id']}: {metric} {best[metric]:.4f} at epoch {best['best_epoch']} "
              f"(MLflow run {best['run_id']})", flush=True)
    print(f"trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    client.set_terminated(parent_run_id, "FINISHED")
    return table
