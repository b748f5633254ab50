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
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
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

        Raises:
            ValueError: an unknown key (with the closest valid key) or a value of the
                wrong kind (with the key, the value and what was expected).
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown trial parameter '{key}'{hint}")
            kwargs[key] = _coerce(key, value, cls.__dataclass_fields__[key].type)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of every setting (tuples as lists), e.g. for logging as parameters."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Check choices and value ranges that do not depend on the data or the backbone."""
        for name, allowed in _choices(type(self)).items():
            value = getattr(self, name)
            if value not in allowed:
                close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"trial parameter '{name}' must be one of {', '.join(map(str, allowed))}, "
                                 f"but got {value!r}{hint}")
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
                raise ValueError(f"trial parameter '{key}' must be {expected}, but got {value!r}")


@functools.lru_cache(maxsize=None)
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Allowed values of every ``Literal`` field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        options = [a for a in (typing.get_args(hint) if typing.get_origin(hint) is not Literal else (hint,))
                   if typing.get_origin(a) is Literal]
        if options:
            allowed = tuple(v for option in options for v in typing.get_args(option))
            out[name] = allowed + ((None,) if type(None) in typing.get_args(hint) else ())
    return out


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Turn YAML / command-line values into the field's type (``"1e-3"`` -> 0.001)."""
    ann = str(annotation)
    try:
        if ann.startswith("tuple"):
            if value is None:
                return ()
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if ann == "bool":
            return _to_bool(value)
        if ann == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if ann == "float":
            return float(value)
        if ann == "int | None":
            return None if value in (None, "null", "none", "None") else int(value)
        if ann == "bool | str":
            return value if not isinstance(value, str) or value.lower() not in _BOOLS else _to_bool(value)
    except (TypeError, ValueError):
        raise ValueError(f"trial parameter '{key}' expects {ann}, but got {value!r}") from None
    return value


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False, "none": False}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOLS:
        return _BOOLS[value.lower()]
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


__all__ = ["DataConfig", "TrialConfig"]
