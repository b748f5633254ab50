"""Run or resume a study: a space in, a Ray Tune search out, every trial in MLflow.

Data flow: validate the space (before Ray starts) -> decode the dataset once (cached on
disk) -> put it in Ray's object store once -> Tuner with OptunaSearch + ASHA -> MLflow
parent run with one child per trial. A study lives in ``<storage>/<name>/``; the file
``medtune_study.json`` there remembers what ``--resume`` needs.

On a Ray cluster the trials run on other machines than the driver, so everything a
trial writes goes through Tune to the storage every node sees (``--storage s3://...`` or
a shared mount), and everything medtune keeps about the study (the study file, ASHA's
rungs, MLflow) is written by the driver alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.records.runs import ended_trials, state_counts
from search.records.storage import StudyFiles, normalize
from search.records.study_record import STUDY_FILE
from search.records.tags import RESUME_TAG, STATUS_TAG
from search.space import Space, SpaceError, load_space
from search.study.finish import finish_study, reopen_study_run
from search.study.ray_compat import check_ray_version, set_tune_environment
from search.study.resources import (
    _cluster_gpus,
    check_trial_fits,
    start_ray,
    trial_gpus,
)
from search.study.folds import resolve_cv_folds, with_cv_folds
from search.study.tuner import build_tuner, fit_study

DEFAULT_STORAGE = "runs/studies"


@dataclass(frozen=True)
class StudyOptions:
    """Command-line choices of ``search run`` (each overrides the space file)."""

    name: str | None = None
    address: str | None = None
    num_samples: int | None = None
    time_budget: str | None = None
    resume: bool = False
    tracking_uri: str | None = None
    storage: str | None = None
    num_cpus: int | None = None
    cv: int | str | None = None


def study_dir(space: Space, options: StudyOptions) -> StudyFiles:
    """Where Tune keeps the study: an absolute path (Tune refuses relative ones) or a
    pyarrow URI such as ``s3://bucket/studies`` (what a multi-node cluster needs)."""
    storage = options.storage or os.environ.get("MEDTUNE_STORAGE") or DEFAULT_STORAGE
    try:
        import pyarrow.fs

        root = normalize(storage)
        if "://" in root:
            pyarrow.fs.FileSystem.from_uri(root)
    except (ValueError, OSError, ImportError) as err:
        raise SpaceError(space.path, "--storage", f"pyarrow cannot open {storage!r} ({err})",
                         "pass a folder, or a URI Tune understands: s3://BUCKET/PATH, gs://BUCKET/PATH") from None
    return StudyFiles(root, options.name or space.name)


def apply_overrides(space: Space, options: StudyOptions) -> Space:
    """Return ``space`` with ``--num-samples`` / ``--time-budget`` / ``--cv`` applied (validated)."""
    import dataclasses

    changes: dict[str, Any] = {}
    if options.num_samples is not None:
        changes["num_samples"] = options.num_samples
    if options.time_budget is not None:
        changes["time_budget"] = options.time_budget
    if options.cv is not None:
        changes["cv_folds"] = options.cv
    if not changes:
        return space
    try:
        tune_settings = dataclasses.replace(space.tune, **changes)
    except ValueError as err:
        raise SpaceError(space.path, "--num-samples/--time-budget/--cv", str(err)) from None
    return dataclasses.replace(space, tune=tune_settings)


