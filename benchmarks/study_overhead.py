"""Per-trial overhead and real concurrency of a study, read back from MLflow.

Overhead of a trial = its MLflow child run's wall time (created when Tune starts the
trial, closed when it ends) minus the time spent inside its epochs (``epoch_seconds``,
train + validation). Concurrency = the most child runs open at the same moment.

Usage (after any ``search run``):
    python benchmarks/study_overhead.py --tracking-uri sqlite:///mlflow.db --study quickstart
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mlflow.tracking import MlflowClient


def measure(tracking_uri: str, study_dir: Path) -> dict:
    """Overhead and concurrency numbers of the study recorded in ``study_dir``."""
    record = json.loads((study_dir / "medtune_study.json").read_text())
    client = MlflowClient(tracking_uri)
    children = client.search_runs([record["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{record['parent_run_id']}'")
    overheads, inside, events = [], [], []
    for run in children:
        if run.info.end_time is None or run.data.tags.get("medtune.state") == "errored":
            continue
        wall = (run.info.end_time - run.info.start_time) / 1000
        epochs = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds"))
        overheads.append(wall - epochs)
        inside.append(epochs)
        events += [(run.info.start_time, 1), (run.info.end_time, -1)]
    open_runs, peak = 0, 0
    for _, delta in sorted(events):
        open_runs += delta
        peak = max(peak, open_runs)
    study_wall = (max(t for t, d in events if d < 0) - min(t for t, d in events if d > 0)) / 1000
    return {
        "trials": len(overheads),
        "overhead_s_median": statistics.median(overheads),
        "overhead_s_mean": statistics.fmean(overheads),
        "epoch_time_s_mean": statistics.fmean(inside),
        "peak_concurrent_trials": peak,
        "mean_concurrent_trials": sum(inside) / study_wall,
        "study_wall_s": study_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--storage", default="runs/studies")
    parser.add_argument("--study", required=True)
    args = parser.parse_args()
    result = measure(args.tracking_uri, Path(args.storage) / args.study)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
