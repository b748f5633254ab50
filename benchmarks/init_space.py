"""Does ``search init``'s space do as well as the hand-written one? Same data, same budget, test AUC side by side.

For each shared data set: time ``search init DATA --budget B`` to a validated space, run
a study from it, and run the hand-written space of ``spaces/`` for the same data with
``--time-budget B``; export each study's final model with ``search best --export`` (its
default ensemble: the fold models when the study cross-validated) and test it once.
Each command runs under the CPU lock, one after the other.

Hand-written spaces: PneumoniaMNIST ``quickstart.yaml``; BreastMNIST has none in
``spaces/``, so ``quickstart.yaml`` with its source pointed at BreastMNIST; lung CT
``lung_ct.yaml``; PCam ``pcam_offline.yaml``; Kermany ``chest_xray.yaml`` (its ResNet,
DenseNet, VGG and Inception trials need the timm hub: on a machine without one they
fail at their start and the study goes on with the others).

Usage:
    python benchmarks/init_space.py run --datasets pneumonia breast --budget 5m --workdir /tmp/medtune-init
    python benchmarks/init_space.py report --workdir /tmp/medtune-init --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_average, machine, run_report_args, table, write_section

DATASETS: dict[str, tuple[str, str]] = {  # name -> (source under $MEDTUNE_DATA, hand-written space)
    "pneumonia": ("medmnist/pneumoniamnist.npz", "quickstart.yaml"),
    "breast": ("medmnist/breastmnist.npz", "quickstart.yaml"),
    "lung_ct": ("lung_ct/iqothnccd_1097_256px.zip", "lung_ct.yaml"),
    "pcam": ("pcam/pcam_26k_96px.zip", "pcam_offline.yaml"),
    "kermany": ("chest_xray/kermany_5840_224px.zip", "chest_xray.yaml"),
}
ARMS = ("init", "hand")
LOCK = "/tmp/medtune-cpu.lock"


def hand_space(dataset: str, folder: Path) -> Path:
    """The hand-written space for ``dataset``, written to ``folder`` with its name (and source) set."""
    source, space = DATASETS[dataset]
    raw = yaml.safe_load((ROOT / "spaces" / space).read_text())
    raw["name"] = f"hand-{dataset}"
    raw["data"] = {**raw["data"], "source": source}
    raw.setdefault("tune", {})["num_samples"] = 1000  # the budget ends both studies
    path = folder / "hand.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _search(args: list[str], folder: Path, log: str) -> float:
    """Run ``search ARGS`` under the CPU lock with the data set's MLflow store; return its wall seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    started = time.time()
    with open(folder / log, "w") as out:
        done = subprocess.run(["flock", LOCK, sys.executable, "-m", "search.cli", *args], env=env, cwd=folder,
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        print(f"search {' '.join(args[:2])}: exit {done.returncode}, see {folder / log}", file=sys.stderr)
    return time.time() - started


def run_dataset(dataset: str, workdir: Path, budget: str, cpus: int) -> None:
    """init (timed), both studies, both exports; skips what a previous run finished."""
    folder = workdir / dataset
    folder.mkdir(parents=True, exist_ok=True)
    storage = str(folder / "studies")
    meta_path = folder / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    init_yaml = folder / "init.yaml"
    if not init_yaml.exists():
        _search(["init", DATASETS[dataset][0], "--budget", budget, "--out", str(init_yaml),
                                        "--name", f"init-{dataset}"], folder, "init.log")
    spaces = {"init": init_yaml, "hand": hand_space(dataset, folder)}
    for arm in ARMS:
        name = f"{arm}-{dataset}"
        if not (folder / "studies" / name / "medtune_study.json").exists():
            meta[f"{arm}_study_seconds"] = _search(["run", str(spaces[arm]), "--name", name, "--storage", storage,
                                                    "--time-budget", budget, "--num-cpus", str(cpus)], folder,
                                                   f"study-{arm}.log")
        if not (folder / "exports" / arm / "metrics.json").exists():
            _search(["best", name, "--storage", storage, "--export", str(folder / "exports" / arm), "--force"],
                    folder, f"export-{arm}.log")
    meta.update(budget=budget, load=load_average())
    meta_path.write_text(json.dumps(meta, indent=2))


def arm_row(folder: Path, arm: str) -> dict[str, Any] | None:
    """Test AUC and CI, trials, folds and members of one arm's export (None when it has none)."""
    path = folder / "exports" / arm / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    decided = metrics["test_decision"]
    return {"auc": decided["auc"], "low": decided["auc_low"], "high": decided["auc_high"],
            "trials": metrics["search"]["trials"], "members": len(metrics["ensemble"]["members"]),
            "estimate": metrics["best"]["value"]}


def init_choices(folder: Path) -> str:
    """The values ``search init`` chose that differ most between data sets, from its log."""
    log = (folder / "init.log").read_text() if (folder / "init.log").exists() else ""
    keys = ("data.train_fraction", "params.epochs", "params.input_size", "tune.cv_folds", "search.backbone")
    found = []
    for key in keys:
        match = re.search(rf"^{re.escape(key)}: (.*?)    #", log, re.MULTILINE)
        if match:
            found.append(f"{key.split('.')[-1]} {match.group(1)}")
    return "; ".join(found) or "-"


def report(workdir: Path, write_docs: bool) -> None:
    """One row per data set: init's time, both arms' test AUC with CI, and whether init is within the CI."""
    rows, choices = [], []
    for dataset in DATASETS:
        folder = workdir / dataset
        if not (folder / "meta.json").exists():
            continue
        arms = {arm: arm_row(folder, arm) for arm in ARMS}

        def shown(row: dict[str, Any] | None) -> str:
            return f"{row['auc']:.3f} ({row['low']:.3f}-{row['high']:.3f}), {row['trials']} trials" if row else \
                "no model"

        init, hand = arms["init"], arms["hand"]
        verdict = "-" if not (init and hand) else ("better" if init["auc"] > hand["auc"] else
                                                   "within CI" if init["auc"] >= hand["low"] else "worse")
        log = (folder / "init.log").read_text() if (folder / "init.log").exists() else ""
        took = re.search(r"^wrote .* in (\d+) s", log, re.MULTILINE)  # init's own clock: not the wait for the lock
        rows.append([dataset, f"{took.group(1)} s" if took else "failed", shown(init), shown(hand), verdict])
        choices.append([dataset, init_choices(folder)])
    if not rows:
        raise SystemExit(f"no data set under {workdir}; run first")
    budget = json.loads(next(p for p in workdir.glob("*/meta.json")).read_text())["budget"]
    text = (table(["data", "`search init` to a validated space", "init space, test AUC (95% CI)",
                   "hand-written space, test AUC (95% CI)", "init vs hand"], rows)
            + "\n\nWhat init chose:\n\n" + table(["data", "values"], choices))
    print(text)
    if write_docs:
        write_section("init-space", "## `search init` vs the hand-written spaces (issue J)\n\n"
                      f"{machine()}. Budget {budget} per study, one study at a time; each export tested once on "
                      "the test split. \"within CI\": the init space's test AUC is at or above the lower end of "
                      "the hand-written space's 95% CI (DeLong).\n\n" + text,
                      command=f"python benchmarks/init_space.py report --workdir {workdir} --write-docs")


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    run.add_argument("--budget", default="15m", help="wall-clock budget of init and of each study (default 15m)")
    run.add_argument("--cpus", type=int, default=2)


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-init"), _run_options, "init, both studies and exports")
    if args.command == "run":
        for dataset in args.datasets:
            run_dataset(dataset, args.workdir, args.budget, args.cpus)
    else:
        report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
