"""ASHA's noise margin: its size from the validation split, and the rung rule that uses it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.records.storage import StudyFiles
from search.space.settings import SchedulerSettings
from search.study.noise import resolve_grace_period, resolve_noise_margin
from search.study.schedulers import PersistentASHA
from trainables.config import ConfigError, DataConfig
from trainables.data import load_dataset


@pytest.fixture(scope="module")
def breast(data_root: Path):
    return load_dataset(DataConfig(source=str(data_root / "medmnist" / "breastmnist.npz")))


def test_auto_margin_is_one_standard_error_of_the_metric_on_the_images_it_is_judged_on(breast):
    margin, why = resolve_noise_margin("auto", "val_auc", breast, 1)
    assert len(breast.splits["val"]) == 78 and margin == pytest.approx(0.047, abs=0.001)
    assert "78 validation images" in why
    pooled, why_cv = resolve_noise_margin("auto", "val_auc", breast, 5)  # the fold mean: every train + val image
    assert pooled < margin / 2 and "624 train + val images" in why_cv
    assert resolve_noise_margin("auto", "val_loss", breast, 1)[0] == 0.0  # a loss has no such scale
    rate, _ = resolve_noise_margin("auto", "val_sensitivity", breast, 1)  # measured on the positives only
    assert rate > resolve_noise_margin("auto", "val_acc", breast, 1)[0]
    assert resolve_noise_margin(0.02, "val_auc", breast, 1)[0] == 0.02
    assert resolve_noise_margin(0, "val_auc", breast, 1)[0] == 0.0


def test_auto_grace_period_waits_a_second_epoch_where_trials_are_judged_on_few_images(breast, data_root):
    grace, why = resolve_grace_period("auto", breast, 1, 6)
    assert grace == 2 and "78 validation images (< 1000)" in why
    assert resolve_grace_period("auto", breast, 1, 1)[0] == 1  # never past the last epoch
    assert resolve_grace_period(3, breast, 1, 6)[0] == 3
    pneumonia = load_dataset(DataConfig(source=str(data_root / "medmnist" / "pneumoniamnist.npz")))
    assert resolve_grace_period("auto", pneumonia, 1, 6)[0] == 2  # 524 validation images
    grace, why = resolve_grace_period("auto", pneumonia, 5, 6)  # fold means over 5232 train + val images
    assert grace == 1 and "5232 train + val images (>= 1000)" in why
    assert SchedulerSettings().grace_period == "auto" and SchedulerSettings().noise_margin == 0.0


def test_a_negative_or_unknown_margin_is_refused_with_the_choices():
    for bad in (-0.1, "big", float("nan")):
        with pytest.raises(ConfigError, match="noise_margin must be auto or a number >= 0"):
            SchedulerSettings(noise_margin=bad)
    with pytest.raises(ConfigError, match="noise_margin expects float | str, but got True"):
        SchedulerSettings(noise_margin=True)
    assert SchedulerSettings(noise_margin="auto").noise_margin == "auto"


def _asha(tmp_path: Path, margin: float) -> PersistentASHA:
    scheduler = PersistentASHA(StudyFiles(str(tmp_path), "study"), "asha_state.json", noise_margin=margin,
                               time_attr="training_iteration", metric="val_auc", mode="max", max_t=9,
                               grace_period=1, reduction_factor=3)
    (tmp_path / "study").mkdir(parents=True, exist_ok=True)
    return scheduler


# Tune's controller, as far as a scheduler touches it: the flag that asks for a snapshot
CONTROLLER = SimpleNamespace(_checkpoint_manager=SimpleNamespace(_should_force_sync_up=False))


def _judge(scheduler: PersistentASHA, trial_id: str, auc: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    scheduler.on_trial_add(CONTROLLER, trial)
    return scheduler.on_trial_result(CONTROLLER, trial, {"training_iteration": 1, "val_auc": auc})


def test_a_trial_within_the_margin_of_the_cutoff_goes_on_and_is_recorded_as_it_is(tmp_path):
    plain, lenient = _asha(tmp_path / "plain", 0.0), _asha(tmp_path / "lenient", 0.02)
    for scheduler in (plain, lenient):
        assert _judge(scheduler, "a", 0.80) == "CONTINUE" and _judge(scheduler, "b", 0.90) == "CONTINUE"
    # the rung's cutoff is the 2/3 quantile of (0.80, 0.90) = 0.867: 0.86 is below it, but within 0.02
    assert _judge(plain, "c", 0.86) == "STOP"
    assert _judge(lenient, "c", 0.86) == "CONTINUE"
    assert _judge(lenient, "d", 0.70) == "STOP"  # far below: stopped either way
    saved = json.loads((tmp_path / "lenient" / "study" / "asha_state.json").read_text())
    rung = next(r for r in saved["brackets"][0] if r["milestone"] == 1)
    assert rung["recorded"] == {"a": 0.80, "b": 0.90, "c": 0.86, "d": 0.70}  # real values, not the margin's
    assert saved["num_stopped"] == 1
