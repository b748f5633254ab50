"""How soon does each search hand back a model as good on test as random search's final one?

Reads the studies of ``benchmarks/generalization.py`` (run that first, same workdir). For
the cross-validated TPE + ASHA study (b) and the random search without early stopping
(d), it walks the trials in the order they ended and, each time the best trial by the
study's validation metric changes, scores that best-so-far model on the test split: (b)
the soft vote of the trial's fold models, (d) the trial's best checkpoint. This is a
benchmark-only use of the test split, to draw each search's test AUC over its wall time;
``search`` itself never looks at test before an export.

Target (issue G): (b) reaches (d)'s final test AUC in at most half the time (d) took to
find its final model.

Usage (under the CPU lock):
    python benchmarks/reach.py report --workdir /tmp/medtune-generalization --write-docs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_report_args, table, write_section  # noqa: E402
from generalization import finished_datasets  # noqa: E402

STUDIES = {"cv": "(b) TPE+ASHA, 5-fold CV, fold ensemble", "random": "(d) random search, no ASHA"}


def best_so_far(folder: Path, dataset: str, study_kind: str) -> list[tuple[float, float, Any]]:
    """(seconds since the study started, validation score, trial) each time the best trial changes."""
    from search.records.studies import finished_trials, find_study

    study = find_study(f"gen-{dataset}-{study_kind}", str(folder / "studies"))
    client = study.client()
    started = client.get_run(study.parent_run_id).info.start_time
    trials = finished_trials(client, study)
    ends = {t.run_id: client.get_run(t.run_id).info.end_time for t in trials}
    ended = sorted(((ends[t.run_id] - started) / 1000.0, t) for t in trials if ends[t.run_id])
    points, best = [], None
    sign = 1.0 if trials[0].mode == "max" else -1.0
    for seconds, trial in ended:
        if best is None or sign * trial.value > sign * best:
            best = trial.value
            points.append((seconds, trial.value, trial))
    return points


def test_auc(folder: Path, dataset: str, study_kind: str, trial: Any, cache: dict) -> float:
    """The trial's model on the test split: its fold models' soft vote (CV) or its best checkpoint."""
    from search.evaluation.calibration import soft_vote
    from search.model.export import study_data
    from search.model.members import EnsembleChoice, final_model, view_probabilities
    from search.records.studies import find_study
    from trainables.metrics import scores
    from trainables.trial import input_spec_for

    study = find_study(f"gen-{dataset}-{study_kind}", str(folder / "studies"))
    if study_kind not in cache:
        cache[study_kind] = study_data(study.client(), study, lambda _: None)[2]
    data = cache[study_kind]
    kind = EnsembleChoice("folds" if study_kind == "cv" else "none")
    final = final_model(study, [trial], data, refit=False, ensemble=kind, log=lambda _: None)
    spec = input_spec_for(final.config, data, final.network)
    probs = view_probabilities([m.network for m in final.members], spec, data, data.splits["test"], "none",
                               final.config.eval_batch("cpu"))
    return scores(data.labels[data.splits["test"]], soft_vote(probs), "")["auc"]


def report(workdir: Path, write_docs: bool) -> None:
    """Per data set: each search's best-so-far test AUC over time, and the target."""
    sections, verdicts = [], []
    for dataset, folder in finished_datasets(workdir):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        cache: dict = {}
        curves = {kind: [(s, v, test_auc(folder, dataset, kind, t, cache))
                         for s, v, t in best_so_far(folder, dataset, kind)] for kind in STUDIES}
        rows = [[STUDIES[kind], f"{s:.0f} s", f"{v:.3f}", f"{auc:.3f}"]
                for kind in STUDIES for s, v, auc in curves[kind]]
        sections.append(f"**{dataset}**\n\n" + table(["search", "new best at", "its validation score",
                                                       "its test AUC"], rows))
        d_time, _, d_final = curves["random"][-1]
        reached = next((s for s, _, auc in curves["cv"] if auc >= d_final), None)
        verdicts.append([dataset, f"{d_final:.3f} at {d_time:.0f} s",
                         "never" if reached is None else f"{reached:.0f} s",
                         "met" if reached is not None and reached <= d_time / 2 else "missed"])
    if not sections:
        raise SystemExit(f"no finished data set under {workdir}; run benchmarks/generalization.py first")
    text = "\n\n".join(sections) + "\n\nTarget:\n\n" + table(
        ["data", "(d) final test AUC, found at", "(b) first reaches it at", "(b) in <= half of (d)'s time"], verdicts)
    print(text)
    if write_docs:
        write_section("reach", "## Time to a model as good as random search's (issue G)\n\n"
                      f"{machine()}. From the generalization studies above: each time a search's best trial by "
                      "validation changed, that model was scored on the test split (for this benchmark only). "
                      "Times are seconds since the study started, when the trial ended.\n\n" + text,
                      command=f"python benchmarks/reach.py report --workdir {workdir} --write-docs")


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-generalization"), None)
    report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
