"""Does test-time augmentation help the handed-back model? The same exports with 1, 2 and 8 views.

Reuses the studies of ``benchmarks/generalization.py`` (run that first, same workdir):
for each data set, the single-split study's best checkpoint (``--ensemble none``) and the
cross-validated study's fold ensemble (``--ensemble folds``) are exported again with
``--tta none``, ``flip`` and ``dihedral`` and tested on the test split. Per export: test AUC with its
95% CI (DeLong), test ECE after temperature scaling (fitted under the same views), and
the export's wall time (which scores validation and test once per view).

Usage (under the CPU lock):
    python benchmarks/tta.py run --workdir /tmp/medtune-generalization
    python benchmarks/tta.py report --workdir /tmp/medtune-generalization --write-docs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, run_report_args, table, write_section  # noqa: E402
from generalization import DATASETS, EXPORT_FLAGS, LABELS, STUDY_OF, finished_datasets  # noqa: E402

ARMS = ("single", "cv")
VIEWS = ("none", "flip", "dihedral")


def export_folder(folder: Path, arm: str, tta: str) -> Path:
    """Where one arm's export with ``tta`` lies."""
    return folder / "exports" / f"tta-{arm}-{tta}"


def run_dataset(folder: Path) -> None:
    """Export both arms of one data set under every view set not exported yet."""
    dataset = folder.name
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    timings_path = folder / "tta_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for arm in ARMS:
        for tta in VIEWS:
            target = export_folder(folder, arm, tta)
            if (target / "metrics.json").exists() and f"{arm}-{tta}" in timings:
                continue
            started = time.time()
            with open(folder / f"export-tta-{arm}-{tta}.log", "w") as log:
                done = subprocess.run([sys.executable, "-m", "search.cli", "best", f"gen-{dataset}-{STUDY_OF[arm]}",
                                       "--storage", str(folder / "studies"), "--export", str(target), "--force",
                                       *EXPORT_FLAGS[arm], "--tta", tta], env=env, cwd=folder, stdout=log,
                                      stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"{dataset} {arm} --tta {tta}: export failed, see {log.name}", file=sys.stderr)
                continue
            timings[f"{arm}-{tta}"] = time.time() - started
            timings_path.write_text(json.dumps(timings, indent=2))


def row(folder: Path, arm: str, tta: str, timings: dict[str, float]) -> list[Any] | None:
    """One export's table row, None when it is missing."""
    path = export_folder(folder, arm, tta) / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    decided = metrics["test_decision"]
    seconds = timings.get(f"{arm}-{tta}")
    return [LABELS[arm], tta, f"{decided['auc']:.3f} ({decided['auc_low']:.3f}-{decided['auc_high']:.3f})",
            f"{decided['ece_after']:.3f}", len(metrics["ensemble"]["members"]),
            "-" if seconds is None else f"{seconds:.0f} s"]


def report(workdir: Path, write_docs: bool) -> None:
    """The table per data set, printed (and written to docs/benchmarks.md)."""
    sections = []
    for dataset in DATASETS:
        folder = workdir / dataset
        timings_path = folder / "tta_seconds.json"
        if not timings_path.exists():
            continue
        timings = json.loads(timings_path.read_text())
        rows = [r for arm in ARMS for tta in VIEWS if (r := row(folder, arm, tta, timings)) is not None]
        sections.append(f"**{dataset}**\n\n" + table(
            ["arm", "--tta", "test AUC (95% CI)", "test ECE", "members", "export wall"], rows))
    if not sections:
        raise SystemExit(f"no data set under {workdir} has TTA exports; run first")
    text = "\n\n".join(sections)
    print(text)
    if write_docs:
        write_section("tta", "## Test-time augmentation (issue G.5)\n\n"
                      f"{machine()}. The best models of the generalization benchmark's studies (above), exported "
                      "again with the views of `--tta`; each export fits its temperature and threshold on the "
                      "held-out images scored under the same views. Export wall: the whole `search best --export` "
                      "(data load, held-out and test scoring under every view, ONNX/TorchScript parity check)."
                      "\n\n" + text,
                      command=f"python benchmarks/tta.py report --workdir {workdir} --write-docs")


def main() -> None:
    args = run_report_args(__doc__, Path("/tmp/medtune-generalization"), lambda _: None,
                           "export every arm of every finished data set under each view set")
    if args.command == "run":
        for _, folder in finished_datasets(args.workdir):
            run_dataset(folder)
    else:
        report(args.workdir, args.write_docs)


if __name__ == "__main__":
    main()
