"""Does the handed-back model hold on the test split? Five arms at one wall-clock budget.

For each data set, one search space and one budget per arm, run one after the other on
this machine; each arm's final model is exported with ``search best --export`` and
tested once on the held-out test split:

- (a) ``single``: TPE + ASHA on the single train/val split, the best trial's checkpoint;
- (c) ``top5``: the same study as (a), exported as a top-5 soft-voting ensemble;
- (b) ``cv``: TPE + ASHA with ``tune.cv_folds: 5``, exported as the best trial's fold ensemble;
- (d) ``random``: random search without early stopping, single split, best checkpoint;
- (e) ``recipe``: no search, MedMNIST+'s fixed recipe with tf_efficientnet_lite0 (ImageNet
  weights, AdamW lr 1e-4, cosine, batch 64, early stopping on validation: the export takes
  the best validation epoch), trained until the budget ends.

Per arm: test AUC with its 95% CI (DeLong), the selection estimate (the validation score
the study ranked its best trial by: one split, or the 5-fold mean) and its gap to test,
ECE after temperature scaling, and the search's wall time.

Usage (under the CPU lock; each arm is a ``search run`` + ``search best --export``):
    python benchmarks/generalization.py run --datasets pneumonia breast --budget 3m --workdir /tmp/medtune-gen
    python benchmarks/generalization.py report --workdir /tmp/medtune-gen --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, machine, run_report_args, table, write_section  # noqa: E402

DATASETS: dict[str, dict[str, Any]] = {
    "pneumonia": {"data": {"source": "medmnist/pneumoniamnist.npz"}, "params": {"aug_flip": False, "aug_shift": 2}},
    "breast": {"data": {"source": "medmnist/breastmnist.npz"}, "params": {"aug_flip": True}},
    "lung_ct": {"data": {"source": "lung_ct/iqothnccd_1097_256px.zip", "image_size": 64, "channels": 1,
                         "val_fraction": 0.15, "test_fraction": 0.15},
                "params": {"in_chans": 1, "class_weighting": "balanced", "aug_flip": True}},
    "kermany": {"data": {"source": "chest_xray/kermany_5840_224px.zip", "allow_group_overlap": True,
                         "group_column": "patient_group", "val_fraction": 0.15, "image_size": 64, "channels": 1},
                "params": {"in_chans": 1, "class_weighting": "balanced", "aug_flip": False, "aug_shift": 4}},
}
# The same space for every searching arm: scratch CNN vs ImageNet EfficientNet-Lite0, optimizer, lr, dropout.
SEARCH = {
    "backbone": {"choice": ["cnn3", "tf_efficientnet_lite0"]},
    "pretrained": {"choice": [True, False]},  # not sampled for cnn3 (no ImageNet weights)
    "optimizer": {"choice": ["adam", "adamw"]},
    "lr": {"loguniform": [1.0e-4, 3.0e-3]},
    "dropout": {"uniform": [0.0, 0.5]},
}
RECIPE = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "optimizer": "adamw", "lr": 1.0e-4,
          "schedule": "cosine", "batch_size": 64, "epochs": 30}
ARMS = ("single", "top5", "cv", "random", "recipe")
LABELS = {"single": "(a) TPE+ASHA, single split", "top5": "(c) same study, top-5 ensemble",
          "cv": "(b) TPE+ASHA, 5-fold CV, fold ensemble", "random": "(d) random search, no ASHA",
          "recipe": "(e) fixed recipe, no search"}
STUDY_OF = {"single": "single", "top5": "single", "cv": "cv", "random": "random", "recipe": "recipe"}
EXPORT_FLAGS = {"single": ["--ensemble", "none"], "top5": ["--ensemble", "top-5"], "cv": ["--ensemble", "folds"],
                "random": ["--ensemble", "none"], "recipe": ["--ensemble", "none"]}


def study_space(dataset: str, study: str, budget: str, seed: int) -> dict[str, Any]:
    """The space one study of one data set runs."""
    spec = DATASETS[dataset]
    raw: dict[str, Any] = {
        "name": f"gen-{dataset}-{study}",
        "data": dict(spec["data"]),
        "params": {"epochs": 6, "batch_size": 64, **spec["params"]},
        "search": dict(SEARCH),
        "tune": {"algorithm": "tpe", "num_samples": 1000, "time_budget": budget, "seed": seed, "max_failures": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        "resources": {"cpus": 1},
    }
    if study == "cv":
        raw["tune"]["cv_folds"] = 5
    elif study == "random":
        raw["tune"]["algorithm"] = "random"
        raw["scheduler"] = {"type": "none"}
    elif study == "recipe":
        raw["params"] = {**raw["params"], **RECIPE}
        raw["search"] = {"dropout": {"choice": [0.0]}}  # one trial: a grid of one point
        raw["tune"].update(algorithm="grid", num_samples=1)
        raw["scheduler"] = {"type": "none"}
        raw["resources"] = {"cpus": 2}
    return raw


def run_dataset(dataset: str, workdir: Path, budget: str, seed: int, cpus: int) -> None:
    """Every study of one data set, then every arm's export."""
    folder = workdir / dataset
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    timings: dict[str, float] = {}
    for study in dict.fromkeys(STUDY_OF.values()):
        name = f"gen-{dataset}-{study}"
        if (folder / "studies" / name / "medtune_study.json").exists():
            continue
        path = folder / f"{study}.yaml"
        path.write_text(yaml.safe_dump(study_space(dataset, study, budget, seed), sort_keys=False))
        started = time.time()
        with open(folder / f"{study}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "search.cli", "run", str(path), "--storage", str(folder / "studies"),
                            "--num-cpus", str(cpus)], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                           check=True)
        timings[study] = time.time() - started
    for arm in ARMS:
        target = folder / "exports" / arm
        if (target / "metrics.json").exists():
            continue
        with open(folder / f"export-{arm}.log", "w") as log:
            done = subprocess.run([sys.executable, "-m", "search.cli", "best", f"gen-{dataset}-{STUDY_OF[arm]}",
                                   "--storage", str(folder / "studies"), "--export", str(target), "--force",
                                   *EXPORT_FLAGS[arm]], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:  # e.g. top-5 with fewer than 5 finished trials: reported, not fatal
            print(f"{dataset} {arm}: export failed, see {folder / f'export-{arm}.log'}", file=sys.stderr)
    meta = folder / "meta.json"
    previous = json.loads(meta.read_text()) if meta.exists() else {}
    meta.write_text(json.dumps({**previous, "budget": budget, "seed": seed, "load": load_average(),
                                "driver_seconds": {**previous.get("driver_seconds", {}), **timings}}, indent=2))


def arm_row(folder: Path, arm: str) -> dict[str, Any] | None:
    """One arm's numbers from its export's metrics.json (None when its export failed)."""
    path = folder / "exports" / arm / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    decided, best = metrics["test_decision"], metrics["best"]
    estimate = best["value"]
    return {"arm": arm, "test_auc": decided["auc"], "low": decided["auc_low"], "high": decided["auc_high"],
            "estimate": estimate, "gap": abs(estimate - decided["auc"]), "ece": decided["ece_after"],
            "ece_before": decided["ece_before"], "trials": metrics["search"]["trials"],
            "wall": metrics["search"]["wall_seconds"], "members": len(metrics["ensemble"]["members"])}


def _last_error(log: Path) -> str:
    """The error line an export printed."""
    lines = [line for line in (log.read_text().splitlines() if log.exists() else []) if line.startswith("error")]
    return lines[-1][:300] if lines else "no log"


def finished_datasets(workdir: Path) -> list[tuple[str, Path]]:
    """(data set, its folder) for every data set whose studies ran under ``workdir``."""
    return [(dataset, workdir / dataset) for dataset in DATASETS if (workdir / dataset / "meta.json").exists()]


def report(workdir: Path, write_docs: bool) -> None:
    """Tables per data set and the targets, printed (and written to docs/benchmarks.md)."""
    sections, verdicts = [], []
    for dataset, folder in finished_datasets(workdir):
        meta = json.loads((folder / "meta.json").read_text())
        rows = {arm: row for arm in ARMS if (row := arm_row(folder, arm)) is not None}
        failed = {arm: _last_error(folder / f"export-{arm}.log") for arm in ARMS if arm not in rows}
        sections.append(f"**{dataset}** (budget {meta['budget']} per study, seed {meta['seed']}; load "
                        f"{meta['load']})\n\n" + table(
            ["arm", "test AUC (95% CI)", "selection estimate", "\\|estimate - test\\|", "test ECE (before)",
             "trials", "members", "search wall"],
            [[LABELS[a], f"{r['test_auc']:.3f} ({r['low']:.3f}-{r['high']:.3f})", f"{r['estimate']:.3f}",
              f"{r['gap']:.3f}", f"{r['ece']:.3f} ({r['ece_before']:.3f})", r["trials"], r["members"],
              f"{r['wall']:.0f} s" if r["wall"] else "-"] for a, r in rows.items()])
            + "".join(f"\n\n{LABELS[a]}: no model ({why})" for a, why in failed.items()))
        if not {"cv", "single", "recipe"} <= set(rows):
            continue
        gap_ok = rows["cv"]["gap"] <= rows["single"]["gap"] / 2
        ensembles = [rows[a]["test_auc"] for a in ("cv", "top5") if a in rows]
        beats = max(ensembles) > rows["recipe"]["test_auc"]
        verdicts.append([dataset, f"{rows['cv']['gap']:.3f} vs {rows['single']['gap']:.3f}",
                         "met" if gap_ok else "missed", f"{max(ensembles):.3f} vs {rows['recipe']['test_auc']:.3f}",
                         "met" if beats else "missed"])
    if not sections:
        raise SystemExit(f"no finished data set under {workdir}; run first")
    text = "\n\n".join(sections) + "\n\nTargets:\n\n" + table(
        ["data", "gap (b) vs (a)", "(b) <= half of (a)", "best of (b),(c) vs (e) test AUC", "(b) or (c) beats (e)"],
        verdicts)
    print(text)
    if write_docs:
        write_section("generalization", "## Does the handed-back model hold on test? (issue G)\n\n"
                      f"{machine()}. Each study ran alone under its wall-clock budget, one after the other; every "
                      "arm's model was tested once on the official (or seeded, held-out) test split. Selection "
                      "estimate: the validation score the study ranked its best trial by (the fold mean for (b)); "
                      "the ensembles (c) and (b) report their best trial's estimate.\n\n" + text,
                      command=f"python benchmarks/generalization.py report --workdir {workdir} --write-docs")


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    run.add_argument("--budget", default="3m", help="wall-clock budget of each study (default 3m)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--cpus", type=int, default=2)


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-generalization"), _run_options,
                           "run every study and export of the chosen data sets")
    if args.command == "run":
        for dataset in args.datasets:
            run_dataset(dataset, args.workdir, args.budget, args.seed, args.cpus)
    else:
        report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
