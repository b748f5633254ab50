"""The ``search`` command line.

- ``search trial SPACE.yaml [--set key=value ...]`` runs one trial in-process with the
  space's default values, one line of metrics per epoch: the way to check a space before
  launching a study.
- ``search init DATA`` reads a data source's fingerprint and writes a commented space
  sized to a ``--budget`` (see :mod:`search.init`).
- ``search run SPACE.yaml`` runs a study on Ray Tune (locally, or on a cluster with
  ``--address``), logging every trial to MLflow; ``--resume`` continues one. ``search
  run DATA`` does ``init`` and ``run`` in one step, keeping the written space beside the study.
- ``search list`` shows the studies; ``search best NAME`` the best trial and a
  leaderboard, and with ``--export DIR`` writes the final model, tested once on the
  held-out test split (``--refit`` retrains it on train + val, ``--register`` adds it to
  the MLflow model registry).
- ``search predict DIR INPUT...`` runs an exported model on images or a data set.
- ``search report NAME`` writes the study's report (Markdown + PNG) and logs it to MLflow.
- ``search cluster check cluster.yaml`` validates a Ray cluster-launcher config the way
  ``ray up`` does, plus what a study needs (see :mod:`search.cluster`).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

from search.space import SpaceError, load_space, parse_overrides


def _trial(args: argparse.Namespace) -> int:
    from search.space.preflight import check_space
    from trainables.data import DataError, describe, load_dataset
    from trainables.models import ModelError
    from search.study.folds import resolve_cv_folds, with_cv_folds
    from trainables.trial import NonFiniteLossError, TrialSetupError, run_trial

    space = load_space(args.space, parse_overrides(args.set or []))
    if args.cv is not None:
        import dataclasses

        space = dataclasses.replace(space, tune=dataclasses.replace(space.tune, cv_folds=_cv(args.cv)))  # checked now
    check_space(space)  # backbones, weights files, stage indices: before any image is decoded
    config = space.default_config()
    if args.resume and not Path(args.resume).exists():
        raise ValueError(f"--resume {args.resume}: no such checkpoint file or directory; pass a checkpoint "
                         "(or the folder holding checkpoint.pt) written by an earlier `search trial`")
    out = Path(args.out or Path("runs") / "trials" / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"space {space.name}: {config.backbone} (pretrained={config.pretrained}), {config.epochs} epochs, "
          f"checkpoints in {out}", flush=True)
    try:
        started = time.perf_counter()
        data = load_dataset(space.data)
        print(f"{describe(data)}, loaded in {time.perf_counter() - started:.1f}s", flush=True)
        folds, why = resolve_cv_folds(space.tune.cv_folds, data)
        config = with_cv_folds(space, data, folds).default_config()
        print(why, flush=True)
        run_trial(config, data, report=_print_epoch, checkpoint_dir=out, resume_from=args.resume)
    except (DataError, ModelError, TrialSetupError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _cv(value: str | None) -> int | str | None:
    """``--cv K`` or ``--cv auto``."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--cv must be an integer >= 1 or auto, but got {value!r}") from None


def next_steps(name: str, storage: str | None, tracking_uri: str | None) -> str:
    """The commands that follow a finished study: export, report, MLflow UI."""
    import shlex

    from search.records.storage import is_uri

    lines = ["next:"]
    if storage and is_uri(storage):  # `search best` and `search report` read a study folder
        source = f"{storage.rstrip('/')}/{name}"
        lines.append(f"  aws s3 sync {source} runs/studies/{name}    # the study, as a folder" if source.startswith("s3://")
                     else f"  (copy {source} to runs/studies/{name}: the commands below read a study folder)")
        storage = None
    where = f" --storage {shlex.quote(storage)}" if storage else ""
    lines += [
        f"  search best {name}{where} --export exports/{name}    # the final model, tested once on the test split",
        f"  search report {name}{where}    # what the study found: Markdown + plots, also in MLflow",
    ]
    if tracking_uri:
        lines.append(f"  mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}    # compare the trials")
    return "\n".join(lines)


