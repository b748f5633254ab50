"""Temperature scaling (Guo et al. 2017) and the numbers that say whether it helped.

One scalar T divides the logits; fitted by minimising the negative log-likelihood of
held-out predictions (validation, or out-of-fold under cross-validation). T does not
change the argmax or any AUC, only how far the probabilities can be taken at face value.
Log-probabilities are logits up to a per-image constant, so T is fitted on them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from trainables.metrics import cross_entropy

ECE_BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: beyond that the held-out set is the problem


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: the probabilities a temperature-scaled network gives."""
    z = _log_probs(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


nll = cross_entropy  # the mean negative log-likelihood, as trials report it (``val_loss``)


def soft_vote(member_probs: list[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """The mean of the members' temperature-scaled probabilities: what an exported ensemble outputs."""
    return np.mean([scale(p, temperature) for p in member_probs], axis=0)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins (Guo et al.'s definition)."""
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each non-empty confidence bin: a reliability diagram's points."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [(float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the held-out NLL before and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    images: int


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> Calibration:
    """The T that minimises the NLL of ``probs`` on ``labels`` (bounded search over log T).

    T = 1 is kept when the fit does not lower the NLL, so scaling never makes the
    held-out predictions worse.
    """
    labels = np.asarray(labels, dtype=np.int64)
    before = nll(labels, probs)
    result = minimize_scalar(lambda log_t: nll(labels, scale(probs, float(np.exp(log_t)))),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(result.x))
    after = nll(labels, scale(probs, temperature))
    if not after < before:
        temperature, after = 1.0, before
    return Calibration(temperature, before, after, len(labels))
