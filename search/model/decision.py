"""How an exported model turns probabilities into a decision, fitted on held-out predictions.

The chosen trial's validation predictions at its selected epoch (written beside every
checkpoint as ``val_predictions.npz``) fit a temperature (``export.calibrate``) and
then the decision threshold of a binary model (``export.threshold``) on the
temperature-scaled probabilities, i.e. on the very numbers the exported graphs output.
The test split only reports what they give: its AUC with a 95% interval, sensitivity
and specificity at the threshold, and ECE/NLL before and after scaling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.evaluation import AucInterval, auc_interval, choose_threshold, expected_calibration_error, fit_temperature, nll
from search.evaluation.calibration import reliability, soft_vote
from search.evaluation.threshold import parse_threshold, rates
from trainables.trial import PREDICTIONS_FILE


class DecisionError(ValueError):
    """Held-out predictions that cannot fit a decision (missing, or unusable)."""


@dataclass(frozen=True)
class Decision:
    """What ``config.json`` stores under ``decision``.

    Attributes:
        temperature: logits are divided by it before the softmax (1.0: not calibrated).
        threshold: binary models: ``pred`` is the positive class when its probability is
            at least this; None for multi-class (argmax).
        rule: the threshold rule that chose it (``youden``...), None for multi-class.
        positive_class: the class the threshold is on (class 1), None for multi-class.
        fitted_on: where the held-out predictions came from, in words.
        held_out: on those predictions: images, NLL before/after scaling, and the
            sensitivity/specificity at the threshold.
    """

    temperature: float
    threshold: float | None
    rule: str | None
    positive_class: str | None
    fitted_on: str
    held_out: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_predictions(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, probabilities, image indices or None) a trial wrote beside its checkpoint.

    Raises:
        DecisionError: the file is missing or damaged (the fix: a fixed rule, or re-run the trial).
    """
    import zipfile

    path = Path(folder) / PREDICTIONS_FILE
    try:
        with np.load(path) as saved:
            labels, probs = saved["labels"].astype(np.int64), saved["probs"].astype(np.float64)
            indices = saved["indices"].astype(np.int64) if "indices" in saved.files else None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DecisionError(f"the checkpoint {folder} has no readable {PREDICTIONS_FILE} ({type(err).__name__}: "
                            f"{err}), so no threshold or temperature can be fitted; export with "
                            "--threshold 0.5 --no-calibrate, or resume the study so the trial writes it") from None
    if len(labels) != len(probs) or probs.ndim != 2 or not np.isfinite(probs).all():
        raise DecisionError(f"{path} holds {len(labels)} labels and probabilities of shape {probs.shape} "
                            "(or non-finite ones); it cannot fit a decision; re-run the trial")
    return labels, probs, indices


def fit_decision(labels: np.ndarray, member_probs: list[np.ndarray], class_names: list[str], threshold: str,
                 calibrate: bool, fitted_on: str) -> Decision:
    """Fit the temperature, then the threshold on the scaled, soft-voted probabilities (binary only).

    ``member_probs`` holds each member's held-out probabilities on the same ``labels`` (one
    array for a single model or for out-of-fold predictions). One temperature is fitted on
    all of them, as every member's logits are divided by it in the exported graph.
    """
    pooled = np.concatenate(member_probs)
    calibration = fit_temperature(np.tile(labels, len(member_probs)), pooled) if calibrate else None
    temperature = calibration.temperature if calibration else 1.0
    probs, scaled = soft_vote(member_probs), soft_vote(member_probs, temperature)
    held_out = {"images": float(len(labels)), "nll_before": nll(labels, probs), "nll_after": nll(labels, scaled)}
    if len(class_names) != 2:
        return Decision(temperature, None, None, None, fitted_on, held_out)
    try:
        point = choose_threshold(labels, scaled[:, 1], parse_threshold(threshold))
    except ValueError as err:
        raise DecisionError(f"{err}; the held-out predictions ({fitted_on}) cannot choose it") from None
    held_out.update(sensitivity=point.sensitivity, specificity=point.specificity)
    return Decision(temperature, point.threshold, point.rule, class_names[1], fitted_on, held_out)


def predicted_classes(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """The decision for each row: positive-class probability >= threshold (binary), else the argmax."""
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return (probs[:, 1] >= threshold).astype(np.int64)


def test_report(decision: Decision, labels: np.ndarray, raw_probs: np.ndarray,
                scaled: np.ndarray) -> dict[str, Any]:
    """What the decision gives on the test split (for metrics.json, the card and MLflow).

    ``raw_probs``: the (soft-voted) probabilities without temperature scaling; ``scaled``:
    what the exported graphs output, with it.
    """
    try:
        interval = auc_interval(labels, scaled)
    except ValueError:  # fewer than 2 images of a class: no interval (the AUC itself may still exist)
        from trainables.metrics import classification_metrics

        interval = AucInterval(classification_metrics(labels, scaled, prefix="")["auc"], float("nan"), float("nan"),
                               "none: too few test images of a class")
    report: dict[str, Any] = {
        "auc": interval.auc, "auc_low": interval.low, "auc_high": interval.high, "auc_ci_method": interval.method,
        "ece_before": expected_calibration_error(labels, raw_probs), "ece_after": expected_calibration_error(labels, scaled),
        "nll_before": nll(labels, raw_probs), "nll_after": nll(labels, scaled),
        "reliability_before": reliability(labels, raw_probs),
        "reliability": reliability(labels, scaled),
    }
    if decision.threshold is not None:
        sens, spec = rates(labels, scaled[:, 1], decision.threshold)
        report.update(sensitivity=sens, specificity=spec, balanced_acc=(sens + spec) / 2)
    return report


__all__ = ["Decision", "DecisionError", "fit_decision", "held_out_predictions",
           "predicted_classes", "test_report"]
