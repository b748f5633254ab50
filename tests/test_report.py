"""``search report`` on a real study: sections, numbers matching MLflow, valid PNGs, artifacts.

One tiny grid study (ImageNet EfficientNet-Lite0 on PneumoniaMNIST at 28 px, 8 trials of at most 2 epochs)
runs through the real ``search run``; the report is then written before and after
``search best --export`` and read back against the study's MLflow records.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from search.cli import main
from search.report import analysis
from search.report.records import StudyRecords

SPACE = """
name: tiny
data:
  source: medmnist/pneumoniamnist.npz
params:
  backbone: tf_efficientnet_lite0        # offline ImageNet weights: frozen stages mean something
  pretrained: true
  epochs: 2
  batch_size: 32
search:
  lr: {choice: [3.0e-3, 1.0e-6]}          # 1e-6 learns nothing: ASHA stops those trials
  frozen_stages: {choice: [0, 5]}          # 5 = all of lite0's stages: feature extraction
  train_fraction: {choice: [0.05, 0.15]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1}
"""

SECTIONS = ("Summary", "Budget and data", "Leaderboard", "Scratch vs pretrained", "How deep to fine-tune",
            "Truncated vs full backbones", "Effect of each searched parameter", "Learning curves and early stopping",
            "Selection estimate vs test", "Uncertainty")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Run the tiny study once; returns its working folder (mlflow.db, studies/)."""
    root = tmp_path_factory.mktemp("report")
    (root / "space.yaml").write_text(textwrap.dedent(SPACE))
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", str(root / "space.yaml"), "--storage",
                           str(root / "studies"), "--num-cpus", "2"], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def report_cli(root: Path, *args: str) -> int:
    return main(["report", "tiny", "--storage", str(root / "studies"), *args])


