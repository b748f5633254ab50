"""Read finished studies back: list them, rank their trials, find the best checkpoint.

A study is two records that must agree: its folder ``<storage>/<name>/`` (the Tune
experiment, ``medtune_study.json`` and every trial's checkpoints) and its MLflow parent
run (one child per trial with its state and best epoch). ``search list``, ``search
best`` and the export all read studies through this module, so they find trials and
checkpoints the same way and fail with the same messages.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search.records.study_record import STUDY_FILE
from search.records.tags import (
    CONFIG_TAG,
    ERROR_TAG,
    FINISHED_STATES,
    RESUME_TAG,
    SEARCHED_TAG,
    STATE_TAG,
    STATUS_TAG,
    curve,
)
from search.records.tracking import MlflowClient, param_text
from search.study import DEFAULT_STORAGE


class StudyError(ValueError):
    """A study, run, trial or checkpoint that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class Study:
    """What ``medtune_study.json`` remembers about a study.

    Attributes:
        name: the study name (its folder name).
        directory: ``<storage>/<name>``, the Tune experiment folder.
        tracking_uri / experiment_id / parent_run_id: where its MLflow runs are.
        data_fingerprint: the dataset fingerprint it ran on (content, settings, split).
        space_path: the space file it was started from.
        created: local start time, ``YYYY-MM-DDTHH:MM:SS``.
    """

    name: str
    directory: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_fingerprint: str
    space_path: str
    created: str

    @classmethod
    def load(cls, directory: Path) -> "Study":
        """Read ``directory/medtune_study.json``."""
        from search.records.storage import StudyFiles
        from search.records.study_record import RecordError, StudyRecord

        try:
            record = StudyRecord.read(StudyFiles(str(directory.parent), directory.name))
        except RecordError as err:
            raise StudyError(str(err)) from None
        return cls(name=record.name, directory=directory, tracking_uri=record.tracking_uri,
                   experiment_id=record.experiment_id, parent_run_id=record.parent_run_id,
                   data_fingerprint=record.data_fingerprint, space_path=record.space, created=record.created)

    def client(self) -> MlflowClient:
        """An MLflow client on the study's tracking URI (never creating a new SQLite file)."""
        if self.tracking_uri.startswith("sqlite:///"):
            path = Path(self.tracking_uri[len("sqlite:///"):])
            if not path.is_file():
                raise StudyError(f"study {self.name!r} logged to {self.tracking_uri}, but {path} does not exist; "
                                 f"put the MLflow database back there, or fix tracking_uri in "
                                 f"{self.directory / STUDY_FILE}")
        return MlflowClient(self.tracking_uri)


def storage_root(storage: str | None = None) -> Path:
    """The folder holding studies: ``--storage``, else ``$MEDTUNE_STORAGE``, else ``runs/studies``.

    Studies that ran with URI storage (``s3://...``) are read from a local copy.
    """
    from search.records.storage import normalize

    root = normalize(storage or os.environ.get("MEDTUNE_STORAGE") or DEFAULT_STORAGE)
    if "://" in root:
        raise StudyError(f"studies are read from a folder, but the storage is {root!r}; copy the study first "
                         f"(e.g. `aws s3 sync {root}/NAME runs/studies/NAME`) and pass --storage runs/studies")
    return Path(root)


def study_folders(storage: str | None = None) -> list[Path]:
    """Every folder under the storage folder holding a ``medtune_study.json``."""
    root = storage_root(storage)
    return [path.parent for path in sorted(root.glob(f"*/{STUDY_FILE}"))] if root.is_dir() else []


def list_studies(storage: str | None = None) -> list[Study | StudyError]:
    """Every study under the storage folder, oldest first; unreadable ones as their error."""
    studies: list[Study | StudyError] = []
    for folder in study_folders(storage):
        try:
            studies.append(Study.load(folder))
        except StudyError as err:
            studies.append(err)
    return sorted(studies, key=lambda s: (s.created, s.name) if isinstance(s, Study) else ("", ""))


