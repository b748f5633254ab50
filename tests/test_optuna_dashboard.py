"""The study's Optuna study as optuna-dashboard shows it: live, PRUNED for ASHA's stops, per-epoch values.

The first test runs a real study (``search run`` in a subprocess, real PneumoniaMNIST),
watches it through optuna-dashboard's own WSGI app while it runs, interrupts it and
resumes it, then checks the dashboard's JSON against MLflow. The others drive
:class:`search.study.optuna_search.StudySearch` through the hooks Tune calls, without Ray.
"""

from __future__ import annotations

import math
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna_dashboard  # pip install -e '.[test]'
import pytest
import ray.cloudpickle
from test_study import output, start, study_runs
from werkzeug.test import Client

STORAGE_ENV = "MEDTUNE_OPTUNA_STORAGE"

# An lr range from hopeless to good, so that ASHA stops some trials at its rungs (1, 2).
# (Errored trials, FAIL in Optuna, are the next test's: here they would only cost time.)
DASHBOARD_SPACE = """
name: watched
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: 0.15
params:
  backbone: cnn3
  epochs: 3
  batch_size: 32
search:
  lr: {loguniform: [1.0e-6, 1.0e-2]}
tune: {algorithm: tpe, num_samples: 8, seed: 7, startup_trials: 4}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1}
"""

OPTUNA_STATE = {"completed": "Complete", "stopped_early": "Pruned", "errored": "Fail"}


def dashboard(storage: str) -> Client:
    """optuna-dashboard's own app on ``storage``, as ``optuna-dashboard STORAGE`` serves it."""
    return Client(optuna_dashboard.wsgi(storage))


def studies(client: Client) -> list[dict[str, Any]]:
    response = client.get("/api/studies")
    assert response.status_code == 200, response.text
    return response.get_json()["study_summaries"]


def study_detail(client: Client, study_id: int) -> dict[str, Any]:
    response = client.get(f"/api/studies/{study_id}")
    assert response.status_code == 200, response.text
    return response.get_json()


def attrs(item: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in item["user_attrs"]}


def test_dashboard_shows_the_study_live_with_pruned_trials_across_a_resume(tmp_path, monkeypatch):
    """Live: while the study runs, the dashboard shows it with its running trials.
    Ctrl-C then, and ``--resume``: still one Optuna study, one Optuna trial per Tune trial. At the end
    each trial's state is MLflow's (stopped_early -> Pruned, completed -> Complete) and its
    intermediate values are MLflow's per-epoch curve."""
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    started = time.perf_counter()
    journal = tmp_path / "studies" / "watched" / "optuna.journal"
    proc = start(tmp_path, DASHBOARD_SPACE)
    live = None  # optuna-dashboard opens a journal that exists (it appears at the first trial)
    running: list[dict[str, Any]] = []
    deadline = time.time() + 300
    while not running:  # (a trial's epochs take a fraction of a second here: too fast to catch)
        assert time.time() < deadline and proc.poll() is None, output(tmp_path)
        time.sleep(0.25)
        if not journal.exists():
            continue
        live = live or dashboard(str(journal))
        listed = studies(live)
        if not listed:
            continue
        assert [s["study_name"] for s in listed] == ["watched"]
        running = [t for t in study_detail(live, listed[0]["study_id"])["trials"] if t["state"] == "Running"]
    os.kill(proc.pid, signal.SIGINT)  # one Ctrl-C: Tune saves, the driver exits 130
    assert proc.wait(timeout=180) == 130, output(tmp_path)
    assert "watch it live with: optuna-dashboard " + str(journal) in output(tmp_path)

    resumed = start(tmp_path, DASHBOARD_SPACE, "--resume")
    assert resumed.wait(timeout=600) == 0, output(tmp_path)
    elapsed = time.perf_counter() - started

    client, record, children = study_runs(tmp_path, "watched")
    metric = "val_auc"
    app = dashboard(str(journal))  # a fresh app: what `optuna-dashboard <journal>` shows now
    listed = studies(app)
    assert [s["study_name"] for s in listed] == ["watched"], listed
    assert listed[0]["directions"] == ["maximize"]
    assert attrs(listed[0])["mlflow_parent_run_id"] == record["parent_run_id"]
    detail = study_detail(app, listed[0]["study_id"])
    assert detail["objective_names"] == [metric] and detail["has_intermediate_values"]
    trials = detail["trials"]

    by_tune_id = {attrs(t)["tune_trial_id"]: t for t in trials}
    runs = {c.data.tags["medtune.trial_id"]: c for c in children}
    assert len(by_tune_id) == len(trials) == len(runs) == 8, (sorted(by_tune_id), sorted(runs))
    assert set(by_tune_id) == set(runs)  # one Optuna trial per Tune trial, none repeated or lost
    states = {}
    for trial_id, run in runs.items():
        trial, state = by_tune_id[trial_id], run.data.tags["medtune.state"]
        states[trial_id] = state
        assert trial["state"] == OPTUNA_STATE[state], (trial_id, state, trial)
        assert attrs(trial)["medtune_state"] == state
        curve = client.get_metric_history(run.info.run_id, f"epoch/{metric}")
        steps = [v["step"] for v in trial["intermediate_values"]]
        last_epoch = int(run.data.tags["medtune.last_epoch"])
        assert steps == [m.step for m in sorted(curve, key=lambda m: m.step)] == list(range(1, last_epoch + 1))
        for value, point in zip(trial["intermediate_values"], sorted(curve, key=lambda m: m.step)):
            assert value["value"] == pytest.approx(point.value, abs=1e-6), (trial_id, value, point)
        # Optuna's value of a trial: its last epoch's (a pruned trial's: its last intermediate value).
        assert trial["values"] == [pytest.approx(trial["intermediate_values"][-1]["value"])]
        assert (last_epoch < 3) == (state == "stopped_early"), (trial_id, state, last_epoch)
    counts = {s: list(states.values()).count(s) for s in OPTUNA_STATE}
    assert counts["stopped_early"] and counts["completed"] and not counts["errored"], counts
    best = detail["best_trials"][0]
    assert best["state"] == "Complete"
    print(f"study of 8 trials, interrupted and resumed, in {elapsed:.0f}s; states {counts}")


