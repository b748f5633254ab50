"""The numbers behind each report section, computed from a study's trial table.

Pure functions of :class:`~search.report.records.StudyRecords` (no plotting, no I/O
except the best trial's saved validation predictions), so each answer can be tested on
its own. "Best" always means the best value of the study metric a trial reached at any
epoch, the same number ``search best`` ranks by; trials stopped early by ASHA count with
the best value they reached before being stopped.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from search.report.records import StudyRecords, is_pretrained, value_key


def with_init(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus an ``init`` column: ``ImageNet`` (or ``weights file``) vs ``scratch``."""
    table = table.copy()
    pretrained = table["pretrained"] if "pretrained" in table.columns else pd.Series(False, index=table.index)
    table["init"] = [("ImageNet" if value in (True, "hub") else "weights file") if is_pretrained(value) else "scratch"
                     for value in pretrained]
    return table


def best_by(records: StudyRecords, table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Best trial per combination of ``keys``: the keys, ``value``, ``trial_id``, ``trials`` (count)."""
    if table.empty:
        return pd.DataFrame(columns=[*keys, "value", "trial_id", "trials"])
    grouped = table.assign(**{f"_{k}": table[k].map(value_key) for k in keys}).groupby([f"_{k}" for k in keys],
                                                                                       sort=False)
    rows = []
    for _, group in grouped:
        best = records.best_of(group)
        if best is None:
            continue
        rows.append({**{k: best[k] for k in keys}, "value": float(best["value"]), "trial_id": best["trial_id"],
                     "trials": len(group)})
    return pd.DataFrame(rows)


def stages_of(backbone: str) -> int | None:
    """Number of ``feature_info`` stages of a backbone (``None`` when it cannot be resolved)."""
    try:
        from trainables.models import backbone_stages

        return int(backbone_stages(str(backbone)))
    except Exception:  # noqa: BLE001 - an unknown name only costs the report a column
        return None


def kept_stages(backbone: str, truncate_after: Any) -> int | None:
    """Stages a (possibly truncated) backbone keeps: frozen_stages equal to this is pure feature extraction."""
    from trainables.models import kept_stages as kept

    total = stages_of(backbone)
    if total is None:
        return None
    return kept(total, None if _isnan(truncate_after) else truncate_after)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def depth_table(records: StudyRecords) -> pd.DataFrame:
    """Finished trials with ``init``, ``kept_stages``, ``variant`` (backbone, init, truncation, and
    training fraction when that varied: the best depth may change with the data size) and
    ``regime`` (fine-tuning / feature extraction)."""
    table = with_init(records.finished)
    if table.empty:
        return table.assign(kept_stages=[], variant=[], regime=[])
    truncation = table["truncate_after"] if "truncate_after" in table.columns else pd.Series(None, index=table.index)
    table["kept_stages"] = [kept_stages(b, t) for b, t in zip(table["backbone"], truncation)]
    frozen = table["frozen_stages"] if "frozen_stages" in table.columns else pd.Series(0, index=table.index)
    fractions = (table["train_fraction"] if records.varied("train_fraction")
                 else pd.Series([None] * len(table), index=table.index, dtype=object))
    table["variant"] = [f"{b} ({i}" + (f", cut after stage {int(t)}" if t is not None and not _isnan(t) else "")
                        + (f", {float(f):.0%} of train" if f is not None else "") + ")"
                        for b, i, t, f in zip(table["backbone"], table["init"], truncation, fractions)]
    table["regime"] = ["feature extraction" if k is not None and int(f) >= k else
                       ("fine-tuning (all stages)" if int(f) == 0 else "fine-tuning (partial)")
                       for f, k in zip(frozen, table["kept_stages"])]
    return table


def parameter_kind(records: StudyRecords, name: str, space: Any | None) -> str:
    """``log``, ``linear`` or ``categorical``: how to place a parameter on an axis."""
    dist = space.search.get(name) if space is not None else None
    if dist is not None:
        if dist.kind == "choice":
            values = [v for v in dist.values if v is not None]
            numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            return "linear" if numeric and len(set(values)) > 3 else "categorical"
        return "log" if dist.kind in ("loguniform", "logint") else "linear"
    values = records.finished[name].dropna() if name in records.finished.columns else pd.Series(dtype=object)
    numeric = len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return "linear" if numeric and values.nunique() > 3 else "categorical"


def importances(records: StudyRecords, space: Any | None) -> tuple[dict[str, float], str]:
    """Optuna fANOVA importance of each searched parameter for the study metric.

    An Optuna study is rebuilt from the finished trials (``create_trial`` with the
    space's distributions; categorical values as their text). Only parameters that every
    finished trial has and that took two or more values enter: a conditional parameter
    (momentum only for SGD) is left out, as Optuna's evaluators do.

    Returns:
        ``(importance by parameter, note)``; an empty dict with the reason when fANOVA
        cannot run (too few trials, nothing varied).
    """
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = records.finished
    names = [n for n in records.searched if n in table.columns and len(records.sampled(n)) == len(table)
             and records.varied(n)]
    left_out = [n for n in records.searched if n not in names]
    if len(table) < 4 or not names:
        why = f"{len(table)} finished trials" if len(table) < 4 else "no searched parameter took two values in every trial"
        return {}, f"fANOVA needs at least 4 finished trials and a varied parameter ({why})"
    distributions = {}
    for name in names:
        kind = parameter_kind(records, name, space)
        values = table[name]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if kind != "categorical" and numeric:
            low, high = float(values.min()), float(values.max())
            dist = space.search.get(name) if space is not None else None
            if dist is not None and dist.low is not None:
                low, high = min(low, float(dist.low)), max(high, float(dist.high))
            integral = all(float(v).is_integer() for v in values) and (dist is None or dist.kind in ("int", "logint"))
            log = kind == "log" and low > 0
            distributions[name] = (IntDistribution(int(low), int(high), log=log) if integral
                                   else FloatDistribution(low, high, log=log))
        else:
            distributions[name] = CategoricalDistribution(sorted({value_key(v) for v in values}))
    study = optuna.create_study(direction="maximize" if records.mode == "max" else "minimize")
    for _, row in table.iterrows():
        params = {}
        for name, dist in distributions.items():
            value = row[name]
            params[name] = value_key(value) if isinstance(dist, CategoricalDistribution) else \
                (int(value) if isinstance(dist, IntDistribution) else float(value))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row["value"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), normalize=True)
    note = f"fANOVA (Optuna, seed 0) over {len(table)} finished trials"
    if left_out:
        note += f"; not included (conditional or not varied): {', '.join(left_out)}"
    return {k: float(v) for k, v in result.items()}, note


def bootstrap_auc(labels: np.ndarray, probs: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUC of saved predictions and its 95% percentile bootstrap interval over validation images.

    Binary: AUC of class 1's probability; more classes: macro one-vs-rest, as the trials
    compute ``val_auc``. Resamples missing a class are skipped.

    Returns:
        ``(auc, low, high)``.
    """
    from trainables.metrics import (
        _auc as auc,  # the trials' own val_auc, so the point estimate matches MLflow
    )

    labels = np.asarray(labels).ravel()
    probs = np.asarray(probs)
    rng = np.random.default_rng(seed)
    values = []
    classes = len(np.unique(labels))
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[index])) == classes:
            values.append(auc(labels[index], probs[index]))
    low, high = np.percentile(values, [2.5, 97.5])
    return auc(labels, probs), float(low), float(high)


