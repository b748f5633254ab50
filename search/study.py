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
from search.storage import StudyFiles, normalize

STUDY_FILE = "medtune_study.json"
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
    if not options.resume and directory.exists():
        raise SpaceError(space.path, "--name", f"a study already exists at {directory}",
                         "pass --resume to continue it, or --name NEW_NAME to start another")
    return space, directory


def run_study(space_path: str | Path, options: StudyOptions) -> Any:
    """Run (or, with ``options.resume``, continue) a study; returns Tune's ResultGrid."""
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
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.asha import PersistentASHA, SnapshotFIFO
    from search.callbacks import MlflowTrialLogger, ProgressLine
    from search.sampling import DefineByRun, grid_size, sampler_for
    from search.tracking import MlflowClient, experiment_id, resolve_tracking_uri, start_study_run
    from search.trainable import train
    from trainables.data import load_dataset

    space, directory = prepare(space_path, options)
    started = time.perf_counter()
    data = load_dataset(space.data)
    print(f"data {Path(data.source).name}: " + ", ".join(f"{k} {v}" for k, v in data.split_sizes().items())
          + f" ({time.perf_counter() - started:.1f}s)", flush=True)

    tracking_uri = resolve_tracking_uri(options.tracking_uri, space.mlflow.tracking_uri)
    client = MlflowClient(tracking_uri)
    name = directory.name
    ended: frozenset[str] = frozenset()
    if options.resume:
        record = json.loads(directory.read_text(STUDY_FILE))
        if record["data_fingerprint"] != data.fingerprint:
            raise SpaceError(space.path, "data", "the data changed since the study started (fingerprint differs)",
                             "resume with the same data, or start a new study with --name")
        tracking_uri, exp_id, parent_run_id = record["tracking_uri"], record["experiment_id"], record["parent_run_id"]
        client = MlflowClient(tracking_uri)
        client.set_terminated(parent_run_id, "RUNNING")
        ended = ended_trials(client, exp_id, parent_run_id)
    else:
        exp_id = experiment_id(client, space.mlflow.experiment or space.name, tracking_uri)
        settings = {
            "study": name, "algorithm": space.tune.algorithm, "num_samples": space.tune.num_samples,
            "time_budget": space.tune.time_budget, "metric": space.tune.metric, "mode": space.tune.mode,
            "scheduler": space.scheduler.type, "seed": space.tune.seed, "max_epochs": space.max_epochs,
            **{f"data.{k}": v for k, v in data.split_sizes().items()},
        }
        parent_run_id = start_study_run(client, exp_id, name, space.text,
                                        {"fingerprint": data.fingerprint, "sizes": data.split_sizes()}, settings)
        directory.write_text(STUDY_FILE, json.dumps({
            "name": name, "space": str(Path(space_path).resolve()), "tracking_uri": tracking_uri,
            "experiment_id": exp_id, "parent_run_id": parent_run_id, "data_fingerprint": data.fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2))
    print(f"study {name}: MLflow run {parent_run_id} at {tracking_uri}", flush=True)

    if not ray.is_initialized():
        ray.init(address=options.address, num_cpus=options.num_cpus if options.address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)

    joined = options.address is not None  # an existing cluster, maybe autoscaling (search.cluster)
    resources = {"cpu": space.resources.cpus, "gpu": trial_gpus(space.resources.gpus, _cluster_gpus(joined))}
    # The trials that ended before a restart (from MLflow, written by the driver only):
    # Tune's last snapshot may still list one as running, and it must not train again.
    trainable = tune.with_resources(tune.with_parameters(train, data=data, fixed=space.params, ended=ended),
                                    resources)
    metric, mode = space.tune.metric, space.tune.mode
    fixed = dict(space.params)
    callbacks = [
        MlflowTrialLogger(tracking_uri, exp_id, parent_run_id, fixed, metric, mode, data.class_names,
                          stopper="asha" if space.scheduler.type == "asha" else "time budget",
                          budget_s=space.tune.time_budget_s),
        ProgressLine(metric, mode, fixed, space.tune.time_budget_s),
    ]
    if options.resume:
        tuner = tune.Tuner.restore(directory.uri, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
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
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                        num_samples=num_samples, time_budget_s=space.tune.time_budget_s,
                                        # A new actor per trial re-imports torch and re-fetches the data: seconds each.
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=name,
                storage_path=directory.root,
                callbacks=callbacks,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=space.tune.max_failures),
                # Keep every checkpoint while the study runs: Tune deletes the ones outside
                # num_to_keep before its next experiment snapshot, so a driver killed in
                # between resumes from a deleted checkpoint. prune_checkpoints trims at the end.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
    results = tuner.fit()
    pruned = prune_checkpoints(directory, metric, mode)
    if pruned:
        print(f"kept each trial's 2 best checkpoints and its latest; removed {pruned} others", flush=True)
    from search.leaderboard import finish_study

    finish_study(client, exp_id, parent_run_id, metric, mode)
    return results


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
