"""Does ASHA drop the trial a full run would pick? Rung rules replayed on real learning curves.

``run`` trains one study per data set with *no* early stopping (random search over the
generalization benchmark's space, every trial to its last epoch), so every trial's whole
validation curve is in MLflow. ``report`` replays asynchronous successive halving
(Ray's ``AsyncHyperBandScheduler`` rule: a trial reaching a rung continues only if its
metric is at least the ``1 - 1/reduction_factor`` quantile of the values recorded at that
rung before it) over those curves, in 500 random arrival orders, for each grace period
and each noise margin (a trial is stopped only when it is more than ``margin`` standard
errors below the cutoff; the standard error is the one ``scheduler.noise_margin: auto``
uses, :func:`search.study.noise.standard_error`). Per rule: how often the study ends with the trial
the full run picks (the trial of the best validation AUC over all epochs), the mean
shortfall of the picked trial's full-run AUC from that best (regret), and the epochs
trained as a fraction of the full run's.

Usage (under the CPU lock):
    python benchmarks/asha_noise.py run --budget 5m --workdir /tmp/medtune-asha
    python benchmarks/asha_noise.py report --workdir /tmp/medtune-asha --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, machine, run_report_args, table, write_section  # noqa: E402
from generalization import DATASETS, SEARCH  # noqa: E402

# BreastMNIST: 78 validation images; PneumoniaMNIST: 524 (its training split subsampled to
# keep trials short; the validation split, the noise this measures, is whole).
STUDIES: dict[str, dict[str, Any]] = {
    "breast": {},
    "pneumonia": {"train_fraction": 0.25},
}
EPOCHS = 6
REDUCTION = 3.0
GRACES = (1, 2, 3)
MARGINS = (0.0, 0.5, 1.0, 2.0)
ORDERS = 500


def study_space(dataset: str, budget: str, seed: int) -> dict[str, Any]:
    """A random-search study with no early stopping on one data set."""
    spec = DATASETS[dataset]
    return {
        "name": f"asha-{dataset}",
        "data": {**spec["data"], **STUDIES[dataset]},
        "params": {"epochs": EPOCHS, "batch_size": 64, **spec["params"]},
        "search": dict(SEARCH),
        "tune": {"algorithm": "random", "num_samples": 1000, "time_budget": budget, "seed": seed, "max_failures": 0},
        "scheduler": {"type": "none"},
        "resources": {"cpus": 1},
    }


def run(workdir: Path, budget: str, seed: int) -> None:
    """One no-stopping study per data set (skipped when it finished before)."""
    for dataset in STUDIES:
        folder = workdir / dataset
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "meta.json").exists():
            continue
        path = folder / "space.yaml"
        path.write_text(yaml.safe_dump(study_space(dataset, budget, seed), sort_keys=False))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
        with open(folder / "run.log", "w") as log:
            subprocess.run([sys.executable, "-m", "search.cli", "run", str(path), "--storage", str(folder / "studies"),
                            "--num-cpus", "2"], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=True)
        (folder / "meta.json").write_text(json.dumps({"budget": budget, "seed": seed, "load": load_average()}))


def curves(folder: Path, dataset: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Every finished trial's per-epoch validation AUC (start order) and the validation labels."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    from search.model.decision import held_out_predictions
    from search.records.runs import child_runs
    from search.records.studies import checkpoint_epochs, find_study, trial_directory
    from search.records.tags import TRIAL_TAG, curve

    study = find_study(f"asha-{dataset}", str(folder / "studies"))
    client = study.client()
    runs = sorted(child_runs(client, study.experiment_id, study.parent_run_id), key=lambda r: r.info.start_time)
    out, labels = [], None
    for run in runs:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, curve("val_auc")))
        if len(history) < EPOCHS:  # cut by the budget: not a full curve
            continue
        out.append(np.array([v for _, v in history[:EPOCHS]]))
        if labels is None:
            folders = checkpoint_epochs(trial_directory(study, run.data.tags[TRIAL_TAG]))
            labels = held_out_predictions(next(iter(folders.values()))[0])[0]
    if labels is None:
        raise SystemExit(f"study asha-{dataset} has no finished trial; run first")
    return out, labels


def rungs(grace: int, max_t: int = EPOCHS, reduction: float = REDUCTION) -> list[int]:
    """ASHA's rung epochs below ``max_t`` (a rung at ``max_t`` stops nothing)."""
    milestones, t = [], grace
    while t < max_t:
        milestones.append(t)
        t = int(round(t * reduction))
    return milestones


