"""Faults of the study driver found by trying it as a hostile user would.

Each test runs the real ``search run`` in a subprocess on real PneumoniaMNIST and reads
MLflow and the study folder back: Ctrl-C and ``--resume`` (with an edited space and a
tampered ``tuner.pkl`` refused on the way), a time budget across a resume, trials that
fail the same way every time, resources no node has, and broken study records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_study import output, search_cmd, start, study_runs

from search.cli import main

# Slow enough (40% of the training split, 28 px, no early stopping) that a study is still running when the
# test interrupts it, small enough that the whole study takes well under a minute.
SLOW_SPACE = """
name: {name}
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: {fraction}
params:
  backbone: cnn3
  epochs: {epochs}
  batch_size: 32
search:
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
tune: {{algorithm: tpe, num_samples: {samples}, seed: 3, startup_trials: 2{budget}}}
scheduler: {{type: none}}
resources: {{cpus: 1}}
"""


def space_text(name: str, epochs: int = 3, samples: int = 3, fraction: float = 0.4, budget: str = "") -> str:
    return SLOW_SPACE.format(name=name, epochs=epochs, samples=samples, fraction=fraction,
                             budget=f", time_budget: {budget}" if budget else "")


def wait_for_reports(tmp_path: Path, name: str, proc: subprocess.Popen, reports: int = 1,
                     timeout: float = 240) -> None:
    """Block until ``reports`` trials have logged at least one epoch to MLflow."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(tmp_path)
        if (tmp_path / "studies" / name / "medtune_study.json").exists():
            client, _, children = study_runs(tmp_path, name)
            if sum(bool(client.get_metric_history(c.info.run_id, "val_loss")) for c in children) >= reports:
                return
        time.sleep(0.5)
    raise AssertionError("no trial reported in time:\n" + output(tmp_path))


def run_cli(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd(*args), cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def interrupt(proc: subprocess.Popen) -> int:
    """One Ctrl-C to the driver (not to its Ray processes), then its exit code."""
    os.kill(proc.pid, signal.SIGINT)
    return proc.wait(timeout=180)


def test_ctrl_c_marks_the_study_interrupted_and_resume_refuses_an_edited_space(tmp_path, capsys):
    """Ctrl-C: exit 130, parent ``interrupted`` (not FINISHED), ``search list`` says how to
    resume. ``--resume`` with an edited space is refused with the diff; with the space as
    it was it finishes every trial exactly once, none marked stopped early by the Ctrl-C."""
    proc = start(tmp_path, space_text("ctrlc", epochs=2))
    wait_for_reports(tmp_path, "ctrlc", proc)
    assert interrupt(proc) == 130, output(tmp_path)
    client, record, _ = study_runs(tmp_path, "ctrlc")
    parent = client.get_run(record["parent_run_id"])
    assert parent.data.tags["medtune.status"] == "interrupted"
    assert parent.info.status == "KILLED"
    assert main(["list", "--storage", str(tmp_path / "studies")]) == 0
    listing = capsys.readouterr().out
    assert "interrupted — resume with: search run " in listing and "--resume" in listing, listing

    space = tmp_path / "space.yaml"
    original = space.read_text()
    space.write_text(original.replace("epochs: 2", "epochs: 4").replace("1.0e-2]", "1.0e-1]"))
    assert main(["run", str(space), "--storage", str(tmp_path / "studies"), "--resume"]) == 2  # refused before Ray
    edited = capsys.readouterr().err
    assert "the space changed since study 'ctrlc' started" in edited
    assert "-  epochs: 2" in edited and "+  epochs: 4" in edited, edited
    assert "--name" in edited
    space.write_text(original)

    resumed = start(tmp_path, space_text("ctrlc", epochs=2), "--resume")
    assert resumed.wait(timeout=600) == 0, output(tmp_path)
    client, record, children = study_runs(tmp_path, "ctrlc")
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["medtune.status"] == "finished"
    assert parent.data.tags["medtune.trials_running"] == "0"  # recounted, not left from the interrupt
    ids = [c.data.tags["medtune.trial_id"] for c in children]
    assert len(ids) == len(set(ids)) == 3, ids
    assert {c.data.tags["medtune.state"] for c in children} == {"completed"}, [c.data.tags for c in children]
    assert all(c.info.status == "FINISHED" for c in children)


def test_time_budget_is_one_clock_across_a_resume_and_closes_every_run(tmp_path, capsys):
    """A 20 s budget, Ctrl-C part-way, then ``--resume``: the resumed run spends only what
    is left, trials the budget cuts off are closed as stopped early by it (none stays
    RUNNING in MLflow), and a Ctrl-C does not mark running trials stopped early."""
    text = space_text("budget", epochs=40, samples=3, fraction=0.3, budget="20s")
    proc = start(tmp_path, text)
    wait_for_reports(tmp_path, "budget", proc)
    assert interrupt(proc) == 130, output(tmp_path)
    client, record, children = study_runs(tmp_path, "budget")
    assert {c.data.tags["medtune.state"] for c in children} == {"running"}, [c.data.tags for c in children]
    spent_first = json.loads((tmp_path / "studies" / "budget" / "medtune_study.json").read_text())["budget_spent_s"]
    assert 0 < spent_first < 20

    started = time.time()
    resumed = start(tmp_path, text, "--resume")
    assert resumed.wait(timeout=300) == 0, output(tmp_path)
    client, record, children = study_runs(tmp_path, "budget")
    spent = json.loads((tmp_path / "studies" / "budget" / "medtune_study.json").read_text())["budget_spent_s"]
    assert 20 <= spent < 35, spent
    assert time.time() - started < 20 - spent_first + 60  # Ray start-up and shutdown on top of what was left
    for child in children:
        assert child.info.status != "RUNNING", child.data.tags
        assert child.data.tags["medtune.state"] == "stopped_early", child.data.tags
        assert child.data.tags["medtune.stopped_by"] == "time budget"
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["medtune.trials_running"] == "0"

    assert main(["run", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "studies"), "--resume"]) == 0
    assert "time budget (20s) is spent: nothing left to run" in capsys.readouterr().out


