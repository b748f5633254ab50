"""A study's trials, read back from its MLflow child runs: the one reader of them.

MLflow is the source of truth: it holds trials from before and after a resume. Every
consumer reads the same rows from here: the end of ``search run`` and ``--resume``
(states and counts), ``search list`` / ``search best`` / the export (the leaderboard),
and ``search report`` (every setting, parsed).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from search.records.tags import (
    BEST_EPOCH_TAG,
    CONFIG_TAG,
    ERROR_TAG,
    LAST_EPOCH_TAG,
    SEARCHED_TAG,
    STATE_TAG,
    STOPPED_BY_TAG,
    TRIAL_TAG,
    best_metric_tag,
)
from search.records.tracking import MlflowClient, children_filter, param_text

# The columns every trial row has, before its settings (one column per setting).
BOOKKEEPING = ("trial_id", "run_id", "state", "stopped_by", "value", "best_epoch", "epochs_run", "error", "seconds",
               "start_ms", "end_ms", "sampled")


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every trial's child run of the study whose parent run is ``parent_run_id``."""
    return client.search_runs([experiment_id], filter_string=children_filter(parent_run_id), max_results=50000)


def settings_of(run: Any) -> dict[str, str]:
    """A trial's settings as MLflow param strings, at full precision when the run has the
    config tag (its params are rounded for display and include ``log10_<name>``)."""
    if CONFIG_TAG in run.data.tags:
        return {k: param_text(v) for k, v in json.loads(run.data.tags[CONFIG_TAG]).items()}
    return dict(run.data.params)


def trial_row(run: Any, metric: str) -> dict[str, Any]:
    """One trial: the :data:`BOOKKEEPING` columns (``value`` is its best ``metric``), then
    every setting as MLflow's string."""
    tags, info = run.data.tags, run.info
    best = tags.get(best_metric_tag(metric))
    end = info.end_time or info.start_time
    return {
        "trial_id": tags.get(TRIAL_TAG),
        "run_id": info.run_id,
        "state": tags.get(STATE_TAG, "unknown"),
        "stopped_by": tags.get(STOPPED_BY_TAG),
        "value": float(best) if best is not None else np.nan,
        "best_epoch": int(tags[BEST_EPOCH_TAG]) if BEST_EPOCH_TAG in tags else None,
        "epochs_run": int(tags.get(LAST_EPOCH_TAG, 0)),
        "error": tags.get(ERROR_TAG),
        "seconds": (end - info.start_time) / 1000 if end and info.start_time else np.nan,
        "start_ms": info.start_time, "end_ms": info.end_time,
        "sampled": tuple(json.loads(tags.get(SEARCHED_TAG, "[]"))),
        **settings_of(run),
    }


def trial_table(runs: list[Any], metric: str, mode: str, parse=None) -> pd.DataFrame:
    """The trials as a table, best ``metric`` first (ties by trial id, unscored last).

    Args:
        runs: the study's child runs (:func:`child_runs`).
        parse: turns a setting's string back into its value (``None`` keeps strings).
    """
    rows = [trial_row(run, metric) for run in runs]
    if parse is not None:
        rows = [{k: (v if k in BOOKKEEPING else parse(v)) for k, v in row.items()} for row in rows]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in table.columns[len(BOOKKEEPING):]:  # keep None and ints as they were, not NaN / floats
        table[column] = pd.Series([row.get(column) for row in rows], dtype=object)
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table.sort_values(["value", "trial_id"], ascending=[mode == "min", True],
                             na_position="last").reset_index(drop=True)


def leaderboard(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, best first: id, state, best ``metric`` and its epoch, epochs run,
    MLflow run and the settings the search sampled for it."""
    table = trial_table(child_runs(client, experiment_id, parent_run_id), metric, mode)
    if table.empty:
        return table
    searched = list(dict.fromkeys(name for names in table["sampled"] for name in names))
    board = table[["trial_id", "state", "value", "best_epoch", "epochs_run", "run_id"]].rename(columns={"value": metric})
    for name in searched:
        board[name] = [value if name in sampled else None for value, sampled in zip(table[name], table["sampled"])]
    return board


def state_counts(table: pd.DataFrame) -> dict[str, int]:
    """Trials per state."""
    return {str(k): int(v) for k, v in table["state"].value_counts().items()} if not table.empty else {}


def ended_trials(client: Any, exp_id: str, parent_run_id: str) -> frozenset[str]:
    """Trial ids whose MLflow child run is no longer ``running`` (completed, stopped, errored, lost)."""
    table = trial_table(child_runs(client, exp_id, parent_run_id), "val_loss", "min")
    if table.empty:
        return frozenset()
    return frozenset(str(t) for t, state in zip(table["trial_id"], table["state"]) if t and state != "running")


__all__ = ["BOOKKEEPING", "child_runs", "ended_trials", "leaderboard", "settings_of", "state_counts", "trial_row",
           "trial_table"]
