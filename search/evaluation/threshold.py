"""The decision threshold of a binary model, chosen on held-out predictions.

A network's 0.5 is rarely the operating point a clinic wants: screening asks for a
sensitivity, confirmation for a specificity, and Youden's J (sensitivity + specificity
- 1) is the usual neutral choice. The rule is written ``youden``, ``sensitivity:0.95``,
``specificity:0.95`` or a number in (0, 1); it is applied to validation predictions
(out-of-fold ones under cross-validation), never to the test split, and the test split
then reports what that threshold gives. Multi-class models keep the argmax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

RULES = "youden, sensitivity:S, specificity:S (S in (0, 1)) or a probability in (0, 1)"


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed threshold rule: ``kind`` is youden, sensitivity, specificity or fixed."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else (f"{self.value:g}" if self.kind == "fixed"
                                                      else f"{self.kind}:{self.value:g}")


def parse_threshold(text: str | float) -> ThresholdRule:
    """``"youden"`` -> ThresholdRule("youden"); ``"sensitivity:0.95"``; ``0.3``.

    Raises:
        ValueError: the text is none of the rules (the message lists them).
    """
    raw = str(text).strip().lower()
    if raw == "youden":
        return ThresholdRule("youden")
    match = re.fullmatch(r"(sensitivity|specificity)\s*:\s*([0-9.eE+-]+)", raw)
    try:
        if match:
            value = float(match.group(2))
            if 0 < value < 1:
                return ThresholdRule(match.group(1), value)
        else:
            value = float(raw)
            if 0 < value < 1:
                return ThresholdRule("fixed", value)
    except ValueError:
        pass
    raise ValueError(f"threshold {text!r} does not parse: use {RULES}, e.g. `youden` or `sensitivity:0.95`")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on the positive-class probability and what it gives on the images it was chosen on."""

    rule: str
    threshold: float
    sensitivity: float
    specificity: float
    images: int


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``scores >= threshold`` for binary ``labels``."""
    positive = np.asarray(labels) == 1
    called = np.asarray(scores) >= threshold
    sens = float(called[positive].mean()) if positive.any() else float("nan")
    spec = float((~called[~positive]).mean()) if (~positive).any() else float("nan")
    return sens, spec


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> OperatingPoint:
    """The threshold ``rule`` picks on (``labels``, positive-class ``scores``).

    Candidates are the observed scores (a threshold between two of them changes
    nothing). ``sensitivity:S`` takes the highest threshold whose sensitivity is at
    least S (the best specificity that keeps it); ``specificity:S`` the lowest whose
    specificity is at least S; ``youden`` the largest J, ties to the higher threshold.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if rule.kind == "fixed":
        assert rule.value is not None
        sens, spec = rates(labels, scores, rule.value)
        return OperatingPoint(str(rule), rule.value, sens, spec, len(labels))
    positive = labels == 1
    if positive.all() or not positive.any():
        raise ValueError(f"choosing a `{rule}` threshold needs both classes among the {len(labels)} held-out images")
    # high to low, led by one just above every score (sensitivity 0, specificity 1) so a rule can always be met
    candidates = np.concatenate([[np.nextafter(scores.max(), np.inf)], np.unique(scores)[::-1]])
    # sensitivity/specificity at each candidate t (called positive when score >= t), vectorised
    order = np.sort(scores[positive])
    neg_order = np.sort(scores[~positive])
    sens = 1.0 - np.searchsorted(order, candidates, side="left") / len(order)
    spec = np.searchsorted(neg_order, candidates, side="left") / len(neg_order)
    if rule.kind == "youden":
        i = int(np.argmax(sens + spec - 1.0))  # first maximum = highest threshold
    elif rule.kind == "sensitivity":
        i = int(np.flatnonzero(sens >= rule.value - 1e-12)[0])
    else:
        ok = np.flatnonzero(spec >= rule.value - 1e-12)
        i = int(ok[-1])
    return OperatingPoint(str(rule), float(candidates[i]), float(sens[i]), float(spec[i]), len(labels))
