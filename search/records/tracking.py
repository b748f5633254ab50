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

from search.records.tags import (
    CURVE_PREFIX,
    DATA_FINGERPRINT_TAG,
    DATA_GROUP_OVERLAP_TAG,
    DATA_SIZES_TAG,
    DATA_SKIPPED_TAG,
    GIT_COMMIT_TAG,
    ROLE_TAG,
    SPACE_TAG,
    SPACE_TAG_LIMIT,
    STATE_TAG,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    VERSIONS_TAG,
)

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
        ROLE_TAG: "study",
        STATUS_TAG: "running",
        SPACE_TAG: space_text[:SPACE_TAG_LIMIT],
        GIT_COMMIT_TAG: git_commit(),
        VERSIONS_TAG: json.dumps(library_versions()),
        DATA_FINGERPRINT_TAG: data_info["fingerprint"],
        DATA_SIZES_TAG: json.dumps(data_info["sizes"]),
        DATA_SKIPPED_TAG: json.dumps(data_info.get("skipped") or {}),
        DATA_GROUP_OVERLAP_TAG: str(int(data_info.get("group_overlap") or 0)),
    })
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, param_text(v)) for k, v in settings.items()])
    client.log_text(run_id, space_text, "space.yaml")
    return run_id


def param_text(value: Any) -> str:
    """An MLflow param value: JSON for lists and dicts, ``str`` otherwise."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def display_number(value: float, digits: int = 4) -> str:
    """A float to ``digits`` significant digits, as short as Python writes it (5.9e-03 -> 0.0059)."""
    return f"{value:.{digits}g}"


def display_params(config: dict[str, Any], log_scale: dict[str, Any]) -> dict[str, str]:
    """A trial's settings as MLflow params for display: floats to 4 significant digits,
    plus ``log10_<name>`` for each log-scale searched setting (``log_scale``: name -> value),
    which MLflow's parallel coordinates then spread evenly."""
    params = {k: display_number(v) if isinstance(v, float) else param_text(v) for k, v in config.items()}
    for name, value in log_scale.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            params[f"log10_{name}"] = display_number(math.log10(value), 3)
    return params


def run_label(index: str, sampled: dict[str, Any], fixed: dict[str, Any], width: int = 60) -> str:
    """A trial's run name that reads in a list: ``t07 cnn3 lr=0.0059 dropout=0.21``.

    The trial number, the backbone (searched or fixed), then the other searched values
    in the order the search samples them, cut to ``width`` characters.
    """
    parts = [f"t{index:0>2}" if index.isdigit() else f"trial-{index}"]
    backbone = sampled.get("backbone", fixed.get("backbone"))
    if backbone is not None:
        parts.append(str(backbone))
    for key, value in sampled.items():
        if key == "backbone":
            continue
        shown = display_number(value, 2) if isinstance(value, float) else param_text(value).replace(" ", "")
        parts.append(f"{key}={shown}")
    label = " ".join(parts)
    return label if len(label) <= width else label[: width - 1] + "…"


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
    history = client.get_metric_history(run_id, CURVE_PREFIX + key)
    return max((m.step for m in history), default=0)


def preload_plotting() -> None:
    """Import matplotlib and scikit-learn's plots now (about 2 s), not at the first trial's end,
    where the import would stall Tune's event loop while trials wait."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.metrics  # noqa: F401


def roc_and_confusion_png(labels, probs, class_names: list[str], title: str = "",
                          operating_point: tuple[float, float, float] | None = None) -> dict[str, bytes]:
    """ROC curve(s) and confusion matrix of one evaluation, as PNG bytes.

    ``title`` names what was evaluated (``"validation, epoch 3"``). Binary tasks get one
    curve for the positive class (class 1); multi-class tasks one curve per class against
    the rest. AUCs are printed to three decimals, class names label the axes.
    ``operating_point`` (threshold, sensitivity, specificity) is marked on a binary ROC,
    and the confusion matrix then shows that threshold's decisions instead of the argmax.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay, roc_auc_score, roc_curve

    images: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    curves = [(1, f"{class_names[1]} (positive)")] if probs.shape[1] == 2 else \
        [(k, f"{name} vs rest") for k, name in enumerate(class_names)]
    for k, name in curves:
        positive = labels == k
        if positive.any() and (~positive).any():
            fpr, tpr, _ = roc_curve(positive, probs[:, k])
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name}: AUC {roc_auc_score(positive, probs[:, k]):.3f}")
    if operating_point is not None and probs.shape[1] == 2:
        threshold, sens, spec = operating_point
        ax.plot([1 - spec], [sens], "o", color="crimson", label=f"threshold {threshold:.3f}: sens {sens:.3f}, "
                                                                 f"spec {spec:.3f}")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=f"ROC, {title}" if title else "ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    images["roc_curve.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    decided = probs.argmax(1)
    if operating_point is not None and probs.shape[1] == 2:
        decided = (probs[:, 1] >= operating_point[0]).astype(int)
    ConfusionMatrixDisplay.from_predictions(labels, decided, labels=np.arange(len(class_names)),
                                            display_labels=class_names, ax=ax, colorbar=False)
    how = "argmax" if operating_point is None or probs.shape[1] != 2 else \
        f"threshold {operating_point[0]:.3f}"
    ax.set(xlabel=f"predicted class ({how})", ylabel="true class",
           title=f"Confusion matrix, {title}" if title else "Confusion matrix")
    images["confusion_matrix.png"] = _png(fig)
    return images


def reliability_png(points_before: list[tuple[float, float, int]], points_after: list[tuple[float, float, int]],
                    title: str = "") -> bytes:
    """Reliability diagram: accuracy against top-class confidence per bin, before and after scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    for points, label, style in ((points_before, "before temperature scaling", "s--"),
                                 (points_after, "after", "o-")):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, markersize=4, label=label)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfect calibration")
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Reliability, {title}" if title else "Reliability")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


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