def find_study(name: str, storage: str | None = None) -> Study:
    """The study called ``name``; the error lists the studies that do exist."""
    root = storage_root(storage)
    directory = root / name
    if (directory / STUDY_FILE).is_file():
        return Study.load(directory)
    known = [folder.name for folder in study_folders(storage)]
    there = f"studies there: {', '.join(known)}" if known else "there are no studies there"
    raise StudyError(f"no study named {name!r} in {root} ({there}); check the name with `search list`, "
                     "or pass --storage (or set MEDTUNE_STORAGE) to the folder `search run` used")


def parent_run(client: MlflowClient, study: Study) -> Any:
    """The study's MLflow parent run."""
    try:
        return client.get_run(study.parent_run_id)
    except Exception as err:  # MlflowException: the run is not in this store
        raise StudyError(f"the MLflow run {study.parent_run_id} of study {study.name!r} is not in "
                         f"{study.tracking_uri} ({type(err).__name__}); the study's MLflow records are missing: "
                         f"point tracking_uri in {study.directory / STUDY_FILE} at the store it ran with") from None


def study_metric(run: Any) -> tuple[str, str]:
    """``(metric, mode)`` the study optimised, from its parent run's params."""
    return run.data.params.get("metric", "val_auc"), run.data.params.get("mode", "max")


def metric_mode(metric: str, study_metric_name: str, study_mode: str) -> str:
    """``max`` or ``min`` for ``metric``: the study's mode for its own metric, losses ``min``."""
    if metric == study_metric_name:
        return study_mode
    return "min" if metric.endswith("loss") else "max"


def child_runs(client: MlflowClient, study: Study) -> list[Any]:
    """Every trial's child run."""
    from search.records.runs import child_runs as runs_of

    return runs_of(client, study.experiment_id, study.parent_run_id)


@dataclass(frozen=True)
class Summary:
    """One line of ``search list``."""

    study: Study
    status: str
    counts: dict[str, int]
    metric: str
    best: float | None


def summarize(study: Study) -> Summary:
    """State counts and best metric of a study, read from MLflow (live while it runs)."""
    client = study.client()
    run = parent_run(client, study)
    metric, mode = study_metric(run)
    from search.records.runs import state_counts, trial_table

    table = trial_table(child_runs(client, study), metric, mode)
    counts = state_counts(table)
    scored = table["value"].dropna() if not table.empty else []
    best = float(scored.iloc[0]) if len(scored) else None
    return Summary(study, study_status(run), counts, metric, best)


def study_status(run: Any) -> str:
    """What ``search list`` says of a study: running, finished, no trial finished, or
    interrupted with the command that resumes it."""
    status = run.data.tags.get(STATUS_TAG) or run.info.status.lower()
    if status == "interrupted":
        command = run.data.tags.get(RESUME_TAG)
        return "interrupted — resume with: " + command if command else "interrupted — resume with --resume"
    return status.replace("_", " ")


@dataclass(frozen=True)
class BestTrial:
    """The best finished trial of a study by one metric.

    Attributes:
        trial_id / run_id: Tune trial id and its MLflow child run.
        metric / mode / value / epoch: the ranking metric, its best value and that epoch.
        state: ``completed`` or ``stopped_early``; epochs_run: the epochs it trained.
        params: every trial setting as MLflow holds it (strings).
        searched: the names of the searched settings.
    """

    trial_id: str
    run_id: str
    metric: str
    mode: str
    value: float
    epoch: int
    state: str
    epochs_run: int
    params: dict[str, str]
    searched: list[str]