def prepare(space_path: str | Path, options: StudyOptions) -> tuple[Space, StudyFiles]:
    """Everything checkable before Ray starts: the space, the backbones, the study dir."""
    from search.space.preflight import check_space

    if options.resume and (options.num_samples or options.time_budget or options.tracking_uri
                           or options.cv is not None):
        raise SpaceError(space_path, "--resume", "a resumed study keeps the trial count, time budget, folds and "
                         "MLflow store it started with (Tune and the study record restore them)",
                         "drop --num-samples/--time-budget/--cv/--tracking-uri, or start a new study with --name")
    space = apply_overrides(load_space(space_path), options)
    check_space(space)
    if space.tune.algorithm == "grid":
        from search.space.sampling import grid

        try:
            grid(space)
        except ValueError as err:
            raise SpaceError(space.path, "tune.algorithm", str(err)) from None
    directory = study_dir(space, options)
    exists = directory.exists(STUDY_FILE)
    if options.resume and not exists:
        raise SpaceError(space.path, "--resume", f"there is no study to resume at {directory}",
                         "run it without --resume first, or pass the --name / --storage it ran with")
    if not options.resume and exists:
        raise SpaceError(space.path, "--name", f"a study already exists at {directory}",
                         "pass --resume to continue it, or --name NEW_NAME to start another")
    if not options.resume and directory.exists():
        clear_aborted_start(directory)
    return space, directory


def clear_aborted_start(directory: StudyFiles) -> None:
    """Remove a study folder whose driver died before it wrote the study record.

    The record is written once the Tuner exists and before any trial starts, so such a
    folder holds at most Tune's ``tuner.pkl``: nothing the user ran. A folder that holds
    anything more is not medtune's to delete, and is refused.
    """
    from search.records.study_record import TUNER_PICKLE

    entries = directory.list_entries()
    if set(entries) - {TUNER_PICKLE}:
        raise SpaceError("--name", "--name", f"{directory} exists but is not a medtune study (no {STUDY_FILE}; it "
                         f"holds {', '.join(sorted(entries)[:5])})",
                         "pass another --name or --storage, or move that folder away")
    print(f"{directory} holds only the start of a study whose driver stopped before its first trial: "
          "starting it afresh", flush=True)
    directory.delete_dir("")