def test_report_sections_numbers_plots_and_artifacts(study, monkeypatch):
    monkeypatch.chdir(study)
    record = json.loads((study / "studies" / "tiny" / "medtune_study.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert report_cli(study) == 0
    out = study / "studies" / "tiny" / "report"
    text = (out / "report.md").read_text()
    for title in SECTIONS:
        assert re.search(rf"^## {re.escape(title)}", text, re.M), title
    # Questions the study did not vary get one line, not a failure.
    assert "Not studied: every finished trial used the same initialisation (ImageNet)" in text
    assert "Not studied: `truncate_after` was not varied" in text
    assert "No test metrics yet: `search best tiny --export DIR`" in text

    # The leaderboard's numbers are MLflow's.
    children = client.search_runs([record["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{record['parent_run_id']}'")
    assert len(children) == 8
    finished = [c for c in children if c.data.tags["medtune.state"] in ("completed", "stopped_early")]
    best = max(finished, key=lambda c: float(c.data.tags["medtune.best_val_auc"]))
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| ([0-9.]+) \|", text, re.M)
    assert rows[0][1] == best.data.tags["medtune.trial_id"]
    assert float(rows[0][2]) == pytest.approx(float(best.data.tags["medtune.best_val_auc"]), abs=5e-5)
    by_trial = {c.data.tags["medtune.trial_id"]: float(c.data.tags["medtune.best_val_auc"]) for c in finished}
    for _, trial, value in rows:
        assert float(value) == pytest.approx(by_trial[trial], abs=5e-5)
    parent = client.get_run(record["parent_run_id"])
    assert f"val_auc {parent.data.metrics['study_best_val_auc']:.4f}" in text
    stopped = sum(c.data.tags["medtune.state"] == "stopped_early" for c in children)
    assert stopped >= 1 and f"ASHA stopped {stopped} at epoch 1" in text

    # Feature extraction (frozen_stages 5 = every lite0 stage) is compared with fine-tuning, per training fraction.
    for fraction in ("5%", "15%"):
        assert re.search(rf"^\| tf_efficientnet_lite0 \(ImageNet, {fraction} of train\) \| 0\.\d+ \| 0\.\d+ "
                         rf"\| [+-]0\.\d{{4}} \|",
                         text, re.M), fraction
    # Uncertainty: a bootstrap interval around the best trial's AUC from its saved predictions.
    low, high = map(float, re.search(r"95% bootstrap interval \[([0-9.]+), ([0-9.]+)\]", text).groups())
    assert low < float(rows[0][2]) < high

    # Every image the report shows exists and is a PNG that decodes.
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"frozen_stages.png", "parameters.png", "importance.png", "learning_curves.png"} <= set(images)
    for name in images:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 200
            image.load()
    logged = {a.path for a in client.list_artifacts(record["parent_run_id"], "report")}
    assert {f"report/{n}" for n in [*images, "report.md"]} <= logged

    # After an export, the report carries the test metrics logged on the parent run.
    assert main(["best", "tiny", "--storage", str(study / "studies"), "--export", str(study / "export")]) == 0
    assert report_cli(study, "--out", str(study / "again"), "--top", "3") == 0
    text = (study / "again" / "report.md").read_text()
    test_auc = client.get_run(record["parent_run_id"]).data.metrics["test_auc"]
    assert f"scores AUC {test_auc:.4f}" in text and f"auc {test_auc:.4f}" in text
    metrics = client.get_run(record["parent_run_id"]).data.metrics
    assert (f"| test split, the exported model (latest export) | {test_auc:.4f} ({metrics['test_auc_low']:.4f}-"
            f"{metrics['test_auc_high']:.4f}) |") in text
    assert re.search(r"^\| selection \(one validation split\) \| 0\.\d{4} \|", text, re.M)
    assert "The selection estimate is " in text
    assert len(re.findall(r"^\| \d+ \| `\w+` \|", text, re.M)) == 3


def test_report_of_unknown_study_names_the_fix(tmp_path, capsys):
    assert main(["report", "nope", "--storage", str(tmp_path)]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def test_importance_finds_the_parameter_that_decides_the_score():
    rng = np.random.default_rng(0)
    lr = 10 ** rng.uniform(-5, -2, 30)
    dropout = rng.uniform(0, 0.5, 30)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(30)], "run_id": [f"r{i}" for i in range(30)],
                          "state": "completed", "value": 0.5 + 0.1 * np.log10(lr / 1e-5), "lr": lr,
                          "dropout": dropout, "sampled": [("lr", "dropout")] * 30})
    records = StudyRecords(study=None, metric="val_auc", mode="max", trials=table, searched=["lr", "dropout"])
    importance, note = analysis.importances(records, None)
    assert list(importance)[0] == "lr" and importance["lr"] > 0.8, (importance, note)


def test_bootstrap_interval_matches_the_trials_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    p1 = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 400), 0, 1)
    auc, low, high = analysis.bootstrap_auc(labels, np.stack([1 - p1, p1], 1), resamples=500)
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(labels, p1))
    assert low < auc < high and high - low < 0.15


def test_a_claim_between_two_trials_carries_a_paired_test():
    from search.report.sections import Context, paired_claim

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    strong = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 300), 0, 1)
    weak = np.clip(strong + rng.normal(0, 0.4, 300), 0, 1)
    saved = {"a": (labels, np.stack([1 - strong, strong], 1)), "b": (labels, np.stack([1 - weak, weak], 1)),
             "c": (labels, np.stack([1 - strong, strong], 1) * 0.999 + 0.0005), "gone": None}
    ctx = Context(records=None, space=None, out=Path("."), top=5, data_shape=lambda: (2, 1, 28),
                  best_predictions=lambda: None, trial_predictions=saved.get)
    real = paired_claim(ctx, "a", "b", "the best pretrained trial", "the best scratch trial")
    assert "Paired test (DeLong) of the best pretrained trial `a` vs the best scratch trial `b` on the same 300" in real
    assert real.endswith(": significant.")
    assert paired_claim(ctx, "a", "c", "x", "y").endswith("not significant.")
    assert paired_claim(ctx, "a", "gone", "x", "y") is None
    one_positive = (np.array([0, 0, 0, 1]), np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]]))
    saved.update(d=one_positive, e=one_positive)
    assert paired_claim(ctx, "d", "e", "x", "y") is None  # no DeLong test with one positive: no claim, no crash
