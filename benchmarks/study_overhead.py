"""Per-trial overhead and real concurrency of a study, from Tune's own trial records.

For every trial, Tune's ``result.json`` gives the time since the trial started
(``time_total_s``) and its end ``timestamp``; the trial's ``epoch_seconds`` add up the
time spent inside train + validation epochs, ``setup_seconds`` its model build and
``checkpoint_seconds`` its checkpoint writing. From those:

- in-trial overhead = ``time_total_s`` - epochs: setup, checkpoints, and the rest (Tune's
  report and checkpoint persistence, the dataset fetch from the object store);
- scheduling gap = slot time not covered by any trial: wall x slots - sum ``time_total_s``
  (the driver's Optuna, MLflow and Tune bookkeeping between a trial's end and the next start);
- efficiency = sum of epoch time / (wall x slots), the target of issue E (>= 0.85).

``--run`` runs the benchmark study (``benchmarks/spaces/overhead.yaml``: 16 short ``cnn3``
trials) in this process with timers around the driver's callbacks (Optuna, MLflow, Tune's
experiment snapshots), then measures it.

Usage:
    python benchmarks/study_overhead.py --run --write-docs             # the benchmark
    python benchmarks/study_overhead.py runs/studies/quickstart --slots 2   # any finished study
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, table, time_methods, write_section  # noqa: E402

SPACE = Path(__file__).resolve().parent / "spaces" / "overhead.yaml"


def trial_records(study_dir: Path) -> list[dict]:
    """Start, end, total, in-epoch, setup and checkpoint seconds of every trial that reported."""
    records = []
    for result_file in sorted(Path(study_dir).glob("train_*/result.json")):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not results:
            continue
        last = results[-1]
        end = last.get("reported_at", last["timestamp"])  # Tune's timestamp is whole seconds
        records.append({
            "trial_id": last["trial_id"],
            "start": end - last["time_total_s"],
            "end": end,
            "total_s": last["time_total_s"],
            "epochs_s": sum(r.get("epoch_seconds", 0.0) for r in results),
            "setup_s": sum(r.get("setup_seconds", 0.0) for r in results),
            "checkpoint_s": sum(r.get("checkpoint_seconds", 0.0) for r in results),
        })
    return records


def measure(study_dir: Path, slots: int) -> dict:
    """Overhead, concurrency and efficiency numbers of one study directory."""
    records = trial_records(study_dir)
    if not records:
        raise SystemExit(f"no trial results (train_*/result.json) under {study_dir}")
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    first, last = min(r["start"] for r in records), max(r["end"] for r in records)
    wall = last - first
    n = len(records)
    in_epochs = sum(r["epochs_s"] for r in records)
    in_trials = sum(r["total_s"] for r in records)
    setup = sum(r["setup_s"] for r in records)
    checkpoints = sum(r["checkpoint_s"] for r in records)
    return {
        "trials": n,
        "first_trial_start": first,
        "last_trial_end": last,
        "wall_s": round(wall, 2),
        "peak_concurrent_trials": peak,
        "mean_concurrent_trials": round(in_trials / wall, 2),
        "epoch_s_per_trial": round(in_epochs / n, 2),
        "overhead_s_per_trial": round((wall * slots - in_epochs) / n, 2),
        "in_trial_overhead_s_per_trial": round(statistics.fmean(r["total_s"] - r["epochs_s"] for r in records), 2),
        "setup_s_per_trial": round(setup / n, 3),
        "checkpoint_s_per_trial": round(checkpoints / n, 3),
        "report_and_fetch_s_per_trial": round((in_trials - in_epochs - setup - checkpoints) / n, 3),
        "scheduling_gap_s_per_trial": round((wall * slots - in_trials) / n, 2),
        "efficiency": round(in_epochs / (wall * slots), 3),
    }


# ---------------------------------------------------------------- in-process run with driver timers


def _time_methods(cls: type, names: list[str], bucket: str, totals: dict, counts: dict) -> None:
    """Wrap ``cls.name`` (for each name) so that its wall time adds up in ``totals[bucket]``."""
    def record(seconds: float) -> None:
        totals[bucket] += seconds
        counts[bucket] += 1

    time_methods(cls, names, record)


def run_benchmark(space: Path, trials: int | None, workdir: Path) -> tuple[dict, dict, dict]:
    """Run the study in this process; returns (driver timer totals, counts, fit window)."""
    from ray.tune import Tuner
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from search.study import StudyOptions, run_study
    from search.study.mlflow_logger import MlflowTrialLogger
    from search.study.progress import ProgressLine
    from search.study.schedulers import PersistentASHA, SnapshotFIFO

    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    _time_methods(OptunaSearch, ["suggest", "on_trial_result", "on_trial_complete"], "Optuna (suggest, tell)", totals, counts)
    for method in ["on_trial_result", "on_checkpoint", "on_trial_complete", "on_trial_error", "on_step_begin",
                   "on_experiment_end", "_log_best_plots"]:
        where = "background thread" if method == "_log_best_plots" else "event loop"
        _time_methods(MlflowTrialLogger, [method], f"MLflow {method} ({where})", totals, counts)
    _time_methods(ProgressLine, ["on_step_end", "on_trial_complete"], "progress line", totals, counts)
    for scheduler in (PersistentASHA, SnapshotFIFO):
        _time_methods(scheduler, ["on_trial_add", "on_trial_result", "on_trial_complete"], "scheduler", totals, counts)
    _time_methods(TuneController, ["checkpoint"], "Tune experiment snapshots", totals, counts)
    window: dict[str, float] = {}
    original_fit = Tuner.fit

    def fit(self):
        window["fit_start"] = time.time()
        try:
            return original_fit(self)
        finally:
            window["fit_end"] = time.time()

    Tuner.fit = fit
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    started = time.time()
    run_study(space, StudyOptions(storage=str(workdir / "studies"), num_samples=trials, name="overhead"))
    window["run_study_s"] = time.time() - started
    import ray

    ray.shutdown()
    return dict(totals), dict(counts), window


def markdown(numbers: dict, driver: dict, counts: dict, window: dict, slots: int, loads: tuple[str, str]) -> str:
    n = numbers["trials"]
    met = "met" if numbers["efficiency"] >= 0.85 else "NOT met"
    start_gap = numbers["first_trial_start"] - window["fit_start"]
    end_gap = window["fit_end"] - numbers["last_trial_end"]
    fit_wall = window["fit_end"] - window["fit_start"]
    fit_eff = numbers["epoch_s_per_trial"] * n / (fit_wall * slots)
    rows = [
        ["trials / slots", f"{n} / {slots}"],
        ["wall, first trial start to last trial end", f"{numbers['wall_s']} s"],
        ["trials running at once (peak / mean)", f"{numbers['peak_concurrent_trials']} / {numbers['mean_concurrent_trials']}"],
        ["time in train + validation epochs per trial", f"{numbers['epoch_s_per_trial']} s"],
        ["**efficiency** (epoch time / (wall x slots))", f"**{numbers['efficiency']}** ({met}, target >= 0.85)"],
        ["overhead per trial, all of it ((wall x slots - epochs) / trials)", f"{numbers['overhead_s_per_trial']} s"],
        ["  in the trial: model build (setup_seconds)", f"{numbers['setup_s_per_trial']} s"],
        ["  in the trial: checkpoint + validation scores written (checkpoint_seconds)", f"{numbers['checkpoint_s_per_trial']} s"],
        ["  in the trial: Tune report + checkpoint persisted + dataset fetch (rest)", f"{numbers['report_and_fetch_s_per_trial']} s"],
        ["  between trials: scheduling gap (driver loop, actor reuse)", f"{numbers['scheduling_gap_s_per_trial']} s"],
    ]
    for bucket, seconds in sorted(driver.items(), key=lambda item: -item[1]):
        rows.append([f"    driver: {bucket} ({counts[bucket]} calls)", f"{seconds / n:.3f} s per trial ({seconds:.2f} s total)"])
    rows += [
        ["before the first trial: Ray actors start, import torch, fetch the dataset", f"{start_gap:.1f} s once"],
        ["after the last trial: Tune shutdown", f"{end_gap:.1f} s once"],
        ["efficiency over Tuner.fit's whole wall (incl. those)", f"{fit_eff:.3f} ({fit_wall:.1f} s)"],
        ["whole `search run` (data, MLflow set-up, Ray start, fit, leaderboard)", f"{window['run_study_s']:.1f} s"],
    ]
    return f"""## Study orchestration: efficiency and per-trial overhead (issue E.2)

