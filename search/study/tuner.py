"""The Tuner of a study, new or restored, and the fit that runs it.

A new Tuner is Optuna's seeded TPE (define-by-run over the space) behind a
ConcurrencyLimiter, ASHA mirrored to the study folder (or FIFO), medtune's MLflow logger
and progress line, and medtune's time-budget stopper; a restored one is whatever Tune
pickled into the study, with the trainable handed back.
"""

from __future__ import annotations

from typing import Any

from search.records.storage import StudyFiles
from search.space import Space
from search.study.finish import prune_checkpoints
from search.study.resources import trial_slots

ASHA_FILE = "asha_state.json"


def build_tuner(space: Space, directory: StudyFiles, data: Any, resources: dict[str, float], joined: bool,
                tracking_uri: str, exp_id: str, parent_run_id: str, ended: frozenset[str], restore: bool) -> Any:
    """A new Tuner for the space, or the study's restored one (``restore``)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.space.sampling import DefineByRun, grid_size, sampler_for
    from search.study.mlflow_logger import MlflowTrialLogger
    from search.study.optuna_search import StudySearch, optuna_storage
    from search.study.progress import ProgressLine
    from search.study.noise import resolve_grace_period, resolve_noise_margin
    from search.study.schedulers import PersistentASHA, SnapshotFIFO
    from search.study.stopping import BudgetStopper
    from search.study.trainable import train

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
    # Optuna's study on a real storage (a journal in the study folder, or an RDB): optuna-dashboard shows it live.
    optuna_store = optuna_storage(directory, space.path)
    print(optuna_store.describe(directory), flush=True)
    searcher: Any = StudySearch(DefineByRun(space), sampler_for(space), metric, mode, storage=optuna_store,
                                study_name=directory.name, fixed=fixed, parent_run_id=parent_run_id)
    # Tune lets a non-default searcher keep only one trial pending unless it is wrapped
    # in a ConcurrencyLimiter, which in practice serialises the study (ray#46965).
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.tune.max_concurrent or trial_slots(resources, joined))
    if space.scheduler.type == "asha":
        folds = int(space.params.get("cv_folds", 1))
        grace, why_grace = resolve_grace_period(space.scheduler.grace_period, data, folds, space.max_epochs)
        margin, why = resolve_noise_margin(space.scheduler.noise_margin, metric, data, folds)
        print(f"{why_grace}; {why}", flush=True)
        scheduler: Any = PersistentASHA(
            directory, ASHA_FILE, noise_margin=margin, time_attr="training_iteration", max_t=space.max_epochs,
            grace_period=grace,
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
            # The time budget is medtune's (search.study.stopping): one clock across resumes.
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
    from search.study.stopping import InterruptWatch, StudyClock, register_clock

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
