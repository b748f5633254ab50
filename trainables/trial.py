"""One trial: build the model, train epoch by epoch, evaluate, checkpoint, report.

This is everything that happens inside a Ray Tune trial, with no Ray, MLflow or CLI in
sight: ``run_trial`` takes a typed config, a decoded dataset and a ``report`` callback
(``tune.report`` in a study, a printer in ``search trial``), so it is tested directly.

Only the train and validation splits are touched; the test split is reserved for the
final model (``search best --export``). A cross-validated trial (``cv_folds`` K > 1)
pools train + val into K folds (:mod:`trainables.data.folds`) and trains K fold models
side by side, one epoch of each in turn, so every epoch's report carries the fold mean
(what TPE and ASHA see), each fold's value, their spread, and the metrics of the pooled
out-of-fold predictions.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainables.augment import AugmentSpec, InputSpec, prepare_batch
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TrialConfig
from trainables.data import ImageDataset
from trainables.data.folds import fold_pool, held_out_folds
from trainables.data.splits import subsample_train
from trainables.metrics import scores
from trainables.models import TransferModel, build_model
from trainables.optim import Schedule, build_optimizer, penalty

Report = Callable[[dict[str, float], Path | None], None]
PREDICTIONS_FILE = "val_predictions.npz"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the trial cannot go on."""


class TrialSetupError(ValueError):
    """The config does not fit the data (e.g. a crop larger than the images)."""


@dataclass(frozen=True)
class ComputeFormat:
    """How batches meet the hardware: memory layout and autocast.

    Attributes:
        channels_last: NHWC model and inputs. cuDNN and oneDNN (CPU) both run NHWC
            convolutions faster; on this project's 2-core Xeon, fp32 training of ``cnn3``
            ran 1.3x and ``tf_efficientnet_lite0`` 1.3-2.4x faster, ResNet-18 the same
            (``benchmarks/throughput.py``). Same fp32 arithmetic, other summation order.
        bf16: bfloat16 autocast of the forward pass (loss and weights stay fp32).
    """

    channels_last: bool = True
    bf16: bool = False


def compute_format(device: torch.device, precision: str = "auto") -> ComputeFormat:
    """channels_last everywhere; bf16 on CUDA unless ``fp32``, on the CPU only when ``bf16``."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return ComputeFormat(channels_last=True, bf16=bf16)


@dataclass
class TrialState:
    """What a running trial holds; rebuilt from a config and restored from checkpoints."""

    model: TransferModel
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    generator: torch.Generator
    input_spec: InputSpec
    augment: AugmentSpec
    device: torch.device
    class_weights: torch.Tensor | None
    train_idx: np.ndarray
    compute: ComputeFormat = ComputeFormat()
    epoch: int = 0
    history: list[dict[str, float]] | None = None


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def input_spec_for(config: TrialConfig, data: ImageDataset, model: TransferModel) -> InputSpec:
    """Crop, size, channels and normalisation, checked against the stored images."""
    height, width = data.images.shape[1:3]
    if config.crop_size is not None and config.crop_size > min(height, width):
        raise TrialSetupError(
            f"crop_size {config.crop_size} is larger than the stored images ({height}x{width}); "
            f"use crop_size <= {min(height, width)} or decode larger images with data.image_size"
        )
    in_chans = config.in_chans or data.channels
    return InputSpec(
        crop_size=config.crop_size,
        input_size=config.input_size,
        in_chans=in_chans,
        mean=tuple(model.data_config["mean"]),
        std=tuple(model.data_config["std"]),
    )


def build_trial(config: TrialConfig, data: ImageDataset) -> TrialState:
    """Seed everything and build model, optimizer and schedule for a fresh trial."""
    if len(data.splits["train"]) == 0 or len(data.splits["val"]) == 0:
        raise TrialSetupError(f"a trial needs train and val images, but the splits are {data.split_sizes()}")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    device = select_device(config.device)
    in_chans = config.in_chans or data.channels
    compute = compute_format(device, config.precision)
    model = build_model(config, num_classes=data.num_classes, in_chans=in_chans).to(device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = input_spec_for(config, data, model)
    train_idx = data.splits["train"]
    if config.train_fraction < 1.0:
        # Seed 0, not the trial seed: searching `seed` must not change the training subset.
        train_idx = subsample_train(train_idx, data.labels, config.train_fraction, 0)
    steps = math.ceil(len(train_idx) / config.batch_size)
    optimizer = build_optimizer(model, model.stage_of(), model.num_stages, config)
    generator = torch.Generator().manual_seed(config.seed)
    weights = None
    if config.class_weighting == "balanced":
        counts = np.bincount(data.labels[train_idx], minlength=data.num_classes).astype(np.float64)
        weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    return TrialState(
        model=model,
        optimizer=optimizer,
        schedule=Schedule(optimizer, config, steps),
        generator=generator,
        input_spec=spec,
        augment=AugmentSpec(config.aug_flip, config.aug_rot90, config.aug_color, config.aug_shift),
        device=device,
        class_weights=weights,
        train_idx=train_idx,
        compute=compute,
        history=[],
    )


def fold_state_dict(state: TrialState) -> dict:
    """One model's own training state: weights, optimizer, schedule, its shuffling RNG."""
    return {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "schedule": state.schedule.state_dict(), "generator": state.generator.get_state()}


