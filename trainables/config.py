"""Typed settings of one trial: what data to read and how to train on it.

A trial's configuration is flat on purpose: Ray Tune and Optuna sample flat dicts, and
``search trial --set key=value`` overrides one key at a time. ``TrialConfig.from_dict``
is the single place where a sampled dict becomes typed settings, and it rejects unknown
keys with the closest valid one so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Schedule = Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle", "plateau"]
Initializer = Literal[
    "default",
    "xavier_normal",
    "xavier_uniform",
    "glorot_normal",
    "glorot_uniform",
    "lecun_normal",
    "lecun_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
]


class ConfigError(ValueError):
    """A setting that breaks a rule, with the names of the settings involved.

    A ``ValueError`` (callers that catch those keep working); ``keys`` lets a caller such
    as the space parser point at the line the user wrote (``search.epochs`` rather than
    the whole ``params`` section) when a check involves several settings.
    """

    def __init__(self, keys: str | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.keys: tuple[str, ...] = (keys,) if isinstance(keys, str) else tuple(keys)


# Decoded images are held in memory as one uint8 array (n x size x size x channels). At
# 4096 px one RGB image is 48 MiB, so a few hundred of them already exceed a large
# machine's memory, and no ImageNet backbone is trained at more than ~600 px: a larger
# value is a typo or a whole-slide image that must be tiled first. Whether a smaller size
# fits depends on the number of images, which only the data loader knows.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled images are and how to turn them into splits.

    Attributes:
        source: a MedMNIST ``.npz``, a CSV manifest, a ``.zip`` holding ``labels.csv``,
            an ImageFolder directory or a Kaggle-PCam directory (``train_labels.csv``).
        format: ``auto`` detects it from ``source``.
        path_column / label_column: CSV columns naming the image and its integer label.
        split_column: CSV column with ``train``/``val``/``test`` (``valid`` accepted);
            ``None`` detects a ``split`` column when there is one.
        group_column: patient/group column; the split never puts one group in two splits.
        label_name_column: CSV column with class names (optional).
        image_size: decode every image to this square size; ``None`` keeps the native size,
            which must then be the same for every image.
        channels: 1 (grayscale) or 3 (RGB) at decode time; ``None`` = 1 if the source is
            grayscale, else 3.
        val_fraction / test_fraction: share of the data for a split that the source lacks.
        train_fraction: stratified subsample of the training split (training-size studies).
        seed: seeds the split and the subsample; same seed, same split in every trial.
        blank_filter: skip near-blank patches (mean >= blank_white or <= blank_black,
            and spatial standard deviation <= blank_max_std in every channel). The
            defaults were read off the PCam patches: they drop empty glass (white,
            grey or tan) and black scanner borders, and keep patches showing any tissue.
        cache_dir: where decoded arrays are cached (``MEDTUNE_CACHE`` or
            ``~/.cache/medtune`` when ``None``).
        allow_group_overlap: accept group ids that the source's own split puts in more
            than one split (the loader refuses them by default: the same patient in train
            and test leaks). Set it when ids are only unique within a split, as in
            Kermany, which numbers patients per official split; the loader then warns and
            records the count on ``ImageDataset.group_overlap``.
    """

    source: str
    format: Literal["auto", "npz", "csv", "imagefolder", "kaggle_pcam"] = "auto"
    path_column: str = "path"
    label_column: str = "label"
    split_column: str | None = None
    group_column: str | None = None
    label_name_column: str | None = None
    image_size: int | None = None
    channels: Literal[1, 3] | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train_fraction: float = 1.0
    seed: int = 0
    blank_filter: bool = True
    blank_white: float = 200.0
    blank_black: float = 40.0
    blank_max_std: float = 6.0
    cache_dir: str | None = None
    allow_group_overlap: bool = False

    def validate(self) -> None:
        """Check the choices and the image size, which need no data.

        Separate from construction (like :meth:`TrialConfig.validate`): the data loader
        checks the fractions and reports its own errors, and a space file calls this to
        refuse ``channels: 2`` or ``image_size: 100000`` before any decoding starts.

        Raises:
            ConfigError: naming the key, the value and what is allowed.
        """
        check_choices(self, "data setting")
        size = self.image_size
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool)
                                     and 1 <= size <= MAX_IMAGE_SIZE):
            raise ConfigError("image_size", f"`1 <= image_size <= {MAX_IMAGE_SIZE}` must hold, but got "
                                            f"image_size={size!r}; decode to a size the backbone uses "
                                            f"(e.g. 224), tile larger images first, or null for the native size")