Space `benchmarks/spaces/overhead.yaml`: {n} trials of `cnn3` on PneumoniaMNIST (30% training subset,
3 epochs of about a second each, TPE over lr and dropout, no early stopping, `resources.cpus: 1`, so
{slots} trial slots on {slots} CPUs; MLflow on SQLite). Short trials on purpose: every second of
overhead shows.

{table(["", "value"], rows)}

Driver time in Tune's event loop delays trial starts and reports: it is part of the scheduling
gap, not extra to it (the ROC/confusion plots of each trial are drawn on a background thread,
listed for completeness; `on_experiment_end` waits for them). The model build of the first trial
in each (reused) trial worker includes torch's first-use imports (`torch._dynamo`, pulled in by
the first optimizer, about 2 s); a scratch-CNN worker no longer imports timm at start, which
used to load them before any trial. Machine: {machine()}. Load average before / after: {loads[0]} / {loads[1]}."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, nargs="?", help="a finished study, e.g. runs/studies/quickstart")
    parser.add_argument("--slots", type=int, default=None, help="trials that fit at once (default: CPUs / 1)")
    parser.add_argument("--run", action="store_true", help="run benchmarks/spaces/overhead.yaml first, with driver timers")
    parser.add_argument("--space", type=Path, default=SPACE)
    parser.add_argument("--trials", type=int, default=None, help="override the space's num_samples")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md (with --run)")
    args = parser.parse_args()
    slots = args.slots or os.cpu_count() or 1
    if not args.run:
        if args.study_dir is None:
            parser.error("give a study directory, or --run")
        print(json.dumps(measure(args.study_dir, slots), indent=2))
        return
    os.environ.setdefault("MEDTUNE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="medtune-overhead-") as tmp:
        driver, counts, window = run_benchmark(args.space, args.trials, Path(tmp))
        numbers = measure(Path(tmp) / "studies" / "overhead", slots)
    loads.append(load_average())
    report = {**numbers, "driver_s": driver, "driver_calls": counts, **window}
    print(json.dumps(report, indent=2))
    if args.write_docs:
        write_section("study-overhead", markdown(numbers, driver, counts, window, slots, tuple(loads)))


if __name__ == "__main__":
    main()
