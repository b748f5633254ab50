"""Confidence intervals, operating points and temperature scaling on predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from search.evaluation import (auc_interval, choose_threshold, delong_paired, expected_calibration_error,
                               fit_temperature, nll, parse_threshold)
from search.evaluation.calibration import scale
from search.evaluation.intervals import hanley_mcneil_se


def _binary(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(size=n) + separation * (labels * 2 - 1)
    p1 = 1 / (1 + np.exp(-logits))
    return labels, np.stack([1 - p1, p1], axis=1)


def test_delong_interval_matches_sklearn_auc_and_covers_the_truth_at_its_nominal_rate() -> None:
    labels, probs = _binary(300, 1.0, 0)
    interval = auc_interval(labels, probs)
    assert interval.method == "delong"
    assert interval.auc == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12)
    assert interval.low < interval.auc < interval.high
    # 2 positives (0.4, 0.8) vs 2 negatives (0.1, 0.4): 3 pairs ordered, one tie counted half -> 3.5 / 4
    tiny = auc_interval(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.6, .4], [.6, .4], [.2, .8]]))
    assert tiny.auc == pytest.approx(0.875)
    # coverage: over 200 fresh samples of one population, the 95% interval holds the population AUC ~95% of the time
    truth = roc_auc_score(*(lambda l, p: (l, p[:, 1]))(*_binary(200_000, 1.0, 99)))
    intervals = [auc_interval(*_binary(150, 1.0, seed)) for seed in range(1, 201)]
    covered = sum(interval.low <= truth <= interval.high for interval in intervals)
    assert 0.90 <= covered / 200 <= 0.99


def test_hanley_mcneil_standard_error_matches_the_spread_of_aucs_on_small_splits() -> None:
    # 20 positives and 58 negatives (BreastMNIST's validation split): the AUCs of 2000 fresh
    # splits of one binormal population spread about as the formula says; it assumes
    # exponential score distributions, so for binormal scores it errs on the wide side
    rng = np.random.default_rng(3)
    aucs = [roc_auc_score(np.r_[np.ones(20), np.zeros(58)], np.r_[rng.normal(1.8, 1, 20), rng.normal(0, 1, 58)])
            for _ in range(2000)]
    se = hanley_mcneil_se(float(np.mean(aucs)), 20, 58)
    assert float(np.std(aucs)) <= se <= 1.35 * float(np.std(aucs))
    assert hanley_mcneil_se(0.9, 200, 580) < se / 2  # ten times the images: about a third of the spread
    with pytest.raises(ValueError, match="images of both classes"):
        hanley_mcneil_se(0.9, 0, 58)


def test_multiclass_interval_is_a_seeded_bootstrap_around_the_macro_auc() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 240)
    logits = rng.normal(size=(240, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    first, again = auc_interval(labels, probs, seed=1), auc_interval(labels, probs, seed=1)
    assert first == again and first.method == "bootstrap"
    assert first.auc == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert first.low < first.auc < first.high


def test_paired_delong_tells_a_real_difference_from_none() -> None:
    labels, strong = _binary(400, 1.5, 5)
    rng = np.random.default_rng(6)
    weak = strong.copy()
    weak[:, 1] = np.clip(weak[:, 1] + rng.normal(scale=0.35, size=len(labels)), 0, 1)
    real = delong_paired(labels, strong, weak)
    assert real.difference > 0 and real.significant and real.low > 0
    same = delong_paired(labels, strong, strong)
    assert same.difference == 0 and not same.significant


def test_threshold_rules_on_a_known_roc() -> None:
    # scores sorted: negatives 0.1 0.2 0.3 0.6, positives 0.4 0.7 0.8 0.9
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = choose_threshold(labels, scores, parse_threshold("youden"))
    # at t=0.7: sens 3/4, spec 4/4 -> J 0.75; at t=0.4: sens 1, spec 3/4 -> J 0.75; tie -> the higher threshold
    assert youden.threshold == 0.7 and youden.sensitivity == 0.75 and youden.specificity == 1.0
    sens = choose_threshold(labels, scores, parse_threshold("sensitivity:0.95"))
    assert sens.threshold == 0.4 and sens.sensitivity == 1.0 and sens.specificity == 0.75
    spec = choose_threshold(labels, scores, parse_threshold("specificity:0.95"))
    assert spec.threshold == 0.7 and spec.specificity == 1.0
    fixed = choose_threshold(labels, scores, parse_threshold("0.5"))
    assert fixed.threshold == 0.5 and fixed.sensitivity == 0.75 and fixed.specificity == 0.75
    # a specificity only a threshold above every score can give
    tied = choose_threshold(np.array([0, 1, 0]), np.array([0.9, 0.9, 0.1]), parse_threshold("specificity:0.99"))
    assert tied.threshold > 0.9 and tied.specificity == 1.0


@pytest.mark.parametrize("text", ["youdn", "sensitivity:1.5", "specificity:", "0", "1", "high"])
def test_a_threshold_that_does_not_parse_names_the_rules(text: str) -> None:
    with pytest.raises(ValueError, match="does not parse: use youden, sensitivity:S"):
        parse_threshold(text)


def test_temperature_scaling_lowers_nll_on_held_out_data_and_keeps_the_ranking() -> None:
    # x ~ N(+-1, 1) has true log-odds 2x; a model giving 6x is overconfident by T = 3
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 4000)
    logits = (rng.normal(size=4000) + (labels * 2 - 1)) * 6.0
    p1 = 1 / (1 + np.exp(-logits))
    probs = np.stack([1 - p1, p1], 1)
    fit_part, held_out = slice(0, 2000), slice(2000, None)
    calibration = fit_temperature(labels[fit_part], probs[fit_part])
    assert 2.5 < calibration.temperature < 3.5
    scaled = scale(probs[held_out], calibration.temperature)
    assert nll(labels[held_out], scaled) < nll(labels[held_out], probs[held_out]) - 0.05
    assert expected_calibration_error(labels[held_out], scaled) < expected_calibration_error(labels[held_out],
                                                                                             probs[held_out])
    assert roc_auc_score(labels[held_out], scaled[:, 1]) == pytest.approx(roc_auc_score(labels[held_out],
                                                                                        probs[held_out, 1]))
    # already calibrated: T stays near 1 and the NLL never gets worse
    honest = fit_temperature(labels[fit_part], scale(probs[fit_part], 3.0))  # logits 2x: the true ones
    assert 0.85 < honest.temperature < 1.15 and honest.nll_after <= honest.nll_before
