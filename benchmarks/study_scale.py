"""Does the driver's cost per trial stay flat as a study grows? N tiny trials, measured in windows.

A study of N tiny trials (PneumoniaMNIST, ``train_fraction: 0.02``, one epoch of ``cnn3``,
TPE over lr and dropout, no scheduler, one CPU per trial) runs in this process with timers
around the driver's callbacks (Optuna, MLflow, the progress line, the scheduler, Tune's
experiment snapshots), as ``study_overhead.py`` does, but every timed call is kept with
the number of trials finished when it ran. The report splits the study into windows of
trials (by finishing order) and gives per window:

- wall seconds per trial (time from the window's first to its last trial end / trials);
- driver CPU seconds per trial (``time.process_time`` of this process: Tune's loop,
  Optuna, MLflow client, snapshots; the trials run in other processes);
- each timed part's seconds per trial, to show which one grows;
- the driver's peak resident memory so far.

The first window's numbers are the baseline of the same run: the target of issue M is
wall per trial of the last window at most 1.2x that of trials 100-200.

Usage:
    python benchmarks/study_scale.py run --trials 2000 --workdir /tmp/medtune-scale
    python benchmarks/study_scale.py report --workdir /tmp/medtune-scale --write-docs
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, run_report_args, table, time_methods, write_section

SPACE: dict[str, Any] = {
    "name": "scale",
    "description": "Driver cost as a study grows (benchmarks/study_scale.py).",
    "data": {"source": "medmnist/pneumoniamnist.npz"},
    "params": {"backbone": "cnn3", "epochs": 1, "batch_size": 64, "train_fraction": 0.02, "aug_flip": False},
    "search": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "dropout": {"uniform": [0.0, 0.5]}},
    "tune": {"algorithm": "tpe", "metric": "val_auc", "seed": 0},
    "scheduler": {"type": "none"},
    "resources": {"cpus": 1},
}


class Recorder:
    """Timed driver calls, each with the count of trials finished when it ran."""

    def __init__(self) -> None:
        self.finished = 0
        self.calls: list[tuple[int, str, float]] = []
        self.ends: list[tuple[float, float, int]] = []  # (wall, driver cpu, peak rss KiB) at each trial end

    def wrap(self, cls: type, names: list[str], bucket: str) -> None:
        """Time ``cls.name`` for each name into ``bucket``."""
        time_methods(cls, names, lambda seconds: self.calls.append((self.finished, bucket, seconds)))

    def trial_ended(self) -> None:
        self.finished += 1
        self.ends.append((time.time(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def run(trials: int, workdir: Path, cpus: int) -> None:
    """The study, in this process, with every driver part timed; writes ``scale.json``."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from search.study import StudyOptions, run_study
    from search.study.mlflow_logger import MlflowTrialLogger
    from search.study.progress import ProgressLine
    from search.study.schedulers import PersistentASHA, SnapshotFIFO

    recorder = Recorder()
    recorder.wrap(OptunaSearch, ["suggest"], "Optuna suggest")
    recorder.wrap(OptunaSearch, ["on_trial_result", "on_trial_complete"], "Optuna tell")
    recorder.wrap(MlflowTrialLogger, ["on_trial_result", "on_checkpoint", "on_trial_complete", "on_trial_error",
                                      "on_step_begin"], "MLflow logger")
    recorder.wrap(ProgressLine, ["on_step_end", "on_trial_complete"], "progress line")
    for scheduler in (PersistentASHA, SnapshotFIFO):
        recorder.wrap(scheduler, ["on_trial_add", "on_trial_result", "on_trial_complete"], "scheduler")
    recorder.wrap(TuneController, ["checkpoint"], "Tune experiment snapshots")
    complete = OptunaSearch.on_trial_complete

    def on_trial_complete(self, *args, **kwargs):
        try:
            return complete(self, *args, **kwargs)
        finally:
            recorder.trial_ended()

    OptunaSearch.on_trial_complete = on_trial_complete
    workdir.mkdir(parents=True, exist_ok=True)
    space = workdir / "scale.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "tune": {**SPACE["tune"], "num_samples": trials}}, sort_keys=False))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    load_before, started = load_average(), time.time()
    run_study(space, StudyOptions(storage=str(workdir / "studies"), name="scale", num_cpus=cpus))
    import ray

    ray.shutdown()
    (workdir / "scale.json").write_text(json.dumps({
        "trials": trials, "cpus": cpus, "wall_s": time.time() - started, "load": [load_before, load_average()],
        "ends": recorder.ends, "calls": recorder.calls}))


def windows(result: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Per window of ``size`` finished trials: wall and driver CPU per trial, each part's seconds per trial."""
    ends, out = result["ends"], []
    parts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for finished, bucket, seconds in result["calls"]:
        parts[finished // size][bucket] += seconds
    for index, first in enumerate(range(0, len(ends) - 1, size)):
        last = min(first + size, len(ends) - 1)
        count = last - first
        if count <= 0:
            break
        (wall0, cpu0, _), (wall1, cpu1, rss) = ends[first], ends[last]
        out.append({"trials": f"{first + 1}-{last + 1}", "wall_per_trial": (wall1 - wall0) / count,
                    "cpu_per_trial": (cpu1 - cpu0) / count, "rss_mib": rss / 1024,
                    "parts": {k: v / count for k, v in parts[index].items()}})
    return out


def report(workdir: Path, write_docs: bool, size: int = 100) -> None:
    """The windows as a table; the wall-time ratio of the last window to trials 100-200 (or the first)."""
    path = workdir / "scale.json"
    if not path.exists():
        raise SystemExit(f"no {path}; run first")
    result = json.loads(path.read_text())
    rows = windows(result, size)
    buckets = sorted({b for row in rows for b in row["parts"]})
    body = table(["trials", "wall s / trial", "driver CPU s / trial", *[f"{b} s / trial" for b in buckets],
                  "driver peak RSS MiB"],
                 [[r["trials"], f"{r['wall_per_trial']:.3f}", f"{r['cpu_per_trial']:.3f}",
                   *[f"{r['parts'].get(b, 0.0):.4f}" for b in buckets], f"{r['rss_mib']:.0f}"] for r in rows])
    baseline = rows[1] if len(rows) > 2 else rows[0]
    ratio = rows[-1]["wall_per_trial"] / baseline["wall_per_trial"]
    growth = (rows[-1]["rss_mib"] - rows[0]["rss_mib"]) / max(len(result["ends"]) / 1000, 1e-9)
    summary = (f"{len(result['ends'])} trials in {result['wall_s']:.0f} s on {result['cpus']} slots; wall per trial of "
               f"trials {rows[-1]['trials']} / trials {baseline['trials']}: **{ratio:.2f}x** (target <= 1.2x); driver "
               f"peak memory grew {growth:.0f} MiB per 1,000 trials; load before / after "
               f"{result['load'][0]} / {result['load'][1]}.")
    print(body + "\n\n" + summary)
    if write_docs:
        write_section("study-scale", "## Driver cost as a study grows (issue M)\n\n"
                      f"{machine()}. One study of tiny trials (PneumoniaMNIST, train_fraction 0.02, one epoch of cnn3, "
                      f"TPE over lr and dropout, no scheduler), windows of {size} trials by finishing order.\n\n"
                      + body + "\n\n" + summary,
                      command=f"python benchmarks/study_scale.py report --workdir {workdir} --write-docs")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-scale"), _run_options, "the study, with driver timers")
    if args.command == "run":
        run(args.trials, args.workdir, args.cpus)
    else:
        report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
