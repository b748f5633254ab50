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

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.space import Space, SpaceError, load_space
from search.record import STUDY_FILE
from search.storage import StudyFiles, normalize
from search.tags import RESUME_TAG, STATUS_TAG

ASHA_FILE = "asha_state.json"
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
    """Return ``space`` with ``--num-samples`` / ``--time-budget`` applied (validated)."""
    import dataclasses

    changes: dict[str, Any] = {}
    if options.num_samples is not None:
        changes["num_samples"] = options.num_samples
    if options.time_budget is not None:
        changes["time_budget"] = options.time_budget
    if not changes:
        return space
    try:
        tune_settings = dataclasses.replace(space.tune, **changes)
    except ValueError as err:
        raise SpaceError(space.path, "--num-samples/--time-budget", str(err)) from None
    return dataclasses.replace(space, tune=tune_settings)


def prepare(space_path: str | Path, options: StudyOptions) -> tuple[Space, StudyFiles]:
    """Everything checkable before Ray starts: the space, the backbones, the study dir."""
    from search.preflight import check_space

    if options.resume and (options.num_samples or options.time_budget or options.tracking_uri):
        raise SpaceError(space_path, "--resume", "a resumed study keeps the trial count, time budget and MLflow "
                         "store it started with (Tune restores them)",
                         "drop --num-samples/--time-budget/--tracking-uri, or start a new study with --name")
    space = apply_overrides(load_space(space_path), options)
    check_space(space)
    if space.tune.algorithm == "grid":
        from search.sampling import grid

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
    from search.record import TUNER_PICKLE

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
    """

    status: str
    name: str
    resume: str
    counts: dict[str, int]

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
    # Tune warns at every forced snapshot (one per num_to_keep checkpoints): noise for a user.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state every 2 s (small JSON): a killed driver loses at most
    # the trials started in its last 2 s, which the search then proposes again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # A trial that had already ended before a restart returns at once with no metrics
    # (see search.trainable.train); Tune's strict check would stop the whole study.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import mlflow  # noqa: F401  (import before Ray workers fork: slow import, once)

    from search.tracking import preload_plotting

    preload_plotting()  # before the trials: at the first trial's end it would stall them
    from search.record import RecordError, StudyRecord
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

    joined = start_ray(options)
    resources = {"cpu": space.resources.cpus, "gpu": trial_gpus(space.resources.gpus, _cluster_gpus(joined))}
    check_trial_fits(space, resources, joined)

    from search.tracking import MlflowClient, experiment_id, resolve_tracking_uri, start_study_run

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
            **{f"data.{k}": v for k, v in data.split_sizes().items()},
        }
        parent_run_id = start_study_run(client, exp_id, directory.name, space.text,
                                        {"fingerprint": data.fingerprint, "sizes": data.split_sizes(),
                                         "skipped": data.skipped, "group_overlap": data.group_overlap}, settings)
        ended = frozenset()
    print(f"study {directory.name}: MLflow run {parent_run_id} at {tracking_uri}", flush=True)
    client.set_tag(parent_run_id, RESUME_TAG, resume)

    tuner = build_tuner(space, directory, data, resources, joined, tracking_uri, exp_id, parent_run_id, ended,
                        restore=record is not None)
    if record is None:
        from search.record import TUNER_PICKLE, file_sha256

        record = StudyRecord.new(directory.name, space_path, space.raw, tracking_uri, exp_id, parent_run_id,
                                 data.fingerprint)
        record.tuner_sha256 = file_sha256(directory, TUNER_PICKLE)
        record.write(directory)
    status = fit_study(tuner, space, directory, record)
    from search.leaderboard import finish_study

    table, status = finish_study(client, exp_id, parent_run_id, space.tune.metric, space.tune.mode, status)
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    return StudyOutcome(status, directory.name, resume, counts)


def start_ray(options: StudyOptions) -> bool:
    """Start a local Ray (or join ``--address``); True when the driver joined a cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address=options.address, num_cpus=options.num_cpus if options.address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    return options.address is not None  # an existing cluster, maybe autoscaling (search.cluster)


