"""Which networks an export holds: the best trial's model, its fold models, or the top-K trials.

``search best NAME --export DIR --ensemble folds|top-K|none`` chooses:

- ``none``: one network, the best trial's checkpoint of its selected epoch (for a
  cross-validated trial, the model of fold 0, trained on the other folds).
- ``folds`` (the default when the best trial cross-validated): the K fold models of the
  best trial, each trained on a different (K-1)/K of train + val, soft-voted.
- ``top-K``: the best checkpoints of the K best trials that share the best trial's
  preprocessing (crop, input size, channels, normalisation), so one preprocessed batch
  feeds every member; trials with other preprocessing are skipped, with a line saying so.

Soft voting averages the members' temperature-scaled probabilities
(:class:`Probabilities`), which is also what the TorchScript and ONNX graphs compute.
``--refit`` retrains: each top-K member on train + val; for ``folds`` one model on train +
val (the K fold models would all be the same configuration trained on the same images).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from search.model.views import Viewed, view, view_indices
from search.records.studies import BestTrial, Study, StudyError, best_checkpoint, top_trials
from trainables.augment import InputSpec
from trainables.config import TrialConfig
from trainables.data import ImageDataset

Log = Callable[[str], None]


class Probabilities(nn.Module):
    """The members' logits divided by the fitted temperature, softmaxed and averaged over the
    members and the test-time views (:mod:`search.model.views`): what the TorchScript and
    ONNX files compute (one member, no views: that network's scaled probabilities)."""

    def __init__(self, models: nn.Module | list[nn.Module], temperature: float = 1.0, tta: str = "none") -> None:
        super().__init__()
        self.members = nn.ModuleList(models if isinstance(models, list) else [models])
        self.temperature = float(temperature)
        self.views = view_indices(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(member(view(x, index)) / self.temperature, dim=1)
                 for index in self.views for member in self.members]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(dim=0)


@dataclass(frozen=True)
class EnsembleChoice:
    """A parsed ``--ensemble``: ``kind`` is none, folds or top; ``k`` the member count of top-K."""

    kind: str
    k: int = 1

    def __str__(self) -> str:
        return f"top-{self.k}" if self.kind == "top" else self.kind


def parse_ensemble(text: str) -> EnsembleChoice:
    """``none``, ``folds`` or ``top-K`` (K >= 2).

    Raises:
        ValueError: anything else, naming the choices.
    """
    raw = str(text).strip().lower()
    if raw in ("none", "folds"):
        return EnsembleChoice(raw)
    match = re.fullmatch(r"top-?(\d+)", raw)
    if match and int(match.group(1)) >= 2:
        return EnsembleChoice("top", int(match.group(1)))
    raise ValueError(f"--ensemble {text!r} is not a choice: use none, folds (the best trial's fold models) "
                     "or top-K with K >= 2 (the K best trials), e.g. --ensemble top-5")


def rebuild_model(config: TrialConfig, num_classes: int, data_channels: int) -> nn.Module:
    """The trial's architecture on the CPU in eval mode, without fetching pretrained weights.

    Its weights are about to be replaced, so ImageNet weights (hub or offline package)
    are never loaded: exporting and predicting work on a machine with no model hub.
    """
    from trainables.models import build_model

    scratch = dataclasses.replace(config, pretrained=False, device="cpu")
    return build_model(scratch, num_classes=num_classes, in_chans=data_channels).eval()


def training_images(config: TrialConfig, data: ImageDataset, pool: np.ndarray) -> int:
    """How many images of ``pool`` a trial trains on (its ``train_fraction`` subsample)."""
    from trainables.data.splits import subsample_train

    if config.train_fraction >= 1.0:
        return len(pool)
    # seed 0, as the trial draws it (searching `seed` must not change the training subset)
    return len(subsample_train(pool, data.labels, config.train_fraction, 0))


def refit_model(config: TrialConfig, data: ImageDataset, epochs: int, log: Log) -> tuple[nn.Module, int]:
    """Train ``config`` on train + val (one model, no folds) and stop after ``epochs`` epochs.

    The run keeps the configured epoch count, so its learning-rate schedule follows the
    same course as in the search, and stops at the best epoch: the refit model sees what
    the best checkpoint saw, on more images. Validation scores printed meanwhile are on
    images the model trains on and mean nothing.

    Returns:
        The model (CPU, eval mode) and the number of training images it used.
    """
    from trainables.checkpoint import load_checkpoint
    from trainables.trial import run_trial

    config = dataclasses.replace(config, cv_folds=1)
    union = np.union1d(data.splits["train"], data.splits["val"]).astype(np.int64)
    refit_data = dataclasses.replace(data, splits={**data.splits, "train": union})
    used = training_images(config, data, union)
    log(f"refit: training on train + val ({used} images) for {epochs} epochs")

    class _Enough(Exception):
        pass

    def report(metrics: dict[str, float], _: Path | None) -> None:
        log(f"refit epoch {int(metrics['epoch'])}: train_loss {metrics['train_loss']:.4f} "
            f"({metrics['epoch_seconds']:.1f}s)")
        if metrics["epoch"] >= epochs:
            raise _Enough

    with tempfile.TemporaryDirectory(prefix="medtune-refit-") as tmp:
        try:
            run_trial(config, refit_data, report=report, checkpoint_dir=tmp)
        except _Enough:
            pass
        saved = load_checkpoint(tmp)
    model = rebuild_model(config, data.num_classes, data.channels)
    model.load_state_dict(saved["model"])
    return model, used


def trial_config(study: Study, best: BestTrial) -> TrialConfig:
    """The best trial's exact config: from one of its checkpoints, else its MLflow params."""
    from search.records.studies import checkpoint_epochs, trial_directory
    from trainables.checkpoint import load_checkpoint

    try:
        folders = checkpoint_epochs(trial_directory(study, best.trial_id))
    except StudyError:
        folders = {}
    if folders:
        return TrialConfig.from_dict(load_checkpoint(next(iter(folders.values()))[0])["config"])
    return TrialConfig.from_dict(dict(best.params))


@dataclass
class Member:
    """One network of an export.

    Attributes:
        network: on the CPU, in eval mode.
        config: its trial config.
        trial: the trial it comes from.
        train_images: images it was trained on.
        epochs: epochs it was trained for (the checkpoint's epoch, or the refit's).
        checkpoint: the checkpoint folder it was loaded from (None after a refit).
        fold: its fold of a cross-validated trial (None otherwise).
    """

    network: nn.Module
    config: TrialConfig
    trial: BestTrial
    train_images: int
    epochs: int
    checkpoint: Path | None
    fold: int | None = None

    def describe(self) -> dict[str, Any]:
        """Its line in ``config.json``'s ``ensemble.members`` (without the weights file name)."""
        return {"trial_id": self.trial.trial_id, "run_id": self.trial.run_id, "fold": self.fold,
                "epoch": self.epochs, "validation": {self.trial.metric: self.trial.value},
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "train_images": self.train_images, "trial_config": self.config.to_dict()}


@dataclass
class FinalModel:
    """The networks to export (one unless an ensemble) and how they were chosen.

    ``network``, ``config``, ``train_images``, ``epochs`` and ``checkpoint`` are those of
    the first member, the best trial's.
    """

    members: list[Member]
    ensemble: EnsembleChoice

    @property
    def network(self) -> nn.Module:
        return self.members[0].network

    @property
    def config(self) -> TrialConfig:
        return self.members[0].config

    @property
    def train_images(self) -> int:
        return self.members[0].train_images

    @property
    def epochs(self) -> int:
        return self.members[0].epochs

    @property
    def checkpoint(self) -> Path | None:
        return self.members[0].checkpoint


def cv_folds_of(trial: BestTrial) -> int:
    """Folds the trial cross-validated over (1: the single split), from its recorded settings."""
    return int(float(trial.params.get("cv_folds", 1)))


def default_ensemble(best: BestTrial) -> EnsembleChoice:
    """``folds`` when the best trial cross-validated, else ``none``."""
    return EnsembleChoice("folds") if cv_folds_of(best) > 1 else EnsembleChoice("none")


def _checkpoint_member(study: Study, trial: BestTrial, data: ImageDataset, log: Log) -> tuple[dict, Member]:
    """The trial's checkpoint of its selected epoch (or a tie) and its first network."""
    from trainables.checkpoint import load_checkpoint

    folder, epoch = best_checkpoint(study, trial)
    saved = load_checkpoint(folder)
    config = TrialConfig.from_dict(saved["config"])
    network = rebuild_model(config, data.num_classes, data.channels)
    network.load_state_dict(saved["model"])
    tie = f" (it ties epoch {trial.epoch}, whose checkpoint Tune did not keep)" if epoch != trial.epoch else ""
    log(f"checkpoint: epoch {epoch} of trial {trial.trial_id}{tie} ({folder})")
    used = training_images(config, data, data.splits["train"])
    return saved, Member(network.eval(), config, trial, used, epoch, folder)


def _fold_training_images(config: TrialConfig, data: ImageDataset, held_out: np.ndarray) -> int:
    """Images a fold model trained on: train + val outside its held-out fold (its ``train_fraction`` of them)."""
    from trainables.data.folds import fold_pool

    return training_images(config, data, np.setdiff1d(fold_pool(data.splits), held_out))


def fold_members(study: Study, best: BestTrial, data: ImageDataset, log: Log) -> list[Member]:
    """The best trial's K fold models (``--ensemble folds``; :func:`member_trials` checked it has them)."""
    from trainables.data.folds import held_out_folds
    from trainables.trial import fold_models

    saved, first = _checkpoint_member(study, best, data, log)
    weights = fold_models(saved)
    held = held_out_folds(data, len(weights))
    members = []
    for k, state in enumerate(weights):
        network = rebuild_model(first.config, data.num_classes, data.channels)
        network.load_state_dict(state)
        members.append(dataclasses.replace(first, network=network.eval(), fold=k,
                                           train_images=_fold_training_images(first.config, data, held[k])))
    log(f"ensemble: the {len(members)} fold models of trial {best.trial_id}")
    return members


def view_probabilities(networks: list[nn.Module], spec: InputSpec, data: ImageDataset, indices: np.ndarray,
                       tta: str, batch_size: int) -> list[np.ndarray]:
    """Each (view, network) pair's probabilities on the images ``indices``, on the CPU: the
    arrays :class:`Probabilities` averages (one per network when ``tta`` is none)."""
    from trainables.trial import predict

    images = torch.from_numpy(data.images)
    return [predict(Viewed(network, index), images, indices, spec, torch.device("cpu"), batch_size)
            for index in view_indices(tta) for network in networks]


def held_out_view_probabilities(study: Study, trial: BestTrial, data: ImageDataset, indices: np.ndarray,
                                tta: str) -> list[np.ndarray]:
    """The trial's checkpoint models' probabilities on its held-out images ``indices``, one
    array per test-time view.

    Every image is scored by a model that did not train on it, as in the trial's own
    ``val_predictions.npz``: the single model on validation, or under cross-validation the
    model of the fold that held the image out (out-of-fold predictions).

    Raises:
        StudyError: an image of ``indices`` is in no held-out fold (the folds changed).
    """
    from trainables.data.folds import held_out_folds
    from trainables.trial import fold_models, input_spec_for

    saved, first = _checkpoint_member(study, trial, data, lambda _: None)
    spec = input_spec_for(first.config, data, first.network)
    batch = first.config.eval_batch("cpu")
    if first.config.cv_folds <= 1:
        return view_probabilities([first.network], spec, data, indices, tta, batch)
    out = [np.full((len(indices), data.num_classes), np.nan) for _ in view_indices(tta)]
    for state, held in zip(fold_models(saved), held_out_folds(data, first.config.cv_folds)):
        network = rebuild_model(first.config, data.num_classes, data.channels)
        network.load_state_dict(state)
        mine = np.isin(indices, held)
        for whole, part in zip(out, view_probabilities([network.eval()], spec, data, indices[mine], tta, batch)):
            whole[mine] = part
    if any(np.isnan(whole).any() for whole in out):
        raise StudyError(f"trial {trial.trial_id}'s held-out images are not all in its {first.config.cv_folds} "
                         "folds of the data loaded now; export with --tta none")
    return out


def top_k_trials(study: Study, best: BestTrial, k: int, data: ImageDataset, log: Log) -> list[BestTrial]:
    """The ``k`` best trials sharing the best trial's preprocessing (``top-K``), best first.

    Their preprocessing is read from their recorded settings (no checkpoint is loaded).

    Raises:
        StudyError: fewer than ``k`` finished trials, or fewer than ``k`` with that preprocessing.
    """
    from search.records.studies import finished_trials
    from trainables.trial import input_spec_for

    client = study.client()
    top_trials(client, study, k, best.metric)  # refuses fewer than k finished trials
    chosen: list[BestTrial] = []
    spec: InputSpec | None = None
    for trial in finished_trials(client, study, best.metric):
        config = TrialConfig.from_dict(dict(trial.params))
        trial_spec = input_spec_for(config, data, rebuild_model(config, data.num_classes, data.channels))
        if spec is None:
            spec = trial_spec
        elif trial_spec != spec:
            log(f"ensemble: skipped trial {trial.trial_id} ({trial.metric} {trial.value:.4f}): its preprocessing "
                f"{trial_spec} differs from the best trial's {spec}, and all members take one batch")
            continue
        chosen.append(trial)
        if len(chosen) == k:
            return chosen
    fix = f"use --ensemble top-{len(chosen)}" if len(chosen) >= 2 else "use --ensemble none"
    raise StudyError(f"--ensemble top-{k}: only {len(chosen)} finished trials share the best trial's preprocessing "
                     f"(crop, input size, channels, normalisation); {fix}")


def member_trials(study: Study, best: BestTrial, ensemble: EnsembleChoice, data: ImageDataset, refit: bool,
                  log: Log) -> list[BestTrial]:
    """The trials an export's members come from (the best first), refusing ensembles the study cannot give.

    Raises:
        StudyError: ``folds`` for a trial that did not cross-validate; ``top-K`` without
            ``--refit`` in a cross-validated study (each trial holds K fold models, not one
            network on its split); fewer than K trials to choose from.
    """
    folds = cv_folds_of(best)
    if ensemble.kind == "folds" and folds < 2:
        raise StudyError(f"--ensemble folds needs a cross-validated trial, but trial {best.trial_id} of study "
                         f"{study.name!r} trained one model (cv_folds 1); use --ensemble top-K, or run a study with "
                         "`tune: {cv_folds: 5}` (or --cv 5)")
    if ensemble.kind == "top":
        if folds > 1 and not refit:
            raise StudyError(f"--ensemble {ensemble} of a cross-validated study: each trial holds {folds} fold "
                             "models, not one network; use --ensemble folds (the best trial's fold models), or "
                             f"--ensemble {ensemble} --refit (each trial retrained on train + val)")
        return top_k_trials(study, best, ensemble.k, data, log)
    return [best]


def final_model(study: Study, trials: list[BestTrial], data: ImageDataset, refit: bool, ensemble: EnsembleChoice,
                log: Log) -> FinalModel:
    """The networks to export from the :func:`member_trials`: their checkpoints, or refits on train + val."""
    best = trials[0]
    if refit:
        if ensemble.kind == "folds":
            log("refit of a fold ensemble: one model on train + val (the fold models would all be the same "
                "configuration trained on the same images)")
            ensemble = EnsembleChoice("none")
        members = []
        for trial in trials:
            config = trial_config(study, trial)
            network, used = refit_model(config, data, trial.epoch, log)
            members.append(Member(network.cpu().eval(), dataclasses.replace(config, cv_folds=1), trial, used,
                                  trial.epoch, None))
        return FinalModel(members, ensemble)
    if ensemble.kind == "folds":
        return FinalModel(fold_members(study, best, data, log), ensemble)
    members = [_checkpoint_member(study, trial, data, log)[1] for trial in trials]
    if ensemble.kind == "top":
        log(f"ensemble: the top {ensemble.k} trials " + ", ".join(f"{m.trial.trial_id} ({m.trial.value:.4f})"
                                                                  for m in members))
    elif members[0].config.cv_folds > 1:
        from trainables.data.folds import held_out_folds

        member = members[0]
        member.fold = 0
        member.train_images = _fold_training_images(member.config, data,
                                                    held_out_folds(data, member.config.cv_folds)[0])
        log(f"--ensemble none on a cross-validated trial: exporting the model of fold 0, trained on "
            f"{member.config.cv_folds - 1} of its {member.config.cv_folds} folds (--ensemble folds exports all of "
            "them, --refit one model on all of train + val)")
    return FinalModel(members, ensemble)


__all__ = ["EnsembleChoice", "FinalModel", "Member", "Probabilities", "cv_folds_of", "default_ensemble", "final_model",
           "held_out_view_probabilities", "member_trials", "parse_ensemble", "rebuild_model", "refit_model",
           "trial_config", "training_images", "view_probabilities"]
