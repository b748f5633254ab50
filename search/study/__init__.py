"""Run a study on Ray Tune: from a space file to trials, MLflow records and a study folder.

- :mod:`~search.study.run`: ``search run`` step by step (checks, data, Ray, MLflow, fit);
- :mod:`~search.study.tuner`: the Tuner (Optuna TPE, ASHA, callbacks, stopper) and its fit;
- :mod:`~search.study.trainable`: one trial inside a Tune worker;
- :mod:`~search.study.schedulers`: ASHA that survives a driver restart, FIFO;
- :mod:`~search.study.mlflow_logger` / :mod:`~search.study.progress`: the callbacks;
- :mod:`~search.study.stopping`: the time budget and Ctrl-C;
- :mod:`~search.study.resources`: what trials ask of the cluster;
- :mod:`~search.study.finish`: the parent run's final records, checkpoints trimmed;
- :mod:`~search.study.ray_compat`: every private Ray internal medtune touches.
"""

# Imported on first use: a trial worker imports search.study.trainable, and must not pay
# for the driver's modules (pandas, MLflow, SciPy through them) it never runs.
_EXPORTS = {
    **dict.fromkeys(["DEFAULT_STORAGE", "StudyOptions", "StudyOutcome", "apply_overrides", "clear_aborted_start",
                     "prepare", "resume_command", "run_study", "study_dir"], "search.study.run"),
    **dict.fromkeys(["trial_gpus", "trial_slots"], "search.study.resources"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search.study' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