def ranked_trials(client: MlflowClient, study: Study, metric: str | None = None) -> tuple[pd.DataFrame, str, str]:
    """The study's leaderboard by ``metric`` (default: the study's), best first.

    The study's own metric comes straight from :func:`search.records.runs.leaderboard`
    (the ``medtune.best_<metric>`` tags). Any other metric is ranked by its best epoch
    in each finished trial's MLflow history, since only the study metric is tagged.

    Returns:
        ``(table, metric, mode)``.
    """
    from search.records.runs import leaderboard
    from search.space import SEARCH_METRICS

    run = parent_run(client, study)
    own, own_mode = study_metric(run)
    metric = metric or own
    if metric not in SEARCH_METRICS:
        raise StudyError(f"--metric {metric!r} is not a metric trials report; use one of {', '.join(SEARCH_METRICS)} "
                         "(the test split is used only by --export)")
    mode = metric_mode(metric, own, own_mode)
    table = leaderboard(client, study.experiment_id, study.parent_run_id, metric, mode)
    if metric != own and not table.empty:
        for i, row in table.iterrows():
            history = client.get_metric_history(row["run_id"], curve(metric)) if row["state"] in FINISHED_STATES else []
            if history:
                pick = (max if mode == "max" else min)(history, key=lambda m: (m.value, -m.step) if mode == "max"
                                                        else (m.value, m.step))
                table.at[i, metric], table.at[i, "best_epoch"] = pick.value, pick.step
            else:
                table.at[i, metric], table.at[i, "best_epoch"] = None, pd.NA
        table = table.sort_values(metric, ascending=mode == "min", na_position="last").reset_index(drop=True)
    return table, metric, mode


def best_trial(client: MlflowClient, study: Study, metric: str | None = None) -> tuple[BestTrial, pd.DataFrame]:
    """The best finished trial (and the whole leaderboard).

    Raises:
        StudyError: no trial of the study finished with a score (the message counts the
            trials by state and quotes an error when they all failed).
    """
    table, metric, mode = ranked_trials(client, study, metric)
    finished = table[table["state"].isin(FINISHED_STATES) & table[metric].notna() & table["best_epoch"].notna()] \
        if not table.empty else table
    if finished.empty:
        counts = table["state"].value_counts().to_dict() if not table.empty else {}
        found = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
        reason = ""
        if counts.get("errored"):
            errored = [r for r in child_runs(client, study) if r.data.tags.get(STATE_TAG) == "errored"]
            error = next((r.data.tags.get(ERROR_TAG) for r in errored if r.data.tags.get(ERROR_TAG)), "")
            reason = f"; the first error: {error}" if error else ""
        raise StudyError(f"study {study.name!r} has no finished trial with a {metric} ({found}){reason}; "
                         "fix the space and run a new study (or `search run SPACE --resume` if it was interrupted)")
    return _trial_of(client, finished.iloc[0], metric, mode), table


def finished_trials(client: MlflowClient, study: Study, metric: str | None = None) -> list[BestTrial]:
    """Every finished trial with a score, best first."""
    best, table = best_trial(client, study, metric)
    finished = table[table["state"].isin(FINISHED_STATES) & table[best.metric].notna() & table["best_epoch"].notna()]
    return [best] + [_trial_of(client, row, best.metric, best.mode) for _, row in finished.iloc[1:].iterrows()]


def top_trials(client: MlflowClient, study: Study, k: int, metric: str | None = None) -> list[BestTrial]:
    """The ``k`` best finished trials, best first (the members of a top-K ensemble).

    Raises:
        StudyError: fewer than ``k`` trials finished (the message says how many did).
    """
    finished = finished_trials(client, study, metric)
    if len(finished) < k:
        raise StudyError(f"--ensemble top-{k} needs {k} finished trials, but study {study.name!r} has "
                         f"{len(finished)}; use --ensemble top-{max(len(finished), 2)} (if at least 2 finished), "
                         "--ensemble none, or run more trials with `search run SPACE --resume`")
    return finished[:k]


