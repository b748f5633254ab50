"""A finished study read back as plain tables: one row per trial, plus its epoch curves.

Everything the report says comes from here, and everything here comes from the study's
MLflow runs (the same records ``search best`` ranks) and, for the best trial's
validation predictions, from its kept checkpoint. Parameter values are parsed back from
MLflow's strings (``"None"``, ``"True"``, JSON lists, numbers) so that tables sort and
plots place them as the values the trial ran with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from search.records.runs import trial_table
from search.records.studies import (
    FINISHED_STATES,
    Study,
    child_runs,
    parent_run,
    study_metric,
)
from search.records.tags import SPACE_TAG, curve
from search.records.tracking import MlflowClient

# Keys the report never treats as a searched setting (bookkeeping, not a question).
NOT_SETTINGS = ("device", "eval_batch_size")


def parse_param(text: str | None) -> Any:
    """A trial setting as it ran, from MLflow's string (``param_text`` wrote it)."""
    if text is None or text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_pretrained(value: Any) -> bool:
    """Whether a ``pretrained`` setting loads weights (ImageNet or a file): not scratch."""
    return value not in (None, False, "none", "false", "False", "")


@dataclass
class StudyRecords:
    """The trials of one study and what its parent run holds.

    Attributes:
        study: the study read back (folder, MLflow ids).
        metric / mode: the metric the study optimised and its direction.
        trials: one row per trial: ``trial_id``, ``run_id``, ``state``, ``stopped_by``,
            ``value`` (best ``metric`` over its epochs), ``best_epoch``, ``epochs_run``,
            ``error``, ``seconds``, ``start_ms`` / ``end_ms``, ``sampled`` (the settings the
            search sampled for this trial: a conditional one is missing where its condition
            failed), then every setting the trial ran with (parsed) as its own column.
        searched: names of the searched settings (the space's ``search`` keys that trials got).
        curves: run id -> DataFrame of per-epoch metrics (index = epoch).
        parent_params / parent_metrics / parent_tags: the parent run's records.
    """

    study: Study
    metric: str
    mode: str
    trials: pd.DataFrame
    searched: list[str]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    parent_params: dict[str, str] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> pd.DataFrame:
        """Trials that ended normally with a score, best first."""
        table = self.trials[self.trials["state"].isin(FINISHED_STATES) & self.trials["value"].notna()]
        return table.sort_values("value", ascending=self.mode == "min", kind="stable")

    def best_of(self, table: pd.DataFrame) -> pd.Series | None:
        """The best row of ``table`` by the study metric (``None`` when empty)."""
        table = table[table["value"].notna()]
        if table.empty:
            return None
        index = table["value"].idxmax() if self.mode == "max" else table["value"].idxmin()
        return table.loc[index]

    def sampled(self, name: str, table: pd.DataFrame | None = None) -> pd.DataFrame:
        """Rows of ``table`` (default: finished trials) whose search sampled ``name``, or all
        rows when ``name`` is not a searched setting (a fixed one applies to every trial)."""
        table = self.finished if table is None else table
        if name not in self.searched or table.empty:
            return table
        return table[table["sampled"].map(lambda keys: name in keys)]

    def varied(self, name: str, table: pd.DataFrame | None = None) -> bool:
        """Whether setting ``name`` took at least two values across ``table`` (default: finished trials)."""
        table = self.finished if table is None else table
        if name not in table.columns:
            return False
        return table[name].map(value_key).nunique() >= 2


def value_key(value: Any) -> str:
    """A hashable, printable key of a setting value (lists become JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def load_records(study: Study, client: MlflowClient | None = None, curve_metrics: tuple[str, ...] = ()) -> StudyRecords:
    """Read every trial of ``study`` from MLflow.

    Args:
        study: the study (see :func:`search.records.studies.find_study`).
        client: an MLflow client on the study's tracking URI (made when omitted).
        curve_metrics: per-epoch metrics to read for every trial besides the study metric.
    """
    client = client or study.client()
    parent = parent_run(client, study)
    metric, mode = study_metric(parent)
    runs = child_runs(client, study)
    trials = trial_table(runs, metric, mode, parse=parse_param)
    if not trials.empty:
        trials = trials.drop(columns=[c for c in NOT_SETTINGS if c in trials.columns])
    searched = {name for names in trials.get("sampled", []) for name in names}
    curves = {run.info.run_id: epoch_curves(client, run.info.run_id, (metric, *curve_metrics)) for run in runs}
    order = [name for name in _space_order(parent.data.tags.get(SPACE_TAG, "")) if name in searched]
    searched_names = order + sorted(searched - set(order))
    return StudyRecords(study=study, metric=metric, mode=mode, trials=trials, searched=searched_names, curves=curves,
                        parent_params=dict(parent.data.params), parent_metrics=dict(parent.data.metrics),
                        parent_tags=dict(parent.data.tags))


def epoch_curves(client: MlflowClient, run_id: str, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch values of ``metrics`` for one run (index: epoch, the MLflow step)."""
    columns = {}
    for key in dict.fromkeys(metrics):
        history = client.get_metric_history(run_id, curve(key))
        columns[key] = pd.Series({m.step: m.value for m in history}, dtype=float)
    return pd.DataFrame(columns).sort_index()


def _space_order(space_text: str) -> list[str]:
    """The ``search`` keys in the order the space file lists them (for stable report order)."""
    import yaml

    try:
        raw = yaml.safe_load(space_text) or {}
    except yaml.YAMLError:
        return []
    section = raw.get("search") if isinstance(raw, dict) else None
    return list(section) if isinstance(section, dict) else []


__all__ = ["StudyRecords", "epoch_curves", "is_pretrained", "load_records", "parse_param", "value_key"]
