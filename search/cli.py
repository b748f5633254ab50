"""The ``search`` command line.

``search trial SPACE.yaml [--set key=value ...]`` runs one trial in-process with the
space's default values, one line of metrics per epoch: the way to check a space before
launching a study.
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