UNIT_SPACE = """
name: unit
data: {source: medmnist/pneumoniamnist.npz}
params: {backbone: cnn3, epochs: 3}
search:
  lr: {loguniform: [1.0e-5, 1.0e-2]}
tune: {algorithm: tpe, num_samples: 8, seed: 1, startup_trials: 2}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
"""


def epoch(n: int, value: float) -> dict[str, Any]:
    return {"val_auc": value, "epoch": n, "training_iteration": n}


def searcher_for(tmp_path: Path, name: str = "unit", parent_run_id: str = "a" * 32):
    from search.records.storage import StudyFiles
    from search.space import load_space
    from search.space.sampling import DefineByRun, sampler_for
    from search.study.optuna_search import StudySearch, optuna_storage

    path = tmp_path / "space.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(UNIT_SPACE))
    space = load_space(path)
    files = StudyFiles(str(tmp_path / "studies"), name)
    storage = optuna_storage(files, path)
    return StudySearch(DefineByRun(space), sampler_for(space), "val_auc", "max", storage=storage, study_name=name,
                       fixed=dict(space.params), parent_run_id=parent_run_id), storage, files


def test_searcher_tells_optuna_how_trials_ended_and_a_restored_one_continues_the_study(tmp_path, monkeypatch):
    """The hooks as Tune calls them: ASHA's stopping result and a trial's last epoch reach
    the searcher only in on_trial_complete. Restored from a searcher snapshot (Tune's
    experiment state) or from tuner.pkl alone, it continues the same Optuna study; a
    trial asked for after the snapshot is closed FAIL (lost), not left running."""
    from search.study.trainable import FAILURE_KEY

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    searcher, storage, files = searcher_for(tmp_path)
    assert storage.kind == "journal" and storage.location == str(Path(files.uri) / "optuna.journal")
    tuner_pkl = ray.cloudpickle.dumps(searcher)  # what Tune writes at the start, before any trial
    assert not files.exists(), "nothing in the study folder before the study record"
    Path(files.uri).mkdir(parents=True)

    searcher.suggest("t1")
    searcher.on_trial_result("t1", epoch(1, 0.6))
    searcher.on_trial_result("t1", epoch(2, 0.7))
    searcher.on_trial_complete("t1", epoch(3, 0.8))  # ASHA's STOP at max_t: not passed to on_trial_result
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", epoch(1, 0.5))  # stopped at the first rung
    searcher.suggest("t3")
    searcher.on_trial_complete("t3", {"val_auc": math.nan, FAILURE_KEY: "Traceback ...\nTrialSetupError: bad", "epoch": 0})
    searcher.suggest("t4")
    searcher.on_trial_result("t4", epoch(1, 0.6))
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Tune's experiment snapshot
    searcher.suggest("t5")  # asked, then the driver dies before the next snapshot

    restored = ray.cloudpickle.loads(tuner_pkl)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    restored.on_trial_result("t4", epoch(1, 0.6))  # a resumed trial re-reports from its checkpoint
    restored.on_trial_result("t4", epoch(2, 0.65))
    restored.on_trial_complete("t4", epoch(3, 0.7))
    restored.suggest("t6")
    restored.on_trial_complete("t6", epoch(2, 0.4), error=True)  # Tune saw the trial raise

    from_pickle_only = ray.cloudpickle.loads(tuner_pkl)  # a driver killed before Tune's first snapshot
    from_pickle_only.suggest("t7")
    from_pickle_only.on_trial_complete("t7", epoch(3, 0.9))

    app = dashboard(storage.location)
    listed = studies(app)
    assert [s["study_name"] for s in listed] == ["unit"]
    trials = {attrs(t)["tune_trial_id"]: t for t in study_detail(app, listed[0]["study_id"])["trials"]}
    assert {k: t["state"] for k, t in trials.items()} == {
        "t1": "Complete", "t2": "Pruned", "t3": "Fail", "t4": "Complete", "t5": "Fail", "t6": "Fail", "t7": "Complete"}
    assert [t["number"] for t in trials.values()] == list(range(7))
    steps = {k: {v["step"]: v["value"] for v in t["intermediate_values"]} for k, t in trials.items()}
    assert steps["t1"] == {1: 0.6, 2: 0.7, 3: 0.8} and trials["t1"]["values"] == [0.8]
    assert steps["t2"] == {1: 0.5} and trials["t2"]["values"] == [0.5]
    assert steps["t4"] == {1: 0.6, 2: 0.65, 3: 0.7}
    assert attrs(trials["t3"])["medtune_error"] == "TrialSetupError: bad"
    assert attrs(trials["t5"])["medtune_state"] == "lost"
    assert attrs(trials["t2"]) == {"tune_trial_id": "t2", "medtune_state": "stopped_early", "last_epoch": "1"}