def same_config(records: StudyRecords, best: pd.Series, ignore: tuple[str, ...] = ("seed",)) -> pd.DataFrame:
    """Finished trials whose searched settings equal the best trial's (repeats, other seeds)."""
    table = records.finished
    keys = [n for n in records.searched if n not in ignore and n in table.columns]
    mask = pd.Series(True, index=table.index)
    for key in keys:
        mask &= table[key].map(value_key) == value_key(best[key])
    return table[mask]


def seed_spread(records: StudyRecords) -> pd.DataFrame:
    """Configurations that ran with two or more seeds: ``trials``, ``mean``, ``std``, ``low``, ``high``.

    Only meaningful when ``seed`` was searched (or a grid repeated): trials are grouped by
    every other searched setting.
    """
    table = records.finished
    keys = [n for n in records.searched if n != "seed" and n in table.columns]
    if table.empty or "seed" not in records.searched or not keys:
        return pd.DataFrame(columns=["trials", "mean", "std", "low", "high"])
    groups = table.groupby([table[k].map(value_key) for k in keys])["value"]
    spread = pd.DataFrame({"trials": groups.size(), "mean": groups.mean(), "std": groups.std(ddof=1),
                           "low": groups.min(), "high": groups.max()})
    return spread[spread["trials"] >= 2]


def asha_stops(records: StudyRecords) -> dict[int, int]:
    """Trials ASHA stopped, by the epoch they stopped at."""
    table = records.trials
    stopped = table[(table["state"] == "stopped_early") & (table["stopped_by"] == "asha")]
    return {int(k): int(v) for k, v in stopped["epochs_run"].value_counts().sort_index().items()}


__all__ = ["asha_stops", "best_by", "bootstrap_auc", "depth_table", "importances", "kept_stages", "parameter_kind",
           "same_config", "seed_spread", "stages_of", "with_init"]
