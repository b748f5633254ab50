"""Per-trial overhead and real concurrency of a study, from Tune's own trial records.

For every trial, Tune's ``result.json`` gives the time since the trial started
(``time_total_s``) and its end ``timestamp``; the trial's ``epoch_seconds`` add up the
time spent inside train + validation epochs. From those:

- in-trial overhead = ``time_total_s`` - sum of ``epoch_seconds`` (model build, data
  fetch, checkpoints, reports);
- scheduling gap = slot time not covered by any trial: wall x slots - sum ``time_total_s``;
- efficiency = sum of epoch time / (wall x slots), the target of issue E.

Usage (after any ``search run``):
    python benchmarks/study_overhead.py runs/studies/quickstart --slots 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def trial_records(study_dir: Path) -> list[dict]:
    """Start, end, total and in-epoch seconds of every trial that reported."""
    records = []
    for result_file in sorted(study_dir.glob("train_*/result.json")):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not results:
            continue
        last = results[-1]
        records.append({
            "trial_id": last["trial_id"],
            "start": last["timestamp"] - last["time_total_s"],
            "end": last["timestamp"],
            "total_s": last["time_total_s"],
            "epochs_s": sum(r.get("epoch_seconds", 0.0) for r in results),
        })
    return records


def measure(study_dir: Path, slots: int) -> dict:
    """Overhead, concurrency and efficiency numbers of one study directory."""
    records = trial_records(study_dir)
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    in_epochs = sum(r["epochs_s"] for r in records)
    in_trials = sum(r["total_s"] for r in records)
    return {
        "trials": len(records),
        "wall_s": round(wall, 2),
        "peak_concurrent_trials": peak,
        "mean_concurrent_trials": round(in_trials / wall, 2),
        "in_trial_overhead_s_per_trial": round(statistics.fmean(r["total_s"] - r["epochs_s"] for r in records), 2),
        "scheduling_gap_s_per_trial": round((wall * slots - in_trials) / len(records), 2),
        "efficiency": round(in_epochs / (wall * slots), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="e.g. runs/studies/quickstart")
    parser.add_argument("--slots", type=int, default=2, help="trials that fit at once (CPUs / cpus per trial)")
    args = parser.parse_args()
    print(json.dumps(measure(args.study_dir, args.slots), indent=2))


if __name__ == "__main__":
    main()