def test_rdb_storage_from_the_environment_and_in_memory_for_a_uri_study(tmp_path, monkeypatch, capsys):
    """MEDTUNE_OPTUNA_STORAGE names an RDB for every study; a second medtune study of the
    same name there gets its own Optuna study. Without it, a URI study stays in memory."""
    from search.records.storage import StudyFiles
    from search.space import SpaceError
    from search.study.optuna_search import optuna_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv(STORAGE_ENV, url)
    first, storage, files = searcher_for(tmp_path / "one", parent_run_id="1" * 32)
    assert storage.kind == "rdb" and storage.dashboard_command() == f"optuna-dashboard {url}"
    first = ray.cloudpickle.loads(ray.cloudpickle.dumps(first))  # the RDB storage survives pickling
    first.suggest("t1")
    first.on_trial_complete("t1", epoch(2, 0.7))
    second, _, _ = searcher_for(tmp_path / "two", parent_run_id="2" * 32)
    second.suggest("t1")
    second.on_trial_complete("t1", epoch(3, 0.9))
    assert "this one's Optuna study is 'unit-22222222'" in capsys.readouterr().out
    listed = studies(dashboard(url))
    assert sorted(s["study_name"] for s in listed) == ["unit", "unit-22222222"]
    assert {s["study_name"]: attrs(s)["mlflow_parent_run_id"][0] for s in listed} == {"unit": "1", "unit-22222222": "2"}

    monkeypatch.setenv(STORAGE_ENV, "notadb://nowhere")
    with pytest.raises(SpaceError, match=STORAGE_ENV):
        optuna_storage(files)
    monkeypatch.delenv(STORAGE_ENV)
    in_memory = optuna_storage(StudyFiles("s3://bucket/studies", "remote"))
    assert in_memory.kind == "memory" and in_memory.open() is None
    assert STORAGE_ENV in in_memory.describe(StudyFiles("s3://bucket/studies", "remote"))


def test_the_optuna_search_internals_study_search_relies_on():
    """StudySearch subclasses Tune's OptunaSearch and uses its private state (Ray 2.60): pin it,
    so that a Ray upgrade fails here first (as tests/test_ray_compat.py does for the rest)."""
    import inspect

    from ray.tune.search.optuna import OptunaSearch

    init = inspect.getsource(OptunaSearch.__init__)
    assert "self._setup_study(mode)" in init  # deferred by StudySearch to the first trial
    for name in ("_ot_trials", "_ot_study", "_completed_trials", "_storage", "_study_name", "_sampler"):
        assert f"self.{name} = " in init, name
    assert "self._ot_trials[trial_id] = self._ot_study.ask()" in inspect.getsource(OptunaSearch.suggest)
    assert "self.__dict__.copy()" in inspect.getsource(OptunaSearch.save)  # the storage is pickled with it
    assert "self.__dict__.update(save_object)" in inspect.getsource(OptunaSearch.restore)