def reopen_study_run(client: Any, exp_id: str, parent_run_id: str) -> None:
    """Mark a resumed study's parent run running again, with its trial counts recounted
    (a Ctrl-C can leave counts from the moment it came)."""
    from search.leaderboard import leaderboard, record_counts

    client.set_terminated(parent_run_id, "RUNNING")
    client.set_tag(parent_run_id, STATUS_TAG, "running")
    record_counts(client, parent_run_id, leaderboard(client, exp_id, parent_run_id, "val_loss", "min"))


def build_tuner(space: Space, directory: StudyFiles, data: Any, resources: dict[str, float], joined: bool,
                tracking_uri: str, exp_id: str, parent_run_id: str, ended: frozenset[str], restore: bool) -> Any:
    """A new Tuner for the space, or the study's restored one (``restore``)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.asha import PersistentASHA, SnapshotFIFO
    from search.mlflow_logger import MlflowTrialLogger
    from search.progress import ProgressLine
    from search.sampling import DefineByRun, grid_size, sampler_for
    from search.stopping import BudgetStopper
    from search.trainable import train

    # The trials that ended before a restart (from MLflow, written by the driver only):
    # Tune's last snapshot may still list one as running, and it must not train again.
    trainable = tune.with_resources(tune.with_parameters(train, data=data, fixed=space.params, ended=ended),
                                    resources)
    if restore:
        return tune.Tuner.restore(directory.uri, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    metric, mode = space.tune.metric, space.tune.mode
    fixed = dict(space.params)
    callbacks = [
        MlflowTrialLogger(tracking_uri, exp_id, parent_run_id, fixed, metric, mode, data.class_names,
                          stopper="asha" if space.scheduler.type == "asha" else "none", clock_key=directory.uri,
                          log_scale=tuple(k for k, d in space.search.items() if d.kind in ("loguniform", "logint"))),
        ProgressLine(metric, mode, fixed, clock_key=directory.uri),
    ]
    searcher: Any = OptunaSearch(space=DefineByRun(space), sampler=sampler_for(space), metric=metric, mode=mode)
    # Tune lets a non-default searcher keep only one trial pending unless it is wrapped
    # in a ConcurrencyLimiter, which in practice serialises the study (ray#46965).
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.tune.max_concurrent or trial_slots(resources, joined))
    if space.scheduler.type == "asha":
        scheduler: Any = PersistentASHA(
            directory, ASHA_FILE, time_attr="training_iteration", max_t=space.max_epochs,
            grace_period=min(space.scheduler.grace_period, space.max_epochs),
            reduction_factor=space.scheduler.reduction_factor,
        )
    else:
        scheduler = SnapshotFIFO()
    num_samples = space.tune.num_samples * (grid_size(space) if space.tune.algorithm == "grid" else 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples,
                                    # A new actor per trial re-imports torch and re-fetches the data: seconds each.
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=directory.name,
            storage_path=directory.root,
            callbacks=callbacks,
            # The time budget is medtune's (search.stopping): one clock across resumes.
            stop=BudgetStopper(directory.uri),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=space.tune.max_failures),
            # Keep every checkpoint while the study runs: Tune deletes the ones outside
            # num_to_keep before its next experiment snapshot, so a driver killed in
            # between resumes from a deleted checkpoint. prune_checkpoints trims at the end.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def fit_study(tuner: Any, space: Space, directory: StudyFiles, record: Any) -> str:
    """Run Tune's loop; returns ``finished`` or ``interrupted``.

    The budget clock continues from what the record says earlier driver runs spent, and
    the record keeps the account (every 30 s and at the end). A first Ctrl-C lets Tune
    save and return (the study can be resumed); a second one stops at once.
    """
    from search.stopping import InterruptWatch, StudyClock, register_clock

    def persist(spent_s: float) -> None:
        record.budget_spent_s = round(spent_s, 1)
        record.write(directory)

    clock = StudyClock(space.tune.time_budget_s, record.budget_spent_s, persist)
    register_clock(directory.uri, clock)
    clock.start()
    interrupted = False
    try:
        with InterruptWatch() as watch:
            tuner.fit()
            interrupted = watch.interrupted()
    except KeyboardInterrupt:  # the second Ctrl-C: Tune saved nothing more, but the last snapshot stands
        interrupted = True
    finally:
        persist(clock.spent_s())
    if not interrupted:
        pruned = prune_checkpoints(directory, space.tune.metric, space.tune.mode)
        if pruned:
            print(f"kept each trial's 2 best checkpoints and its latest; removed {pruned} others", flush=True)
    return "interrupted" if interrupted else "finished"


def check_trial_fits(space: Space, resources: dict[str, float], joined: bool) -> None:
    """Refuse per-trial resources that no node of the cluster can ever provide.

    Ray would keep such trials pending forever (and the study's MLflow run open). An
    autoscaling cluster counts the node types it may start, not only the nodes up now.
    """
    import ray

    from search.cluster import autoscaling_node_types

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    nodes += autoscaling_node_types() if joined else []
    if any(node.get("CPU", 0) >= resources["cpu"] and node.get("GPU", 0) >= resources["gpu"] for node in nodes):
        return
    largest = ", ".join(sorted({f"{node.get('CPU', 0):g} CPUs / {node.get('GPU', 0):g} GPUs" for node in nodes}))
    raise SpaceError(space.path, "resources", f"each trial asks for {resources['cpu']:g} CPUs and "
                     f"{resources['gpu']:g} GPUs, but no node of the Ray cluster has that much (nodes: {largest}), "
                     "so every trial would wait forever",
                     "lower resources.cpus / resources.gpus, or add a node that big (--num-cpus sets the CPUs of "
                     "a local Ray)")


def ended_trials(client: Any, exp_id: str, parent_run_id: str) -> frozenset[str]:
    """Trial ids whose MLflow child run is no longer ``running`` (completed, stopped, errored, lost)."""
    from search.tracking import STATE_TAG, TRIAL_TAG, children_filter

    runs = client.search_runs([exp_id], filter_string=children_filter(parent_run_id), max_results=50000)
    return frozenset(run.data.tags[TRIAL_TAG] for run in runs
                     if TRIAL_TAG in run.data.tags and run.data.tags.get(STATE_TAG) != "running")


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


def cluster_totals(joined: bool = False) -> dict[str, float]:
    """Resources of the Ray cluster: those up now or, when the driver ``joined`` a cluster
    made by ``ray up`` with autoscaling workers, the most the autoscaler may start
    (whichever is larger). A Ray started by the driver itself never autoscales."""
    import ray

    from search.cluster import autoscaling_capacity

    now = ray.cluster_resources()
    most = autoscaling_capacity() if joined else {}
    return {key: max(float(now.get(key, 0)), float(most.get(key, 0))) for key in {*now, *most}}


def _cluster_gpus(joined: bool = False) -> float:
    return cluster_totals(joined).get("GPU", 0.0)


def trial_slots(resources: dict[str, float], joined: bool = False) -> int:
    """How many trials fit on the cluster at once with these per-trial resources."""
    total = cluster_totals(joined)
    slots = total.get("CPU", 1) // max(resources["cpu"], 1e-9)
    if resources["gpu"] > 0:
        slots = min(slots, total.get("GPU", 0) // resources["gpu"])
    return max(1, int(slots))


def trial_gpus(requested: float | None, available: float) -> float:
    """GPUs per trial: the space's value, or 1 when the cluster has GPUs (``null``).

    Asking for GPUs on a cluster without any would leave every trial pending forever,
    so it runs on CPUs instead, and says so.
    """
    if requested is None:
        return 1.0 if available > 0 else 0.0
    if requested > 0 and available == 0:
        print(f"resources.gpus is {requested:g} but the Ray cluster has no GPU: trials run on CPUs", flush=True)
        return 0.0
    return requested