def _init(args: argparse.Namespace) -> int:
    from search.init import InitError, InitOptions, configure, write_space
    from trainables.data import DataError

    try:
        result = configure(args.data, InitOptions(budget=args.budget, question=args.question,
                                                  modality=args.modality, name=args.name))
        out = write_space(result, Path(args.out or f"{result.name}.yaml"), force=args.force)
    except (DataError, InitError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    print(f"wrote {out} in {result.seconds:.0f} s; it validates as `search run` reads it")
    print(f"next:\n  search trial {out} --set epochs=1    # one trial, in about a minute\n"
          f"  search run {out}    # the study, {args.budget}")
    return 0


def is_space_file(path: str) -> bool:
    """Whether ``search run``'s argument is a space (``.yaml``/``.yml``) rather than a data source."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


def space_beside_study(args: argparse.Namespace) -> str:
    """For ``search run DATA``: the space ``search init`` writes beside the study (reused by ``--resume``).

    It is ``<storage>/<name>.space.yaml``, or ``./<name>.space.yaml`` when the storage is a
    URI. The budget is ``--time-budget`` (default 30m).
    """
    from search.init import InitOptions, configure, find_data, study_name, write_space
    from search.records.storage import is_uri, normalize
    from search.study.run import DEFAULT_STORAGE

    name = args.name or study_name(find_data(args.space))
    storage = normalize(args.storage or os.environ.get("MEDTUNE_STORAGE") or DEFAULT_STORAGE)
    path = (Path(".") if is_uri(storage) else Path(storage)) / f"{name}.space.yaml"
    if args.resume:
        if not path.is_file():
            raise ValueError(f"--resume {args.space}: no space was written for study {name!r} at {path}; "
                             "pass the space file, or the --name / --storage the study ran with")
        print(f"resuming with the space search init wrote: {path}", flush=True)
        return str(path)
    if path.is_file():  # the study's own space: rewriting it would break its --resume
        raise ValueError(f"study {name!r} already has the space search init wrote for it at {path}; pass --resume "
                         "to continue it, or --name NEW_NAME to configure and start another")
    budget = args.time_budget or "30m"
    result = configure(args.space, InitOptions(budget=budget, name=name))
    write_space(result, path, force=True)
    print("\n".join(result.lines), flush=True)
    print(f"search init wrote {path} in {result.seconds:.0f} s; running it", flush=True)
    return str(path)


def _run(args: argparse.Namespace) -> int:
    from search.init import InitError
    from search.study import StudyOptions, run_study
    from trainables.data import DataError

    if not is_space_file(args.space):
        try:
            args.space = space_beside_study(args)
        except (DataError, InitError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    options = StudyOptions(name=args.name, address=args.address, num_samples=args.num_samples,
                           time_budget=args.time_budget, resume=args.resume, tracking_uri=args.tracking_uri,
                           storage=args.storage, num_cpus=args.num_cpus, cv=_cv(args.cv))
    try:
        outcome = run_study(args.space, options)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if outcome.status == "finished" and outcome.counts:
        print(next_steps(outcome.name, args.storage, outcome.tracking_uri), flush=True)
    if outcome.status == "interrupted":
        print(f"study {outcome.name} interrupted; resume it with: {outcome.resume}", file=sys.stderr)
    elif outcome.status == "no_trial_finished":
        print(f"error: no trial of study {outcome.name} finished ("
              + ", ".join(f"{v} {k}" for k, v in sorted(outcome.counts.items())) + "); the first error is in "
              f"`search best {outcome.name}` and in MLflow; fix the space and start a new study with --name",
              file=sys.stderr)
    return outcome.exit_code


def _list(args: argparse.Namespace) -> int:
    from search.records.studies import StudyError, list_studies, storage_root, summarize

    studies = list_studies(args.storage)
    if not studies:
        print(f"no studies in {storage_root(args.storage)}; run one with `search run SPACE.yaml` "
              "(or pass --storage / set MEDTUNE_STORAGE)")
        return 0
    rows = [("name", "created", "trials", "states", "best", "status")]
    problems = []
    for study in studies:
        try:
            if isinstance(study, StudyError):
                raise study
            summary = summarize(study)
        except StudyError as err:
            problems.append(str(err))
            continue
        states = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(summary.counts.items())) or "-"
        best = f"{summary.metric} {summary.best:.4f}" if summary.best is not None else "-"
        rows.append((study.name, study.created.replace("T", " "), str(sum(summary.counts.values())), states, best,
                     summary.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    return 0


def _best(args: argparse.Namespace) -> int:
    from search.records.studies import best_trial, find_study

    if (args.refit or args.register or args.force or args.threshold or args.no_calibrate or args.ensemble
            or args.tta) and not args.export:
        raise ValueError("--refit, --register, --force, --threshold, --no-calibrate, --ensemble and --tta act on an "
                         "export: add --export DIR")
    if args.tta is not None:
        from search.model.views import parse_tta

        parse_tta(args.tta)  # refused before any data is loaded
    if args.ensemble is not None:
        from search.model.members import parse_ensemble

        parse_ensemble(args.ensemble)  # refused before any data is loaded
    if args.threshold is not None:
        from search.evaluation import parse_threshold

        parse_threshold(args.threshold)  # refused before any data is loaded
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, but got {args.top}")
    study = find_study(args.name, args.storage)
    client = study.client()
    best, table = best_trial(client, study, args.metric)
    print(f"study {study.name}: best trial {best.trial_id} ({best.state.replace('_', ' ')} after "
          f"{best.epochs_run} epochs): {best.metric} {best.value:.4f} at epoch {best.epoch}")
    print(f"  MLflow run {best.run_id} (experiment {study.experiment_id}, {study.tracking_uri})")
    for key in best.searched:
        print(f"  {key} = {best.params.get(key)}")
    fixed = [f"{k}={v}" for k, v in sorted(best.params.items()) if k not in best.searched]
    print(textwrap.fill("other settings: " + ", ".join(fixed), width=110, initial_indent="  ",
                        subsequent_indent="    "))
    shown = table.head(args.top)
    print(f"top {len(shown)} of {len(table)} trials by {best.metric} ({best.mode}):")
    print(shown.drop(columns=["run_id"]).to_string(index=False, na_rep="-"))
    if args.export:
        from search.model.export import ExportOptions, export_best

        export_best(study, ExportOptions(directory=Path(args.export), force=args.force, refit=args.refit,
                                         register=args.register, metric=args.metric, threshold=args.threshold,
                                         calibrate=False if args.no_calibrate else None, ensemble=args.ensemble,
                                         tta=args.tta))
    return 0


def _report(args: argparse.Namespace) -> int:
    from search.records.studies import find_study
    from search.report import write_report

    notes = None
    if args.notes:
        notes_path = Path(args.notes)
        if not notes_path.is_file():
            raise ValueError(f"--notes must be a Markdown file, but {notes_path} does not exist")
        notes = notes_path.read_text()
    path = write_report(find_study(args.name, args.storage), out=Path(args.out) if args.out else None, top=args.top,
                        notes=notes)
    print(f"report written to {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from search.model.predict import predict_inputs

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, but got {args.batch_size}")
    predict_inputs(args.model, args.inputs, out=args.out, split=args.split, output_format=args.format,
                   batch_size=args.batch_size)
    return 0


def _cluster_check(args: argparse.Namespace) -> int:
    from search.cluster import (
        ClusterConfigError,
        check_config,
        describe,
        detected_resources,
        load_config,
        resource_mismatches,
    )

    try:
        summary = check_config(args.config)
        if args.aws:
            config = load_config(args.config)
            if config["provider"]["type"] != "aws":
                raise ClusterConfigError(args.config, ["--aws checks an AWS config, but the provider is "
                                                       f"{config['provider']['type']!r}; drop --aws"])
            mismatches = resource_mismatches(config, detected_resources(config))
            if mismatches:
                raise ClusterConfigError(args.config, mismatches)
    except ClusterConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.config}: valid (Ray's schema and medtune's checks" + (", resources match AWS)" if args.aws else ")"))
    print(describe(summary))
    return 0


def _print_epoch(metrics: dict[str, float], checkpoint: Path | None) -> None:
    print(
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
        f"val_auc {metrics['val_auc']:.4f}  val_acc {metrics['val_acc']:.4f}  val_bal_acc {metrics['val_balanced_acc']:.4f}  "
        f"sens {metrics['val_sensitivity']:.3f}  spec {metrics['val_specificity']:.3f}  "
        f"{metrics['images_per_second']:.0f} img/s  {metrics['epoch_seconds']:.1f}s",
        flush=True,
    )


STORAGE_HELP = "folder holding studies (default: $MEDTUNE_STORAGE or runs/studies)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Hyperparameter search for transfer learning on medical images.")
    commands = parser.add_subparsers(dest="command", required=True)
    trial = commands.add_parser("trial", help="run one trial of a space in-process with its default values")
    trial.add_argument("space", help="space YAML file, e.g. spaces/quickstart.yaml")
    trial.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable), e.g. --set epochs=2 --set data.image_size=64")
    trial.add_argument("--out", help="checkpoint directory (default runs/trials/<space>-<time>)")
    trial.add_argument("--resume", help="checkpoint file or directory to continue from")
    trial.add_argument("--cv", metavar="K", help="cross-validate over K folds of train + val, or auto "
                       "(overrides tune.cv_folds)")
    trial.set_defaults(func=_trial)

    init = commands.add_parser("init", help="read a data source and write a space sized to a budget, every value "
                               "with the rule that chose it")
    init.add_argument("data", help="data source: .npz, CSV/zip manifest, ImageFolder, DICOM folder, Kaggle PCam "
                      "folder (relative paths: from here, else under $MEDTUNE_DATA)")
    init.add_argument("--out", help="space file to write (default <name>.yaml)")
    init.add_argument("--budget", default="30m", help="the study's wall-clock budget, e.g. 15m or 2h (default 30m)")
    init.add_argument("--question", default="all", choices=["transfer", "depth", "truncation", "features", "all"],
                      help="what the study asks: scratch vs pretrained (transfer), how many stages to freeze "
                      "(depth), truncated vs full network (truncation), feature extraction vs fine-tuning "
                      "(features), or all of it with the training settings (default)")
    init.add_argument("--modality", choices=["xray", "ct", "mri", "histology", "other"],
                      help="the kind of image, for the augmentations (default: from DICOM tags or the path)")
    init.add_argument("--name", help="study name (default: from the source's file name)")
    init.add_argument("--force", action="store_true", help="replace an existing --out file")
    init.set_defaults(func=_init)

    run = commands.add_parser("run", help="run a study: Optuna proposes, ASHA stops early, MLflow records")
    run.add_argument("space", help="space YAML file, e.g. spaces/quickstart.yaml; or a data source, which "
                     "`search init` configures first (budget: --time-budget, default 30m)")
    run.add_argument("--name", help="study name (default: the space's name)")
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or 10.0.0.1:6379); default: start Ray here")
    run.add_argument("--num-samples", type=int, help="number of trials (overrides tune.num_samples)")
    run.add_argument("--time-budget", help="wall-clock budget, e.g. 45m or 2h (overrides tune.time_budget)")
    run.add_argument("--cv", metavar="K", help="cross-validate every trial over K folds of train + val, or auto "
                     "(overrides tune.cv_folds)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    run.add_argument("--storage", help=STORAGE_HELP[:-1] + "; on a multi-node cluster a URI every node reaches, "
                     "e.g. s3://BUCKET/studies, or a shared mount)")
    run.add_argument("--num-cpus", type=int, help="CPUs Ray may use in local mode (default: all)")
    run.set_defaults(func=_run)

    listing = commands.add_parser("list", help="list the studies: name, date, trials, best metric")
    listing.add_argument("--storage", help=STORAGE_HELP)
    listing.set_defaults(func=_list)

    best = commands.add_parser("best", help="show a study's best trial and leaderboard; --export the final model")
    best.add_argument("name", help="study name (see `search list`)")
    best.add_argument("--storage", help=STORAGE_HELP)
    best.add_argument("--metric", help="validation metric to rank by (default: the study's)")
    best.add_argument("--top", type=int, default=5, help="leaderboard rows to show (default 5)")
    best.add_argument("--export", metavar="DIR", help="write the best model (weights, config, TorchScript, ONNX, "
                      "model card) to DIR and test it once on the held-out test split")
    best.add_argument("--force", action="store_true", help="replace an existing export in DIR")
    best.add_argument("--refit", action="store_true", help="first retrain the best configuration on train + val "
                      "for its best epoch count")
    best.add_argument("--threshold", metavar="RULE", help="binary models: the decision threshold, chosen on "
                      "validation: youden, sensitivity:0.95, specificity:0.95 or a probability such as 0.5 "
                      "(default: the space's export.threshold, youden)")
    best.add_argument("--ensemble", metavar="KIND", help="folds (the best trial's fold models; the default when it "
                      "cross-validated), top-K (the K best trials, K >= 2) or none; members are soft-voted")
    best.add_argument("--tta", metavar="VIEWS", help="test-time augmentation built into the exported graphs: none, "
                      "flip (image + left-right mirror) or dihedral (8 rotations and mirrors); default: the "
                      "space's export.tta, none")
    best.add_argument("--no-calibrate", action="store_true", help="skip temperature scaling (default: the "
                      "space's export.calibrate, on)")
    best.add_argument("--register", metavar="MODEL_NAME", help="also register the ONNX model in the MLflow model "
                      "registry under this name")
    best.set_defaults(func=_best)

    predict = commands.add_parser("predict", help="run an exported model on image files, folders or a data set")
    predict.add_argument("model", help="export folder written by `search best NAME --export DIR`")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or data sets "
                         "(.npz, CSV/zip manifest, ImageFolder, Kaggle PCam folder)")
    predict.add_argument("--out", help="CSV to write (default predictions.csv; submission.csv in Kaggle's format)")
    predict.add_argument("--split", choices=["test", "val", "train", "all"], default="test",
                         help="which split of a data set to predict (default test)")
    predict.add_argument("--format", choices=["auto", "kaggle", "csv"], default="auto",
                         help="kaggle: id,label with the probability of class 1 (auto for a folder of <id>.tif)")
    predict.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    predict.set_defaults(func=_predict)

    cluster = commands.add_parser("cluster", help="check a Ray cluster-launcher config (cluster.yaml)")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    check = cluster_commands.add_parser("check", help="validate it as `ray up` does, plus what a study needs")
    check.add_argument("config", help="cluster launcher YAML, e.g. cluster.yaml")
    check.add_argument("--aws", action="store_true", help="also compare each node type's declared resources with "
                       "the instance type's, read from AWS (DescribeInstanceTypes; needs credentials)")
    check.set_defaults(func=_cluster_check)

    report = commands.add_parser("report", help="write a study's report (Markdown + PNG plots) and log it to MLflow")
    report.add_argument("name", help="study name (see `search list`)")
    report.add_argument("--storage", help=STORAGE_HELP)
    report.add_argument("--out", metavar="DIR", help="report folder (default <storage>/<name>/report)")
    report.add_argument("--top", type=int, default=10, help="leaderboard rows (default 10)")
    report.add_argument("--notes", metavar="FILE", help="Markdown placed under the summary (e.g. published results "
                        "to compare with)")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``search`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpaceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
