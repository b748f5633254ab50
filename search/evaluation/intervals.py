"""AUC with a 95% confidence interval, and a paired test of two AUCs on the same images.

Binary: DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988) computed with the fast
midrank algorithm of Sun & Xu (2014), exact for tied scores. Multi-class macro
one-vs-rest AUC: a stratified percentile bootstrap (DeLong has no closed form for the
macro mean), seeded, so the same predictions give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from trainables.metrics import classification_metrics

Z95 = float(stats.norm.ppf(0.975))
BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class AucInterval:
    """An AUC, its 95% interval and how the interval was computed (``delong`` or ``bootstrap``)."""

    auc: float
    low: float
    high: float
    method: str

    def __str__(self) -> str:
        return f"{self.auc:.4f} (95% CI {self.low:.4f}-{self.high:.4f}, {self.method})"


def _midrank(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank."""
    return stats.rankdata(values, method="average")


def _structural_components(positive_scores: np.ndarray, negative_scores: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's placement values of ``(R, m)`` positive and ``(R, n)`` negative scores.

    Row r is one classifier's scores; returns ``(auc (R,), v10 (R, m), v01 (R, n))``.
    """
    m, n = positive_scores.shape[1], negative_scores.shape[1]
    tx = np.apply_along_axis(_midrank, 1, positive_scores)
    ty = np.apply_along_axis(_midrank, 1, negative_scores)
    tz = np.apply_along_axis(_midrank, 1, np.concatenate([positive_scores, negative_scores], axis=1))
    auc = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n          # share of negatives below each positive
    v01 = 1.0 - (tz[:, m:] - ty) / m    # share of positives above each negative
    return auc, v10, v01


def _delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(R,)`` and their DeLong covariance ``(R, R)`` for scores ``(R, N)`` of binary labels."""
    positive = labels.astype(bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"a DeLong interval needs at least 2 positive and 2 negative images, got {m} and {n}")
    auc, v10, v01 = _structural_components(scores[:, positive], scores[:, ~positive])
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """The standard error of an AUC on ``positives`` + ``negatives`` images before any are
    scored (Hanley & McNeil 1982): how far apart two equally good models may land on a
    split of that size. It assumes exponential score distributions; for binormal scores
    it errs on the wide side (by about a quarter at AUC 0.9 on 20 + 58 images).

    Raises:
        ValueError: fewer than one positive or one negative image, or an AUC outside [0, 1].
    """
    if positives < 1 or negatives < 1 or not 0.0 <= auc <= 1.0:
        raise ValueError(f"an AUC's standard error needs an AUC in [0, 1] and images of both classes, got AUC "
                         f"{auc}, {positives} positive and {negatives} negative images")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) \
        / (positives * negatives)
    return float(np.sqrt(max(variance, 0.0)))


def auc_interval(labels: np.ndarray, probs: np.ndarray, seed: int = 0) -> AucInterval:
    """AUC of ``probs`` ``(N, K)`` against ``labels`` with its 95% interval.

    Binary (K = 2): DeLong, the AUC of ``probs[:, 1]``, the interval clipped to [0, 1].
    K > 2: macro one-vs-rest AUC with a stratified bootstrap percentile interval.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        auc, cov = _delong_covariance(labels, probs[None, :, 1])
        half = Z95 * float(np.sqrt(max(cov[0, 0], 0.0)))
        return AucInterval(float(auc[0]), max(0.0, float(auc[0]) - half), min(1.0, float(auc[0]) + half), "delong")
    return _bootstrap_interval(labels, probs, seed)


def _bootstrap_interval(labels: np.ndarray, probs: np.ndarray, seed: int) -> AucInterval:
    """Percentile interval of the macro AUC over resamples drawn within each class."""
    point = classification_metrics(labels, probs, prefix="")["auc"]
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    draws = []
    for _ in range(BOOTSTRAP_ROUNDS):
        idx = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        draws.append(classification_metrics(labels[idx], probs[idx], prefix="")["auc"])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return AucInterval(float(point), float(low), float(high), "bootstrap")


@dataclass(frozen=True)
class PairedTest:
    """Two AUCs on the same images, their difference with its 95% interval, and the p-value."""

    auc_a: float
    auc_b: float
    difference: float
    low: float
    high: float
    p_value: float
    method: str

    @property
    def significant(self) -> bool:
        """The 95% interval of the difference excludes 0."""
        return self.p_value < 0.05


def delong_paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, seed: int = 0) -> PairedTest:
    """Is AUC(a) different from AUC(b) on the same images? Paired DeLong (binary) or bootstrap.

    ``scores_*`` are probabilities ``(N, K)`` (or positive-class scores ``(N,)`` for binary).
    """
    labels = np.asarray(labels, dtype=np.int64)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 2:
        a, b = a[:, 1], b[:, 1]
    if a.ndim == 1:
        auc, cov = _delong_covariance(labels, np.stack([a, b]))
        diff = float(auc[0] - auc[1])
        var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        if var <= 1e-15:
            return PairedTest(float(auc[0]), float(auc[1]), diff, diff, diff, 1.0 if diff == 0 else 0.0, "delong")
        sd = np.sqrt(var)
        p = float(2 * stats.norm.sf(abs(diff) / sd))
        return PairedTest(float(auc[0]), float(auc[1]), diff, diff - Z95 * sd, diff + Z95 * sd, p, "delong")
    return _bootstrap_paired(labels, a, b, seed)


def _bootstrap_paired(labels: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int) -> PairedTest:
    def auc(p: np.ndarray, idx: np.ndarray) -> float:
        return classification_metrics(labels[idx], p[idx], prefix="")["auc"]

    everything = np.arange(len(labels))
    auc_a, auc_b = auc(a, everything), auc(b, everything)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    diffs = []
    for _ in range(BOOTSTRAP_ROUNDS):
        idx = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        diffs.append(auc(a, idx) - auc(b, idx))
    diffs_arr = np.asarray(diffs)
    low, high = np.nanpercentile(diffs_arr, [2.5, 97.5])
    # two-sided bootstrap p-value: how often the resampled difference crosses 0
    p = float(min(1.0, 2 * min(np.mean(diffs_arr <= 0), np.mean(diffs_arr >= 0))))
    return PairedTest(auc_a, auc_b, auc_a - auc_b, float(low), float(high), p, "bootstrap")