def _trial_of(client: MlflowClient, row: Any, metric: str, mode: str) -> BestTrial:
    """The :class:`BestTrial` of one leaderboard row."""
    run = client.get_run(row["run_id"])
    searched = json.loads(run.data.tags.get(SEARCHED_TAG, "[]"))
    # The full-precision settings (params are rounded for display); older runs lack the tag.
    params = {k: param_text(v) for k, v in json.loads(run.data.tags[CONFIG_TAG]).items()} \
        if CONFIG_TAG in run.data.tags else dict(run.data.params)
    return BestTrial(trial_id=str(row["trial_id"]), run_id=str(row["run_id"]), metric=metric, mode=mode,
                     value=float(row[metric]), epoch=int(row["best_epoch"]), state=str(row["state"]),
                     epochs_run=int(row["epochs_run"]), params=params, searched=searched)


def trial_directory(study: Study, trial_id: str) -> Path:
    """The trial's Tune folder, ``<study>/train_<trial_id>_<index>_<params>_<date>``."""
    pattern = re.compile(rf"^[A-Za-z0-9]+_{re.escape(trial_id)}_")
    found = sorted(p for p in study.directory.iterdir() if p.is_dir() and pattern.match(p.name))
    if not found:
        raise StudyError(f"trial {trial_id} of study {study.name!r} has no folder in {study.directory} "
                         f"(expected train_{trial_id}_...); its checkpoints are gone: copy the study folder back, "
                         "or pass --refit to retrain the best configuration instead")
    return found[-1]


def checkpoint_epochs(trial_dir: Path) -> dict[int, tuple[Path, list[dict[str, float]]]]:
    """Saved epoch -> (checkpoint folder, metric history up to it) for every checkpoint Tune kept.

    Tune numbers checkpoints by report, which differs from the epoch after a restore, so
    the epoch is read from each checkpoint itself (memory-mapped: the weights stay on disk).
    """
    import torch

    from trainables.checkpoint import CHECKPOINT_FILE

    epochs: dict[int, tuple[Path, list[dict[str, float]]]] = {}
    for folder in sorted(trial_dir.glob("checkpoint_*")):
        path = folder / CHECKPOINT_FILE
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            epochs[int(saved["epoch"])] = (folder, list(saved.get("history") or []))
    return epochs


def best_checkpoint(study: Study, best: BestTrial) -> tuple[Path, int]:
    """The checkpoint folder of the best trial's best epoch, and that epoch.

    Tune keeps the two best checkpoints by the study metric plus the latest, and on a
    tie it keeps the later epochs, while the best epoch recorded in MLflow is the first
    one reaching the best value. So when the best epoch's checkpoint is gone, a kept
    checkpoint whose own history scores the same value at its epoch is just as good.

    Raises:
        StudyError: the trial folder is missing, or no kept checkpoint reaches the best value.
    """
    trial_dir = trial_directory(study, best.trial_id)
    epochs = checkpoint_epochs(trial_dir)
    if best.epoch in epochs:
        return epochs[best.epoch][0], best.epoch
    for epoch, (folder, history) in sorted(epochs.items()):
        value = history[epoch - 1].get(best.metric) if len(history) >= epoch else None
        if value is not None and abs(float(value) - best.value) <= 5e-7:  # the tag holds 6 decimals
            return folder, epoch
    kept = ", ".join(str(e) for e in sorted(epochs)) or "none"
    raise StudyError(f"trial {best.trial_id} has no checkpoint of epoch {best.epoch}, its best {best.metric} "
                     f"(checkpoints kept in {trial_dir}: epochs {kept}; Tune keeps the 2 best by the study metric "
                     f"plus the latest); pass --refit to retrain that configuration for {best.epoch} epochs, "
                     "or rank by the study's own metric")


__all__ = [
    "FINISHED_STATES", "BestTrial", "Study", "StudyError", "Summary", "best_checkpoint", "best_trial",
    "checkpoint_epochs", "child_runs", "find_study", "list_studies", "parent_run", "ranked_trials",
    "storage_root", "study_folders", "study_metric", "summarize", "top_trials", "finished_trials", "trial_directory",
]
