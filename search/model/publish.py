"""The MLflow side of an export: the count of test-split uses and the test results on the
study's parent run, and the registry.

Kept apart from :mod:`search.model.export` (which builds, tests and writes the files) because
everything here changes shared state: the study's MLflow records and its model registry.
Only an ``MlflowClient`` on the study's own tracking URI is used, never the fluent API,
which would set the process-wide tracking URI and ``MLFLOW_TRACKING_URI`` (inherited by
every subprocess started afterwards).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from search.model.files import (
    CARD_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    ONNX_FILE,
)
from search.records.studies import Study
from search.records.tags import (
    EXPORT_REFIT_TAG,
    EXPORT_TRAIN_IMAGES_TAG,
    EXPORTED_TAG,
    STUDY_TAG,
    TEST_CONFUSION_TAG,
    TEST_USES_TAG,
    TRIAL_TAG,
)


def count_test_use(client: Any, study: Study) -> int:
    """Count one more use of the study's test split on its parent run; return the new count.

    Every look at test scores spends some of the split's value as an unbiased estimate,
    so the card of each export states how many times it has been used. A study exported
    before this count existed (it has ``medtune.export.trial_id`` but no count) is
    counted as used once already. The count is a read-then-write of one tag: two exports
    of one study finishing at the same instant may both record the same number.
    """
    tags = client.get_run(study.parent_run_id).data.tags
    try:
        before = int(tags[TEST_USES_TAG])
    except (KeyError, ValueError):
        before = 1 if EXPORTED_TAG in tags else 0
    uses = max(before, 0) + 1
    client.set_tag(study.parent_run_id, TEST_USES_TAG, str(uses))
    return uses


def log_test_results(client: Any, study: Study, directory: Path, summary: dict[str, Any],
                     plots: dict[str, bytes]) -> None:
    """``test_*`` metrics, the test ROC curve and confusion matrix, and the card, config, metrics and
    manifest on the parent run."""
    from search.records.tracking import Metric, RunTag, log_png, now_ms

    stamp = now_ms()
    metrics = [Metric(k, float(v), stamp, 0) for k, v in summary["test"].items() if np.isfinite(v)]
    decided = summary.get("test_decision") or {}
    # the AUC's 95% interval, calibration, and the operating point's rates (``test_*_at_threshold``)
    names = {"auc_low": "test_auc_low", "auc_high": "test_auc_high", "ece_after": "test_ece", "nll_after": "test_nll",
             "sensitivity": "test_sensitivity_at_threshold", "specificity": "test_specificity_at_threshold"}
    metrics += [Metric(name, float(decided[key]), stamp, 0) for key, name in names.items()
                if isinstance(decided.get(key), float) and np.isfinite(decided[key])]
    tags = [RunTag(EXPORTED_TAG, summary["best"]["trial_id"]),
            RunTag(EXPORT_REFIT_TAG, str(summary["refit"]).lower()),
            RunTag(EXPORT_TRAIN_IMAGES_TAG, str(summary["train_images"])),
            RunTag(TEST_CONFUSION_TAG, json.dumps(summary["test_confusion_matrix"]))]
    client.log_batch(study.parent_run_id, metrics=metrics, tags=tags)
    for name, content in plots.items():
        log_png(client, study.parent_run_id, f"test_{name}", content)
    for name in (CARD_FILE, CONFIG_FILE, METRICS_FILE, MANIFEST_FILE):  # the manifest records the weights' hash
        client.log_artifact(study.parent_run_id, str(directory / name), artifact_path="export")


def register(study: Study, directory: Path, name: str, config_json: dict[str, Any]) -> str:
    """Log the ONNX model as an MLflow model under the study's parent run and register it as ``name``.

    ONNX makes the registered model self-contained (no medtune code needed to serve it);
    the signature states the preprocessed float input and the probabilities output.

    Returns:
        The new model version.
    """
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.exceptions import MlflowException
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    model, pre = config_json["model"], config_json["preprocess"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, pre["in_chans"], pre["input_size"], pre["input_size"]),
                                  "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model["num_classes"]), "probabilities")]),
    )
    client = study.client()
    path = f"registered_model/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.onnx.save_model(
            onnx.load(str(directory / ONNX_FILE)), str(Path(tmp) / "model"), signature=signature,
            save_as_external_data=False, extra_files=[str(directory / CONFIG_FILE), str(directory / CARD_FILE)],
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        )
        client.log_artifacts(study.parent_run_id, str(Path(tmp) / "model"), artifact_path=path)
    try:
        client.create_registered_model(name, description=f"medtune study {study.name}: {model['backbone']}, "
                                                         f"classes {model['class_names']}")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=f"runs:/{study.parent_run_id}/{path}",
                                          run_id=study.parent_run_id,
                                          tags={STUDY_TAG: study.name,
                                                TRIAL_TAG: config_json["study"]["trial_id"]})
    return str(version.version)


__all__ = ["count_test_use", "log_test_results", "register"]