FAILING_SPACE = """
name: failing
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: 0.1
params:
  backbone: cnn3
  epochs: 2
  batch_size: 32
  optimizer: sgd
  momentum: 0.0
search:
  lr: {choice: [1.0e+8, 1.0e+9]}       # the loss overflows at once: the same failure on every retry
tune: {algorithm: grid, num_samples: 1, max_failures: 2}
scheduler: {type: none}
resources: {cpus: 1}
"""


def test_deterministic_failures_are_not_retried_and_a_study_without_a_result_exits_non_zero(tmp_path):
    proc = start(tmp_path, FAILING_SPACE)
    assert proc.wait(timeout=600) == 1, output(tmp_path)
    assert "no trial of study failing finished" in output(tmp_path)
    client, record, children = study_runs(tmp_path, "failing")
    assert len(children) == 2
    for child in children:
        assert child.data.tags["medtune.state"] == "errored" and child.info.status == "FAILED"
        assert "NonFiniteLossError" in child.data.tags["medtune.error"], child.data.tags
    parent = client.get_run(record["parent_run_id"])
    assert parent.data.tags["medtune.status"] == "no_trial_finished" and parent.info.status == "FAILED"
    # Not retried: Tune saw no error (it would write error.txt and count a failure per retry).
    for trial_dir in (tmp_path / "studies" / "failing").glob("train_*"):
        assert not (trial_dir / "error.txt").exists(), (trial_dir / "error.txt").read_text()
        rows = (trial_dir / "result.json").read_text().splitlines()
        assert len(rows) == 1, rows  # one failure report, no second attempt


def test_resources_no_node_has_are_refused_before_any_trial(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(space_text("greedy")).replace("resources: {cpus: 1}", "resources: {cpus: 8}"))
    result = run_cli(tmp_path, "run", str(space), "--storage", str(tmp_path / "studies"), "--num-cpus", "2",
                     timeout=300)
    assert result.returncode == 2, result
    assert "resources: each trial asks for 8 CPUs" in result.stderr and "no node of the Ray cluster" in result.stderr
    assert not (tmp_path / "studies" / "greedy" / "medtune_study.json").exists()
    if (tmp_path / "mlflow.db").exists():  # no parent run left RUNNING
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_study_folder_holding_only_tunes_start_is_started_afresh(tmp_path):
    from search.records.storage import StudyFiles
    from search.records.study_record import TUNER_PICKLE
    from search.space import SpaceError
    from search.study import clear_aborted_start

    files = StudyFiles(str(tmp_path), "aborted")
    files.write_text(TUNER_PICKLE, "pickled tuner")
    clear_aborted_start(files)
    assert not files.exists()

    files.write_text(TUNER_PICKLE, "pickled tuner")
    files.write_text("train_0001/result.json", "{}")
    with pytest.raises(SpaceError, match="is not a medtune study"):
        clear_aborted_start(files)
    assert files.exists("train_0001/result.json")  # nothing deleted


def test_resume_refuses_a_tuner_pickle_this_study_did_not_write(tmp_path):
    """``Tuner.restore`` unpickles tuner.pkl: a changed or missing one is refused."""
    from search.records.storage import StudyFiles
    from search.records.study_record import (
        TUNER_PICKLE,
        RecordError,
        StudyRecord,
        file_sha256,
    )

    files = StudyFiles(str(tmp_path), "study")
    files.write_text(TUNER_PICKLE, "the pickle the study wrote")
    record = StudyRecord.new("study", tmp_path / "space.yaml", {"data": {"source": "x.npz"}}, "sqlite:///m.db", "1",
                             "0" * 32, "f" * 64)
    record.tuner_sha256 = file_sha256(files, TUNER_PICKLE)
    record.check_tuner_file(files)
    files.write_text(TUNER_PICKLE, "the pickle the study wrote, with a payload")
    with pytest.raises(RecordError, match="tuner.pkl differs from the one this study wrote"):
        record.check_tuner_file(files)
    (tmp_path / "study" / TUNER_PICKLE).unlink()
    with pytest.raises(RecordError, match="tuner.pkl is missing"):
        record.check_tuner_file(files)


def test_a_truncated_study_record_names_its_file(tmp_path, capsys):
    """``search run --resume`` and ``search list`` on a cut-off medtune_study.json name the file."""
    from search.records.studies import Study, StudyError

    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(space_text("broken")))
    folder = tmp_path / "studies" / "broken"
    folder.mkdir(parents=True)
    (folder / "medtune_study.json").write_text('{"name": "broken", "tracking_uri": ')
    assert main(["run", str(space), "--storage", str(tmp_path / "studies"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{folder}/medtune_study.json is unreadable or incomplete (JSONDecodeError" in err, err
    with pytest.raises(StudyError, match=r"broken/medtune_study.json is unreadable"):
        Study.load(folder)


def test_trial_resume_from_a_missing_checkpoint_is_refused_before_loading_data(tmp_path, capsys):
    from search.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(space_text("trial")))
    started = time.perf_counter()
    assert main(["trial", str(space), "--resume", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "no such checkpoint" in err and "Traceback" not in err
    assert time.perf_counter() - started < 5  # refused before decoding any image


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