@dataclass(frozen=True)
class StudyOutcome:
    """How a driver run of a study ended.

    Attributes:
        status: ``finished`` (every trial ran or the budget ended it), ``interrupted``
            (Ctrl-C: resume it), or ``no_trial_finished`` (every trial errored).
        name: the study name; resume: the command that continues it.
        counts: trials by state, read back from MLflow.
        tracking_uri: where its MLflow runs are (None when nothing ran).
    """

    status: str
    name: str
    resume: str
    counts: dict[str, int]
    tracking_uri: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when it finished with a result, 130 when interrupted (like a shell), else 1."""
        return {"finished": 0, "interrupted": 130}.get(self.status, 1)


def resume_command(space_path: str | Path, options: StudyOptions, name: str) -> str:
    """The ``search run ... --resume`` line that continues this study."""
    parts = ["search", "run", str(space_path), "--resume"]
    if options.name:
        parts += ["--name", name]
    if options.storage:
        parts += ["--storage", options.storage]
    if options.address:
        parts += ["--address", options.address]
    return " ".join(parts)


def run_study(space_path: str | Path, options: StudyOptions) -> StudyOutcome:
    """Run (or, with ``options.resume``, continue) a study.

    Steps: check the space -> load the data -> start Ray and check the trials fit on a
    node -> open (or reopen) the MLflow parent run -> build (or restore) the Tuner ->
    write the study record -> fit, with one budget clock and a Ctrl-C watch -> close
    every ended trial's run and the parent with the study's real state.
    """
    check_ray_version()
    set_tune_environment()
    import mlflow  # noqa: F401  (import before Ray workers fork: slow import, once)

    from search.records.tracking import preload_plotting

    preload_plotting()  # before the trials: at the first trial's end it would stall them
    from search.records.study_record import RecordError, StudyRecord
    from trainables.data import describe, load_dataset

    space, directory = prepare(space_path, options)
    record = None
    if options.resume:  # the record first: a broken one must not cost a data load
        try:
            record = StudyRecord.read(directory)
        except RecordError as err:
            raise SpaceError(space.path, "--resume", str(err)) from None
    started = time.perf_counter()
    data = load_dataset(space.data)
    print(describe(data) + f" ({time.perf_counter() - started:.1f}s)", flush=True)
    if record is not None:
        folds, why = record.cv_folds, f"cv_folds {record.cv_folds}, as the study started"
    else:
        folds, why = resolve_cv_folds(space.tune.cv_folds, data)
    space = with_cv_folds(space, data, folds)  # a K the data cannot take is refused here, before Ray
    print(why, flush=True)
    from search.space.sampling import grid_note, scratch_note

    if (note := scratch_note(space)) is not None:
        print(note, flush=True)
    if (note := grid_note(space)) is not None:
        print(note, flush=True)
    resume = resume_command(space_path, options, directory.name)
    if record is not None:
        try:
            record.check_resumable(directory, space.raw, data.fingerprint)
        except RecordError as err:
            raise SpaceError(space.path, "--resume", str(err)) from None
        budget = space.tune.time_budget_s
        if budget is not None and record.budget_spent_s >= budget:
            print(f"the study's time budget ({space.tune.time_budget}) is spent: nothing left to run", flush=True)
            return StudyOutcome("finished", directory.name, resume, {})

    joined = start_ray(options.address, options.num_cpus)
    resources = {"cpu": space.resources.cpus, "gpu": trial_gpus(space.resources.gpus, _cluster_gpus(joined))}
    check_trial_fits(space, resources, joined)

    from search.records.tracking import (
        MlflowClient,
        experiment_id,
        resolve_tracking_uri,
        start_study_run,
    )

    if record is not None:
        tracking_uri = record.tracking_uri
        client = MlflowClient(tracking_uri)
        exp_id, parent_run_id = record.experiment_id, record.parent_run_id
        reopen_study_run(client, exp_id, parent_run_id)
        ended = ended_trials(client, exp_id, parent_run_id)
    else:
        tracking_uri = resolve_tracking_uri(options.tracking_uri, space.mlflow.tracking_uri)
        client = MlflowClient(tracking_uri)
        exp_id = experiment_id(client, space.mlflow.experiment or space.name, tracking_uri)
        settings = {
            "study": directory.name, "algorithm": space.tune.algorithm, "num_samples": space.tune.num_samples,
            "time_budget": space.tune.time_budget, "metric": space.tune.metric, "mode": space.tune.mode,
            "scheduler": space.scheduler.type, "seed": space.tune.seed, "max_epochs": space.max_epochs,
            "cv_folds": folds,
            **{f"data.{k}": v for k, v in data.split_sizes().items()},
        }
        parent_run_id = start_study_run(client, exp_id, directory.name, space.text,
                                        {"fingerprint": data.fingerprint, "sizes": data.split_sizes(),
                                         "skipped": data.skipped, "group_overlap": data.group_overlap}, settings)
        ended = frozenset()
    print(f"study {directory.name}: MLflow run {parent_run_id} at {tracking_uri}", flush=True)
    client.set_tag(parent_run_id, RESUME_TAG, resume)

    try:
        tuner = build_tuner(space, directory, data, resources, joined, tracking_uri, exp_id, parent_run_id, ended,
                            restore=record is not None)
        if record is None:
            from search.records.study_record import TUNER_PICKLE, file_sha256

            record = StudyRecord.new(directory.name, space_path, space.raw, tracking_uri, exp_id, parent_run_id,
                                     data.fingerprint)
            record.tuner_sha256 = file_sha256(directory, TUNER_PICKLE)
            record.cv_folds = folds
            record.write(directory)
        status = fit_study(tuner, space, directory, record)
    except BaseException as err:  # the parent run must not say "running" for a driver that stopped
        interrupted = isinstance(err, KeyboardInterrupt)
        client.set_tag(parent_run_id, STATUS_TAG, "interrupted" if interrupted else "failed")
        client.set_terminated(parent_run_id, "KILLED" if interrupted else "FAILED")
        raise
    table, status = finish_study(client, exp_id, parent_run_id, space.tune.metric, space.tune.mode, status)
    return StudyOutcome(status, directory.name, resume, state_counts(table), tracking_uri)
