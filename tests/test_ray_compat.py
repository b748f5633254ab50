"""Contracts with Ray Tune internals (search/study/ray_compat.py), checked on the installed Ray.

Each test pins one thing medtune reaches into Tune for; a Ray upgrade that changes it
fails here, by name, instead of silently weakening resume.
"""

from __future__ import annotations

import inspect
import os

import pytest
import ray
from ray.tune.schedulers import AsyncHyperBandScheduler

from search.study import ray_compat
from search.study.schedulers import PersistentASHA


def test_the_installed_ray_is_the_tested_one():
    assert ray.__version__ in ray_compat.TESTED_RAY
    ray_compat.check_ray_version()


def test_an_untested_ray_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.delenv("MEDTUNE_ALLOW_UNTESTED_RAY", raising=False)
    with pytest.raises(ray_compat.UntestedRayError, match=r"Ray 2\.99\.0 is installed.*MEDTUNE_ALLOW_UNTESTED_RAY=1"):
        ray_compat.check_ray_version("2.99.0")
    monkeypatch.setenv("MEDTUNE_ALLOW_UNTESTED_RAY", "1")
    ray_compat.check_ray_version("2.99.0")


def test_tuner_pickle_name_is_tunes():
    from ray.tune.impl import tuner_internal

    assert tuner_internal._TUNER_PKL == ray_compat.TUNER_PICKLE


def test_asha_rungs_stopped_count_and_bracket_assignment_are_where_medtune_reads_them():
    scheduler = AsyncHyperBandScheduler(time_attr="training_iteration", metric="val_auc", mode="max", max_t=9,
                                        grace_period=1, reduction_factor=3)
    rungs = ray_compat.asha_rungs(scheduler)
    assert rungs and all(isinstance(m, (int, float)) and isinstance(r, dict) for bracket in rungs for m, r in bracket)
    assert [m for m, _ in rungs[0]] == [9, 3, 1]  # Ray keeps rungs top milestone first
    assert ray_compat.asha_stopped(scheduler) == 0
    ray_compat.set_asha_stopped(scheduler, 2)
    assert scheduler._num_stopped == 2
    assert not ray_compat.asha_knows(scheduler, "t1")
    ray_compat.asha_forget(scheduler, "t1")  # unknown ids are fine


def test_persistent_asha_subclasses_the_scheduler_the_accessors_read():
    assert issubclass(PersistentASHA, AsyncHyperBandScheduler)
    source = inspect.getsource(AsyncHyperBandScheduler.on_trial_add)
    assert "_trial_info[trial.trial_id]" in source  # what asha_knows / asha_forget read and drop


def test_a_forced_snapshot_is_the_flag_tunes_controller_reads():
    from ray.tune.execution import experiment_state, tune_controller

    assert "self._should_force_sync_up" in inspect.getsource(experiment_state._ExperimentCheckpointManager)
    assert "self._checkpoint_manager" in inspect.getsource(tune_controller.TuneController)


def test_tune_hands_the_previous_sigint_handler_back_after_a_ctrl_c():
    from ray.tune import tune

    assert ray_compat.SIGINT_CONTRACT in inspect.getsource(tune._setup_signal_catching)


def test_the_tune_environment_variables_are_read_by_ray():
    import ray.tune as tune_package

    root = os.path.dirname(tune_package.__file__)
    sources = []
    for folder, _, files in os.walk(root):
        sources += [open(os.path.join(folder, f)).read() for f in files if f.endswith(".py")]
    text = "\n".join(sources)
    for name in ray_compat.TUNE_ENVIRONMENT:
        assert name in text, name


def test_optuna_search_keeps_the_state_the_study_searcher_extends():
    """search.study.optuna_search.StudySearch subclasses Tune's OptunaSearch and uses its
    private state: the Optuna study, the trials it asked for, those it told, its storage,
    sampler and study name, and the hook that creates the study at construction."""
    from ray.tune.search.optuna import OptunaSearch

    init = inspect.getsource(OptunaSearch.__init__)
    for name in ("self._storage", "self._sampler", "self._study_name", "self._completed_trials", "self._ot_trials",
                 "self._setup_study(", "self._ot_study"):
        assert name in init or name in inspect.getsource(OptunaSearch), name
    assert "self._ot_study.ask(" in inspect.getsource(OptunaSearch.suggest)
    assert "def _setup_study(self, mode" in inspect.getsource(OptunaSearch)
