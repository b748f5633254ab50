"""MLflow layout of a study: one parent run, one nested child run per trial.

Ray's ``MLflowLoggerCallback`` makes flat runs (ray#19978), so medtune owns the layout:
the driver logs everything through an ``MlflowClient`` (one writer, which also keeps an
embedded SQLite store safe), children carry ``mlflow.parentRunId`` and the Tune trial id
as tags, and a resumed study finds its runs again by those tags, so every trial is in
MLflow exactly once.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TRIAL_TAG = "medtune.trial_id"
STUDY_TAG = "medtune.study"
STATE_TAG = "medtune.state"
DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(cli_uri: str | None, space_uri: str | None) -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > the space's > ``sqlite:///./mlflow.db``."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or space_uri
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Get or create the experiment; SQLite stores keep artifacts in ``./mlartifacts``."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a study's numbers."""
    import optuna
    import ray
    import sklearn
    import timm
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "mlflow": mlflow.__version__,
        "scikit-learn": sklearn.__version__,
    }


def git_commit() -> str:
    """The medtune checkout's commit, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_study_run(client: MlflowClient, exp_id: str, study: str, space_text: str, data_info: dict[str, Any],
                    settings: dict[str, Any]) -> str:
    """Create the parent run with the study's provenance as tags and params."""
    run = client.create_run(exp_id, run_name=study, tags={
        STUDY_TAG: study,
        "medtune.role": "study",
        "medtune.space": space_text[:7900],
        "medtune.git_commit": git_commit(),
        "medtune.versions": json.dumps(library_versions()),
        "medtune.data_fingerprint": data_info["fingerprint"],
        "medtune.data_sizes": json.dumps(data_info["sizes"]),
    })
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, param_text(v)) for k, v in settings.items()])
    client.log_text(run_id, space_text, "space.yaml")
    return run_id


def param_text(value: Any) -> str:
    """An MLflow param value: JSON for lists and dicts, ``str`` otherwise."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def finite_metrics(result: dict[str, Any], keys: Iterable[str]) -> dict[str, float]:
    """Numeric, finite entries of ``result`` among ``keys`` (MLflow rejects others)."""
    out = {}
    for key in keys:
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def children_filter(parent_run_id: str, **tags: str) -> str:
    """MLflow filter for the child runs of a study, optionally with tag values (``state="running"``)."""
    names = {"trial_id": TRIAL_TAG, "state": STATE_TAG}
    clauses = [f"tags.`mlflow.parentRunId` = '{parent_run_id}'"]
    clauses += [f"tags.`{names[key]}` = '{value}'" for key, value in tags.items()]
    return " and ".join(clauses)


def find_child_run(client: MlflowClient, exp_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run already logged for ``trial_id`` (after a resume), if any."""
    runs = client.search_runs(
        [exp_id],
        filter_string=children_filter(parent_run_id, trial_id=trial_id),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def logged_epochs(client: MlflowClient, run_id: str, key: str = "val_loss") -> int:
    """Highest epoch already logged for a run (0 when none)."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)


def preload_plotting() -> None:
    """Import matplotlib and scikit-learn's plots now (about 2 s), not at the first trial's end,
    where the import would stall Tune's event loop while trials wait."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401


def roc_and_confusion_png(labels, probs, class_names: list[str]) -> dict[str, bytes]:
    """ROC curve(s) and confusion matrix of one evaluation, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    images: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if probs.shape[1] == 2:
        RocCurveDisplay.from_predictions(labels, probs[:, 1], ax=ax, name=class_names[1])
    else:
        for k, name in enumerate(class_names):
            if (labels == k).any() and (labels != k).any():
                RocCurveDisplay.from_predictions(labels == k, probs[:, k], ax=ax, name=f"{name} vs rest")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    images["roc_curve.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(labels, probs.argmax(1), labels=np.arange(len(class_names)),
                                            display_labels=class_names, ax=ax, colorbar=False)
    images["confusion_matrix.png"] = _png(fig)
    return images


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def log_png(client: MlflowClient, run_id: str, name: str, content: bytes) -> None:
    """Log PNG bytes as an artifact (through a temporary file, MLflow's only way)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        client.log_artifact(run_id, str(path))


def now_ms() -> int:
    return int(time.time() * 1000)


__all__ = [
    "Metric", "Param", "RunTag", "MlflowClient", "TRIAL_TAG", "STUDY_TAG", "STATE_TAG",
    "resolve_tracking_uri", "param_text", "children_filter", "experiment_id", "start_study_run", "find_child_run", "logged_epochs",
    "finite_metrics", "roc_and_confusion_png", "log_png", "now_ms",
]