def load_fold_state(state: TrialState, saved: dict) -> None:
    """Load a :func:`fold_state_dict` into a freshly built model of the same config."""
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    state.generator.set_state(saved["generator"])


def state_dict(states: list[TrialState], config: TrialConfig) -> dict:
    """Everything needed to resume exactly: weights, optimizer, schedule, RNGs, history.

    Fold 0 (the only model of a single-split trial) at the top level; the other fold
    models of a cross-validated trial under ``folds``.
    """
    checkpoint = {
        "epoch": states[0].epoch,
        **fold_state_dict(states[0]),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": config.to_dict(),
        "history": states[0].history,
    }
    if len(states) > 1:
        checkpoint["folds"] = [fold_state_dict(s) for s in states[1:]]
    return checkpoint


def fold_models(checkpoint: dict) -> list[dict]:
    """The weights of every fold model in a checkpoint (one for a single-split trial)."""
    return [checkpoint["model"], *[fold["model"] for fold in checkpoint.get("folds", [])]]


def restore(states: list[TrialState], checkpoint: dict) -> None:
    """Load a checkpoint produced by :func:`state_dict` into freshly built (fold) models."""
    folds = checkpoint.get("folds", [])
    if len(folds) != len(states) - 1:
        raise TrialSetupError(f"the checkpoint holds {len(folds) + 1} fold model(s) but the config asks for "
                              f"cv_folds {len(states)}; resume with the config it was written with")
    for state, saved in zip(states, [checkpoint, *folds]):
        load_fold_state(state, saved)
        state.epoch = int(checkpoint["epoch"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    states[0].history = list(checkpoint["history"])


def images_tensor(data: ImageDataset, device: torch.device) -> torch.Tensor:
    """The decoded uint8 images as a tensor, on the GPU when it is the trial's device.

    Arrays from Ray's object store are read-only; the tensor only ever gets indexed
    (which copies), so sharing that memory is safe and avoids a copy per trial.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        images = torch.from_numpy(data.images)
    return images.to(device) if device.type == "cuda" else images


def train_step(state: TrialState, config: TrialConfig, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> torch.Tensor:
    """One optimisation step on a prepared batch: forward, penalties, backward, update.

    Returns the batch's cross-entropy before penalties. ``step`` only names the step in the
    error for a non-finite loss.
    """
    model = state.model
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=state.compute.bf16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, weight=state.class_weights)
    penalised = model.head.named_parameters() if config.penalty_scope == "head" else model.named_parameters()
    extra = penalty(penalised, config.l1, config.l2)
    objective = loss if extra is None else loss + extra
    if not torch.isfinite(objective):
        raise NonFiniteLossError(
            f"training loss became {objective.item()} at epoch {state.epoch + 1}, step {step}; "
            f"lower lr (now {config.lr:g}) or the l1/l2 penalties (now {config.l1:g}/{config.l2:g})"
        )
    state.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    state.optimizer.step()
    state.schedule.step()
    return loss


def train_epoch(state: TrialState, config: TrialConfig, images: torch.Tensor, data: ImageDataset) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen)."""
    model, device = state.model, state.device
    model.train()
    train_idx = torch.from_numpy(state.train_idx)
    labels_all = torch.from_numpy(data.labels)
    order = train_idx[torch.randperm(len(train_idx), generator=state.generator)]
    compute = state.compute
    total, seen = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        batch_idx = order[start : start + config.batch_size]
        if len(batch_idx) < 2:  # BatchNorm cannot train on a batch of one
            continue
        x = prepare_batch(images[batch_idx.to(images.device)].to(device, non_blocking=True), state.input_spec,
                          state.augment, state.generator, channels_last=compute.channels_last)
        y = labels_all[batch_idx].to(device, non_blocking=True)
        loss = train_step(state, config, x, y, start // config.batch_size)
        total += loss.item() * len(batch_idx)
        seen += len(batch_idx)
    return total / max(seen, 1), seen


@torch.no_grad()
def predict(model: TransferModel, images: torch.Tensor, indices: np.ndarray, spec: InputSpec,
            device: torch.device, batch_size: int, compute: ComputeFormat | None = None) -> np.ndarray:
    """Class probabilities ``(len(indices), K)`` in evaluation mode (centre crop).

    ``compute`` None: channels_last inputs and bf16 on CUDA, plain fp32 on the CPU.
    """
    model.eval()
    if compute is None:
        cuda = device.type == "cuda"
        compute = ComputeFormat(channels_last=cuda, bf16=cuda)
    out = []
    for start in range(0, len(indices), batch_size):
        idx = torch.from_numpy(indices[start : start + batch_size]).to(images.device)
        x = prepare_batch(images[idx].to(device), spec, channels_last=compute.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute.bf16):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()


def split_metrics(model: TransferModel, images: torch.Tensor, data: ImageDataset, split: str, spec: InputSpec,
                  device: torch.device, batch_size: int,
                  compute: ComputeFormat | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``split`` (its unweighted cross-entropy as ``<split>_loss``) and its probabilities."""
    indices = data.splits[split]
    probs = predict(model, images, indices, spec, device, batch_size, compute)
    return scores(data.labels[indices], probs, prefix=f"{split}_"), probs


def evaluate(state: TrialState, config: TrialConfig, images: torch.Tensor, data: ImageDataset,
             split: str = "val") -> tuple[dict[str, float], np.ndarray]:
    """:func:`split_metrics` of a running trial."""
    return split_metrics(state.model, images, data, split, state.input_spec, state.device,
                         config.eval_batch(state.device.type), state.compute)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A training pass frees its activations, but glibc keeps the freed pages of its arenas
    mapped, so a trial worker would hold its peak between passes and after the trial (one
    `cnn3` trial of benchmarks/spaces/memory.yaml in a Tune worker, trimmed after each epoch:
    611 MiB of private memory left after the trial without trimming, 480 MiB with it). Concurrent trials whose peaks do not coincide then share the node's memory;
    trials started together and run in step peak together anyway. It costs milliseconds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def fold_datasets(config: TrialConfig, data: ImageDataset) -> list[ImageDataset]:
    """The data each fold model sees: ``[data]`` itself for one fold, else K views of it.

    Fold k's view trains on the pooled train + val images outside fold k and validates
    on fold k; the images, labels and test split are shared, not copied.
    """
    if config.cv_folds == 1:
        return [data]
    pool = fold_pool(data.splits)
    try:
        held_out = held_out_folds(data, config.cv_folds)
    except ValueError as err:  # DataError: too many folds for the data
        raise TrialSetupError(str(err)) from None
    return [dataclasses.replace(data, splits={"train": np.setdiff1d(pool, fold), "val": fold,
                                              "test": data.splits["test"]})
            for fold in held_out]


def combine_folds(per_fold: list[dict[str, float]], labels: np.ndarray, oof: np.ndarray) -> dict[str, float]:
    """One report from the fold models' validation metrics.

    ``val_*`` become the fold means (NaN folds ignored) with ``val_*_std`` and
    ``val_*_fold<k>`` beside them; ``oof_*`` are the metrics of the pooled out-of-fold
    probabilities ``oof`` on ``labels``.
    """
    combined: dict[str, float] = {}
    for key in per_fold[0]:
        values = np.array([m[key] for m in per_fold], dtype=np.float64)
        finite = values[np.isfinite(values)]
        combined[key] = float(finite.mean()) if len(finite) else float("nan")
        combined[f"{key}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
        combined.update({f"{key}_fold{k}": float(v) for k, v in enumerate(values)})
    return {**combined, **scores(labels, oof, prefix="oof_")}


def run_trial(
    config: TrialConfig,
    data: ImageDataset,
    report: Report | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> list[dict[str, float]]:
    """Train ``config`` on ``data`` for ``config.epochs`` epochs and return the history.

    Each epoch ends with a validation pass, a checkpoint in ``checkpoint_dir`` (when
    given, with the epoch's validation scores in ``val_predictions.npz``) and one
    ``report(metrics, checkpoint_dir)`` call, so a Tune trial's
    ``training_iteration`` equals its epoch. ``resume_from`` (a checkpoint file or
    directory) continues exactly where that checkpoint stopped.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names the likely fix.
        TrialSetupError: the config does not fit the data.
    """
    setup_started = time.perf_counter()
    folds = fold_datasets(config, data)
    states = [build_trial(config, fold) for fold in folds]
    if resume_from is not None:
        restore(states, load_checkpoint(resume_from))
    state = states[0]
    images = images_tensor(data, state.device)
    trainable, total = state.model.trainable_parameters()
    # Overhead outside the epochs, reported for benchmarks/study_overhead.py: model build
    # (+ restore) before the first epoch of this run, checkpoint writing after each epoch.
    setup_seconds = time.perf_counter() - setup_started
    while state.epoch < config.epochs:
        started = time.perf_counter()
        train_losses, fold_metrics, fold_probs, seen, train_seconds = [], [], [], 0, 0.0
        for fold_state, fold in zip(states, folds):
            fold_started = time.perf_counter()
            loss, fold_seen = train_epoch(fold_state, config, images, fold)
            train_seconds += time.perf_counter() - fold_started
            release_free_memory()
            fold_val, probs = evaluate(fold_state, config, images, fold, "val")
            release_free_memory()
            fold_state.schedule.end_epoch(fold_val["val_loss"])
            fold_state.epoch += 1
            train_losses.append(loss)
            fold_metrics.append(fold_val)
            fold_probs.append(probs)
            seen += fold_seen
        if len(folds) == 1:
            metrics, val_idx, probs = fold_metrics[0], data.splits["val"], fold_probs[0]
        else:
            # out-of-fold: each pooled image's probabilities from the fold model that never trained on it
            val_idx = np.concatenate([fold.splits["val"] for fold in folds])
            order = np.argsort(val_idx, kind="stable")
            val_idx, probs = val_idx[order], np.concatenate(fold_probs)[order]
            metrics = combine_folds(fold_metrics, data.labels[val_idx], probs)
        metrics.update(
            epoch=state.epoch,
            train_loss=float(np.mean(train_losses)),
            lr=state.optimizer.param_groups[-1]["lr"],
            trainable_params=float(trainable),
            trainable_fraction=trainable / max(total, 1),
            epoch_seconds=time.perf_counter() - started,
            images_per_second=seen / max(train_seconds, 1e-9),
        )
        metrics["setup_seconds"], setup_seconds = setup_seconds, 0.0
        state.history.append(metrics)
        saved = None
        if checkpoint_dir is not None:
            saving = time.perf_counter()
            save_checkpoint(state_dict(states, config), checkpoint_dir)
            # Labels and scores only (no images): enough for ROC curves, confusion matrices and,
            # at export, the decision threshold and temperature (out-of-fold under cross-validation).
            np.savez(Path(checkpoint_dir) / PREDICTIONS_FILE, labels=data.labels[val_idx], probs=probs,
                     indices=val_idx)
            saved = Path(checkpoint_dir)
            metrics["checkpoint_seconds"] = time.perf_counter() - saving
        if report is not None:
            report(metrics, saved)
    return state.history