def replay(curves_: list[np.ndarray], order: np.ndarray, grace: int, margin: float) -> tuple[int, int]:
    """(the trial the study picks, epochs trained) under one rule and one arrival order."""
    recorded: dict[int, list[float]] = {m: [] for m in rungs(grace)}
    best, best_value, epochs = -1, -np.inf, 0
    for i in order:
        curve_ = curves_[i]
        stop = EPOCHS
        for milestone, values in recorded.items():
            value = curve_[milestone - 1]
            cutoff = np.nanpercentile(values, (1 - 1 / REDUCTION) * 100) if values else None
            values.append(value)
            if cutoff is not None and value < cutoff - margin:
                stop = milestone
                break
        epochs += stop
        score = float(np.max(curve_[:stop]))  # the study ranks a trial by its best epoch
        if score > best_value:
            best, best_value = i, score
    return best, epochs


def measure(curves_: list[np.ndarray], se: float, seed: int = 0) -> list[dict[str, float]]:
    """Every rule's pick rate, regret and cost over ``ORDERS`` arrival orders."""
    full = np.array([c.max() for c in curves_])
    winner = int(full.argmax())
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(curves_)) for _ in range(ORDERS)]
    rows = []
    for grace in GRACES:
        for margin in MARGINS:
            picks, costs = zip(*(replay(curves_, order, grace, margin * se) for order in orders))
            picks_ = np.array(picks)
            rows.append({"grace": grace, "margin": margin, "found": float(np.mean(picks_ == winner)),
                         "regret": float(np.mean(full[winner] - full[picks_])),
                         "cost": float(np.mean(costs)) / (EPOCHS * len(curves_))})
    return rows


def report(workdir: Path, write_docs: bool) -> None:
    """The table per data set, printed (and written to docs/benchmarks.md)."""
    from search.study.noise import REFERENCE_AUC, standard_error

    sections = []
    for dataset in STUDIES:
        folder = workdir / dataset
        if not (folder / "meta.json").exists():
            continue
        meta = json.loads((folder / "meta.json").read_text())
        curves_, labels = curves(folder, dataset)
        best = max(float(c.max()) for c in curves_)
        positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
        se = standard_error("val_auc", labels, 2)  # what scheduler.noise_margin auto allows per standard error
        # how much of a trial's rank at epoch 1 survives to its full run
        first = np.array([c[0] for c in curves_])
        full = np.array([c.max() for c in curves_])
        rho = float(np.corrcoef(np.argsort(np.argsort(first)), np.argsort(np.argsort(full)))[0, 1])
        rows = measure(curves_, se)
        sections.append(
            f"**{dataset}**: {len(curves_)} trials run to epoch {EPOCHS} (budget {meta['budget']}, seed "
            f"{meta['seed']}, load {meta['load']}); validation {positives} positive / {negatives} negative images, "
            f"so the AUC's standard error (at AUC {REFERENCE_AUC}, as `noise_margin: auto` computes it; the best "
            f"trial reached {best:.3f}) is {se:.3f}; Spearman correlation of a trial's "
            f"epoch-1 AUC with its full-run AUC: {rho:.2f}.\n\n"
            + table(["grace period", "margin (standard errors)", "finds the full run's pick", "mean regret (AUC)",
                     "epochs trained (of full run)"],
                    [[r["grace"], f"{r['margin']:g}", f"{r['found']:.0%}", f"{r['regret']:.4f}",
                      f"{r['cost']:.0%}"] for r in rows]))
    if not sections:
        raise SystemExit(f"no finished study under {workdir}; run first")
    text = "\n\n".join(sections)
    print(text)
    if write_docs:
        write_section("asha-noise", "## ASHA on small validation splits (issue G.7)\n\n"
                      f"{machine()}. Rung rules replayed on the learning curves of studies that ran every trial to "
                      f"the end (reduction factor {REDUCTION:g}, {EPOCHS} epochs, {ORDERS} random arrival orders "
                      "per rule). Margin: a trial is stopped only when its AUC is more than that many standard "
                      "errors below the rung's cutoff.\n\n" + text,
                      command=f"python benchmarks/asha_noise.py report --workdir {workdir} --write-docs")


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--budget", default="5m", help="wall-clock budget of each study (default 5m)")
    run.add_argument("--seed", type=int, default=0)


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-asha"), _run_options, "the no-stopping studies")
    if args.command == "run":
        run(args.workdir, args.budget, args.seed)
    else:
        report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