def check_choices(config: Any, what: str) -> None:
    """Every ``Literal`` field of the dataclass ``config`` holds one of its choices.

    Raises:
        ConfigError: naming the field, the value, the choices and the closest one.
    """
    for name, allowed in _choices(type(config)).items():
        value = getattr(config, name)
        if not is_choice(value, allowed):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(name, f"{what} '{name}' must be one of {', '.join(map(str, allowed))}, "
                                    f"but got {value!r}{hint}")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs besides the data: model, optimisation, input, seed.

    Model:
        backbone: a timm model name or a from-scratch baseline (``cnn3``, ``cnn9``).
        pretrained: ``False``/``"none"`` trains from scratch; ``True`` loads ImageNet
            weights (from an installed offline weight package when one exists for the
            backbone, else the timm hub); ``"hub"`` forces the hub; any other string is a
            local ``.safetensors``/``.pth`` file.
        in_chans: network input channels; ``None`` = the data's channels.
        frozen_stages: stages of ``feature_info`` kept frozen (0 = fine-tune everything,
            number of stages = pure feature extraction).
        truncate_after: keep stages ``0..truncate_after`` only; ``None`` = full network.
        head_hidden: widths of the head's hidden layers (empty = linear head).
        head_activation: activation between head layers.
        dropout: dropout before each head layer.
        initializer: head initializer; also the whole network's when not pretrained.
    Optimisation:
        optimizer, lr, momentum (sgd/rmsprop), nesterov (sgd), weight_decay (decoupled,
        not on norms and biases), l1 / l2 (loss penalties on weights, not on norms and
        biases; ``penalty_scope`` ``head`` limits them to the head, like Keras
        regularisers on the dense layers only), lr_ratio (learning rate of the first backbone stage / the head's; stages
        in between are interpolated geometrically), schedule with warmup_epochs,
        step_size, gamma, milestones, min_lr_ratio, plateau_patience, batch_size,
        epochs, class_weighting (``balanced`` weights the loss by inverse class frequency),
        eval_batch_size (``None``: see :meth:`eval_batch`).
    Data:
        train_fraction: stratified, seeded subsample of the training split for this trial
            (searchable: training-set-size studies); nested, so 0.05 is inside 0.2.
    Input and augmentation:
        crop_size: centre crop of the stored image (``None`` = whole image), then resized
            to input_size (``None`` = crop size). aug_flip, aug_rot90 (90° rotations),
            aug_color (brightness/contrast jitter strength), aug_shift (random crop offset
            in pixels around the centre crop).
    Hardware:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` (GPU ``N``) or
            ``mps``.
        precision: ``auto`` = bf16 autocast on CUDA, fp32 on the CPU; ``bf16`` also
            autocasts on the CPU (2-3x faster for plain convnets such as ``cnn3`` or
            ResNets on CPUs with AMX, e.g. Xeon Sapphire Rapids; slower for depthwise
            EfficientNets, and emulated, so slow, on CPUs without bf16 units);
            ``fp32`` never autocasts.
    """

    backbone: str = "cnn3"
    pretrained: bool | str = False
    in_chans: int | None = None
    frozen_stages: int = 0
    truncate_after: int | None = None
    head_hidden: tuple[int, ...] = ()
    head_activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu"
    dropout: float = 0.0
    initializer: Initializer = "default"

    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    penalty_scope: Literal["all", "head"] = "all"
    lr_ratio: float = 1.0
    schedule: Schedule = "constant"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    min_lr_ratio: float = 0.0
    plateau_patience: int = 2
    batch_size: int = 64
    eval_batch_size: int | None = None
    epochs: int = 10
    class_weighting: Literal["none", "balanced"] = "none"

    crop_size: int | None = None
    input_size: int | None = None
    aug_flip: bool = True
    aug_rot90: bool = False
    aug_color: float = 0.0
    aug_shift: int = 0

    train_fraction: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def eval_batch(self, device_type: str) -> int:
        """Images per evaluation batch: ``eval_batch_size``, or by device when it is ``None``.

        On a GPU, 4x the training batch (at least 256): evaluation keeps no activations for
        backward, so bigger batches fill the device. On the CPU, the training batch: a
        bigger one is no faster there, and a 256-image batch of a scratch CNN's activations
        at 64 px holds about 0.2 GB more per concurrent trial (benchmarks/memory.py).
        """
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return max(256, 4 * self.batch_size) if device_type == "cuda" else self.batch_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build a config from a flat dict, refusing unknown keys and coercing types.

        Values are coerced by :func:`coerce_value` (the same rules as the space file's
        other sections), then :meth:`validate` checks choices and ranges.

        Raises:
            ConfigError: an unknown key (with the closest valid key or the real name of a
                common alias) or a value of the wrong kind (with the key, the value and
                what was expected); ``keys`` names the parameters involved.
        """
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in hints:
                close = suggest_trial_key(key)
                hint = f"; did you mean '{close}'?" if close else ""
                raise ConfigError(key, f"unknown trial parameter '{key}'{hint}")
            try:
                kwargs[key] = coerce_value(value, hints[key])
            except (TypeError, ValueError):
                allowed = _choices(cls).get(key)
                expected = (f"must be one of {', '.join(map(str, allowed))}" if allowed
                            else f"expects {cls.__dataclass_fields__[key].type}")
                raise ConfigError(key, f"trial parameter '{key}' {expected}, but got {value!r}") from None
        if isinstance(kwargs.get("pretrained"), str) and kwargs["pretrained"].strip().lower() == "none":
            kwargs["pretrained"] = False  # the documented spelling of "no weights" in a YAML file
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of every setting (tuples as lists), e.g. for logging as parameters."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Check choices and value ranges that do not depend on the data or the backbone.

        Raises:
            ConfigError: the first broken rule, with the value and what is allowed;
                ``keys`` names the parameters involved (two for a rule between them).
        """
        check_choices(self, "trial parameter")
        milestones = list(self.milestones)
        checks = [
            (self.lr > 0, "lr", self.lr, "a positive learning rate, e.g. 1e-3"),
            (self.lr_ratio > 0, "lr_ratio", self.lr_ratio, "a positive ratio (1.0 = one lr everywhere)"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size,
             "null (automatic) or an integer >= 1"),
            (self.epochs >= 1, "epochs", self.epochs, "an integer >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a value in [0, 1)"),
            (self.l1 >= 0 and self.l2 >= 0, "l1/l2", (self.l1, self.l2), "non-negative penalties"),
            (self.weight_decay >= 0, "weight_decay", self.weight_decay, "a non-negative value"),
            # sgd and rmsprop keep `momentum` of the previous step; 1 never forgets a gradient.
            (0.0 <= self.momentum < 1.0, "momentum", self.momentum, "a value in [0, 1), e.g. 0.9"),
            # step, multistep, exponential and plateau multiply the lr by gamma: above 1 it
            # grows, 0 stops training after the first decay.
            (0.0 < self.gamma <= 1.0, "gamma", self.gamma, "a decay factor in (0, 1], e.g. 0.1"),
            # cosine's floor as a fraction of lr: above 1 the cosine would rise.
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "a fraction of lr in [0, 1]"),
            # the step schedule decays every step_size epochs (0 used to be read as 1).
            (self.step_size >= 1, "step_size", self.step_size, "a number of epochs >= 1"),
            (self.plateau_patience >= 0, "plateau_patience", self.plateau_patience,
             "a number of epochs >= 0 without improvement before the lr decays"),
            (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs,
             "a number of epochs >= 0 (0 = no warmup)"),
            # multistep decays once per milestone passed; a repeated or unsorted list is a typo.
            (all(m >= 1 for m in milestones) and all(a < b for a, b in zip(milestones, milestones[1:])),
             "milestones", milestones, "strictly increasing epochs >= 1, e.g. [30, 60]"),
            (self.frozen_stages >= 0, "frozen_stages", self.frozen_stages, "an integer >= 0"),
            (self.truncate_after is None or self.truncate_after >= 0, "truncate_after",
             self.truncate_after, "null (full network) or a stage index >= 0"),
            (self.crop_size is None or self.crop_size >= 8, "crop_size", self.crop_size, "null or >= 8 pixels"),
            (self.input_size is None or self.input_size >= 8, "input_size", self.input_size, "null or >= 8 pixels"),
            (self.in_chans in (None, 1, 3), "in_chans", self.in_chans, "null, 1 or 3"),
            (0.0 < self.train_fraction <= 1.0, "train_fraction", self.train_fraction, "a fraction in (0, 1]"),
            (self.aug_shift >= 0, "aug_shift", self.aug_shift, "an integer >= 0"),
            (self.aug_color >= 0, "aug_color", self.aug_color, "a value >= 0"),
            (all(h >= 1 for h in self.head_hidden), "head_hidden", list(self.head_hidden),
             "a list of positive widths, [] for a linear head"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise ConfigError(tuple(key.split("/")), f"trial parameter '{key}' must be {expected}, "
                                                         f"but got {value!r}")
        # onecycle ignores warmup_epochs; every other schedule would still be warming up
        # when training ends, so the configured lr is never reached.
        if self.schedule != "onecycle" and self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs:
            raise ConfigError(("warmup_epochs", "epochs"),
                              f"trial parameter 'warmup_epochs' must be < epochs, but got warmup_epochs="
                              f"{self.warmup_epochs!r} with epochs={self.epochs!r}; lower warmup_epochs or "
                              f"raise epochs")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            close = _device_hint(self.device)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError("device", f"trial parameter 'device' must be auto, cpu, cuda, cuda:N (a GPU index) "
                                        f"or mps, but got {self.device!r}{hint}")


# What ``trainables.trial.select_device`` turns into a torch device: ``auto`` itself, or a
# name torch accepts and the trial code handles (CUDA with bf16 autocast, MPS and the CPU
# without). Checked here so that ``device: gpu`` fails before Ray starts, not in torch.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _device_hint(value: Any) -> str:
    """The device the user most likely meant: ``gpu`` -> ``cuda``, ``GPU:1`` -> ``cuda:1``."""
    text = str(value).strip().lower().replace(" ", "")
    fixed = re.sub(r"^(gpu|nvidia|cuda)[:_-]?(\d*)$", lambda m: "cuda" + (f":{m[2]}" if m[2] else ""), text)
    if _DEVICE.fullmatch(fixed):
        return fixed
    close = difflib.get_close_matches(text, ["auto", "cpu", "cuda", "mps"], n=1)
    return close[0] if close else ""


# Names people write for a trial parameter in other libraries or by habit, mapped to the
# real field. An unknown key is fuzzy-matched against these and the real names together,
# so `lerning_rate` suggests `lr` (via learning_rate) instead of the spelling-closest
# `lr_ratio`.
TRIAL_KEY_ALIASES: dict[str, str] = {
    **dict.fromkeys(["learning_rate", "lerning_rate", "learningrate", "lr_rate", "base_lr", "init_lr"], "lr"),
    **dict.fromkeys(["wd", "weightdecay", "decoupled_weight_decay"], "weight_decay"),
    **dict.fromkeys(["l2_reg", "l2_penalty", "l2_regularization", "l2_regularizer", "l2_lambda", "lambda_l2",
                     "kernel_regularizer", "ridge"], "l2"),
    **dict.fromkeys(["l1_reg", "l1_penalty", "l1_regularization", "l1_regularizer", "l1_lambda", "lambda_l1",
                     "lasso"], "l1"),
    **dict.fromkeys(["penalty_on", "regularization_scope", "regularizer_scope"], "penalty_scope"),
    **dict.fromkeys(["bs", "batch", "batchsize", "batch_sz", "train_batch_size", "minibatch"], "batch_size"),
    **dict.fromkeys(["eval_bs", "val_batch_size", "test_batch_size", "inference_batch_size"], "eval_batch_size"),
    **dict.fromkeys(["optim", "opt", "optimiser", "solver"], "optimizer"),
    **dict.fromkeys(["model", "arch", "architecture", "network", "net", "base_model", "encoder", "model_name"],
                    "backbone"),
    **dict.fromkeys(["pretrain", "pretrained_weights", "weights", "imagenet", "use_pretrained"], "pretrained"),
    **dict.fromkeys(["epoch", "num_epochs", "n_epochs", "nb_epochs", "max_epochs", "epoch_count"], "epochs"),
    **dict.fromkeys(["freeze", "frozen", "frozen_layers", "freeze_layers", "freeze_stages", "n_frozen",
                     "num_frozen", "frozen_blocks"], "frozen_stages"),
    **dict.fromkeys(["truncate", "truncation", "cut_after", "depth"], "truncate_after"),
    **dict.fromkeys(["dropout_rate", "drop_rate", "drop", "p_dropout"], "dropout"),
    **dict.fromkeys(["init", "weight_init", "kernel_initializer", "initialiser"], "initializer"),
    **dict.fromkeys(["hidden", "hidden_units", "hidden_layers", "head_layers", "head_units", "fc_layers"],
                    "head_hidden"),
    **dict.fromkeys(["activation", "act", "head_act"], "head_activation"),
    **dict.fromkeys(["lr_schedule", "lr_scheduler", "scheduler", "sched", "lr_policy"], "schedule"),
    **dict.fromkeys(["warmup", "warm_up", "warmup_epoch", "warmup_steps"], "warmup_epochs"),
    **dict.fromkeys(["lr_step", "step", "decay_epochs"], "step_size"),
    **dict.fromkeys(["decay_rate", "lr_gamma", "lr_decay_rate", "decay_factor"], "gamma"),
    **dict.fromkeys(["milestone", "lr_milestones", "decay_milestones"], "milestones"),
    **dict.fromkeys(["eta_min", "min_lr", "final_lr_ratio"], "min_lr_ratio"),
    **dict.fromkeys(["patience", "lr_patience"], "plateau_patience"),
    **dict.fromkeys(["layer_lr_ratio", "discriminative_lr", "lr_mult", "backbone_lr_ratio"], "lr_ratio"),
    **dict.fromkeys(["class_weight", "class_weights", "weighting", "balance_classes"], "class_weighting"),
    **dict.fromkeys(["crop"], "crop_size"),
    **dict.fromkeys(["img_size", "image_size", "resize", "input_shape"], "input_size"),
    **dict.fromkeys(["channels", "in_channels", "input_channels", "num_channels"], "in_chans"),
    **dict.fromkeys(["flip", "hflip", "horizontal_flip", "random_flip"], "aug_flip"),
    **dict.fromkeys(["rot90", "rotate", "rotation", "random_rotation"], "aug_rot90"),
    **dict.fromkeys(["color", "color_jitter", "jitter"], "aug_color"),
    **dict.fromkeys(["shift", "translate", "random_crop"], "aug_shift"),
    **dict.fromkeys(["subsample", "data_fraction", "fraction"], "train_fraction"),
    **dict.fromkeys(["random_seed", "rng_seed"], "seed"),
    **dict.fromkeys(["gpu", "cuda", "accelerator"], "device"),
    **dict.fromkeys(["amp", "dtype", "mixed_precision", "autocast"], "precision"),
}


def suggest_trial_key(key: Any) -> str | None:
    """The trial parameter an unknown key most likely means, or ``None``.

    Exact aliases (``bs`` -> ``batch_size``) win; otherwise the key is fuzzy-matched
    against the real names and the aliases together and the match's real name returned.
    """
    names = [f.name for f in dataclasses.fields(TrialConfig)]
    text = str(key).strip().lower().replace("-", "_").replace(" ", "_")
    if text in names:
        return text
    if text in TRIAL_KEY_ALIASES:
        return TRIAL_KEY_ALIASES[text]
    candidates = {**TRIAL_KEY_ALIASES, **{name: name for name in names}}
    close = difflib.get_close_matches(text, list(candidates), n=1)
    return candidates[close[0]] if close else None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a config dataclass (its annotations are strings)."""
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Allowed values of every ``Literal`` field of a config dataclass."""
    out = {}
    for name, hint in _hints(cls).items():
        options = [a for a in (typing.get_args(hint) if typing.get_origin(hint) is not Literal else (hint,))
                   if typing.get_origin(a) is Literal]
        if options:
            allowed = tuple(v for option in options for v in typing.get_args(option))
            out[name] = allowed + ((None,) if type(None) in typing.get_args(hint) else ())
    return out


def field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Allowed values of every ``Literal`` field of a config dataclass (``None`` if optional)."""
    return _choices(cls)


def field_types(cls: type) -> dict[str, Any]:
    """Resolved field types of a config dataclass, for :func:`coerce_value`."""
    return _hints(cls)


def is_choice(value: Any, allowed: tuple[Any, ...]) -> bool:
    """``value in allowed`` without Python's ``True == 1``: ``True`` is not the choice ``1``."""
    for choice in allowed:
        if choice is None or isinstance(choice, bool) or isinstance(value, bool):
            if value is choice:
                return True
        elif type(value) is type(choice) and value == choice:
            return True
    return False


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}
_NULL_WORDS = {"null", "none", "~"}


def coerce_value(value: Any, hint: Any) -> Any:
    """Turn a YAML, command-line or MLflow value into the type ``hint`` names.

    The single coercer of every config section (trial parameters here, the space file's
    other sections in ``search.space``), so both refuse and accept the same values.
    Strings are read as the type (YAML 1.1 reads ``1e-3`` as a string; MLflow stores
    ``"True"``, ``"None"`` and ``"[64]"``). Bools are never numbers and numbers never
    bools: ``True`` for an int and ``1`` for a bool are refused, as they are almost
    always a value under the wrong key. ``Literal`` values get the literal's type but
    are not checked against the choices here: callers report those with a hint.

    Raises:
        ValueError: the value cannot be read as ``hint``.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if value is None:
            if optional:
                return None
            raise ValueError("null is not allowed")
        if optional and str not in members and isinstance(value, str) and value.strip().lower() in _NULL_WORDS:
            return None
        for member in members:
            try:
                return coerce_value(value, member)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{value!r} is none of {members}")
    if value is None:
        raise ValueError("null is not allowed")
    if origin is Literal:
        kinds = {type(a) for a in typing.get_args(hint)}
        return coerce_value(value, kinds.pop()) if len(kinds) == 1 else value
    if origin is tuple:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        if isinstance(value, str):
            value = [v for v in value.strip("[]() ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{value!r} is not a list")
        return tuple(coerce_value(v, item) for v in value)
    if hint is bool:
        if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError(f"{value!r} is not a bool")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError("a bool is not a number")
        if isinstance(value, str):
            text = value.strip()
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("a bool is not a number")
        if isinstance(value, str):
            return float(value.strip())
        if isinstance(value, numbers.Real):
            return float(value)
        raise ValueError(f"{value!r} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{value!r} is not a string")
    return value


__all__ = ["ConfigError", "DataConfig", "TrialConfig", "coerce_value", "field_choices", "field_types",
           "is_choice", "suggest_trial_key"]
