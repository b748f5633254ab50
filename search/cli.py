"""The ``search`` command line.

- ``search trial SPACE.yaml [--set key=value ...]`` runs one trial in-process with the
  space's default values, one line of metrics per epoch: the way to check a space before
  launching a study.
- ``search run SPACE.yaml`` runs a study on Ray Tune (locally, or on a cluster with
  ``--address``), logging every trial to MLflow; ``--resume`` continues one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from search.space import SpaceError, load_space, parse_overrides


def _trial(args: argparse.Namespace) -> int:
    from trainables.data import DataError, load_dataset
    from trainables.models import ModelError
    from trainables.trial import NonFiniteLossError, TrialSetupError, run_trial

    space = load_space(args.space, parse_overrides(args.set or []))
    config = space.default_config()
    out = Path(args.out or Path("runs") / "trials" / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"space {space.name}: {config.backbone} (pretrained={config.pretrained}), {config.epochs} epochs, "
          f"checkpoints in {out}", flush=True)
    try:
        started = time.perf_counter()
        data = load_dataset(space.data)
        sizes = ", ".join(f"{k} {v}" for k, v in data.split_sizes().items())
        print(f"data {Path(data.source).name}: {sizes}; {data.images.shape[1]}x{data.images.shape[2]}x{data.channels}, "
              f"{data.num_classes} classes, loaded in {time.perf_counter() - started:.1f}s", flush=True)
        run_trial(config, data, report=_print_epoch, checkpoint_dir=out, resume_from=args.resume)
    except (DataError, ModelError, TrialSetupError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    from search.study import StudyOptions, run_study
    from trainables.data import DataError

    options = StudyOptions(name=args.name, address=args.address, num_samples=args.num_samples,
                           time_budget=args.time_budget, resume=args.resume, tracking_uri=args.tracking_uri,
                           storage=args.storage, num_cpus=args.num_cpus)
    try:
        run_study(args.space, options)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _print_epoch(metrics: dict[str, float], checkpoint: Path | None) -> None:
    print(
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
        f"val_auc {metrics['val_auc']:.4f}  val_acc {metrics['val_acc']:.4f}  val_bal_acc {metrics['val_balanced_acc']:.4f}  "
        f"sens {metrics['val_sensitivity']:.3f}  spec {metrics['val_specificity']:.3f}  "
        f"{metrics['images_per_second']:.0f} img/s  {metrics['epoch_seconds']:.1f}s",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Hyperparameter search for transfer learning on medical images.")
    commands = parser.add_subparsers(dest="command", required=True)
    trial = commands.add_parser("trial", help="run one trial of a space in-process with its default values")
    trial.add_argument("space", help="space YAML file, e.g. spaces/quickstart.yaml")
    trial.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable), e.g. --set epochs=2 --set data.image_size=64")
    trial.add_argument("--out", help="checkpoint directory (default runs/trials/<space>-<time>)")
    trial.add_argument("--resume", help="checkpoint file or directory to continue from")
    trial.set_defaults(func=_trial)

    run = commands.add_parser("run", help="run a study: Optuna proposes, ASHA stops early, MLflow records")
    run.add_argument("space", help="space YAML file, e.g. spaces/quickstart.yaml")
    run.add_argument("--name", help="study name (default: the space's name)")
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or 10.0.0.1:6379); default: start Ray here")
    run.add_argument("--num-samples", type=int, help="number of trials (overrides tune.num_samples)")
    run.add_argument("--time-budget", help="wall-clock budget, e.g. 45m or 2h (overrides tune.time_budget)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--storage", help="folder holding studies (default: $MEDTUNE_STORAGE or runs/studies)")
    run.add_argument("--num-cpus", type=int, help="CPUs Ray may use in local mode (default: all)")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``search`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpaceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
