"""Typed settings of one trial: what data to read and how to train on it.

A trial's configuration is flat on purpose: Ray Tune and Optuna sample flat dicts, and
``search trial --set key=value`` overrides one key at a time. ``TrialConfig.from_dict``
is the single place where a sampled dict becomes typed settings, and it rejects unknown
keys with the closest valid one so that a typo never silently falls back to a default.

Every setting of every settings dataclass (here and in ``search.space``) is declared once,
with :func:`setting`: its type (the annotation), its default, its one-line doc and its
rules (:class:`Rule`; choices come from a ``Literal`` annotation). Construction checks
them all (:func:`check_settings` in ``__post_init__``, so ``dataclasses.replace`` is
checked too), and ``search.space.docs`` prints them as the tables of
``spaces/README.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import operator
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

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


# ----------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Rule:
    """A rule one setting's value must follow, kept as data: checked, and printed in the README.

    Attributes:
        text: what the value must be, read after "must be": ``> 0``, ``in [0, 1)``,
            ``auto, cpu, cuda, cuda:N (a GPU index) or mps``.
        test: ``value -> bool``; ``(value, config) -> bool`` when ``uses`` is not empty.
        fix: how to repair a broken value, appended to the error; a callable gets the
            value and returns the fix (e.g. the closest valid spelling) or ``""``.
        uses: the other settings the rule compares with (``warmup_epochs < epochs``): they
            are named in the error and its ``keys``, and checked before such a rule runs.
    """

    text: str
    test: Callable[..., bool]
    fix: str | Callable[[Any], str] = ""
    uses: tuple[str, ...] = ()

    def holds(self, value: Any, config: Any) -> bool:
        return bool(self.test(value, config) if self.uses else self.test(value))

    def fix_for(self, value: Any) -> str:
        return self.fix(value) if callable(self.fix) else self.fix


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_RANGE = re.compile(rf"\s*(?:({_NUMBER})\s*(<=?)\s*x|x?)\s*(?:(<=?|>=?)\s*({_NUMBER}))?\s*")


def range_rule(spec: str, fix: str | Callable[[Any], str] = "") -> Rule:
    """A numeric range written as a comparison on ``x``: ``">= 1"``, ``"> 0"``, ``"0 <= x < 1"``.

    The value must also be finite (``nan`` and ``inf`` break every range). The rule's
    text is ``>= 1`` for one bound and the interval ``in [0, 1)`` for two.

    Raises:
        ValueError: ``spec`` is not such a comparison (a mistake in the schema itself).
    """
    match = _RANGE.fullmatch(spec)
    if not match or not (match[1] or match[3]) or (match[1] and match[3] and match[3][0] != "<"):
        raise ValueError(f"range rule {spec!r} must read like '>= 1', '> 0' or '0 <= x < 1'")
    bounds: list[tuple[str, float]] = []  # (operator applied as `x OP bound`, bound)
    if match[1]:
        bounds.append((_FLIP[match[2]], float(match[1])))
    if match[3]:
        bounds.append((match[3], float(match[4])))

    def test(value: Any) -> bool:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and all(_COMPARE[op](value, bound) for op, bound in bounds))

    def shown(bound: float) -> str:
        return str(int(bound)) if bound.is_integer() else repr(bound)

    if len(bounds) == 1:
        text = f"{bounds[0][0]} {shown(bounds[0][1])}"
    else:
        (low_op, low), (high_op, high) = bounds
        text = f"in {'[' if low_op == '>=' else '('}{shown(low)}, {shown(high)}{']' if high_op == '<=' else ')'}"
    return Rule(text, test, fix)


def setting(default: Any = dataclasses.MISSING, *, doc: str, rule: str | Rule | tuple[str | Rule, ...] = (),
            fix: str | Callable[[Any], str] = "") -> Any:
    """One settings-dataclass field: its default, its one-line doc and its rules.

    ``rule`` is a range such as ``">= 1"`` or ``"0 <= x < 1"`` (:func:`range_rule`, with
    ``fix``), a :class:`Rule`, or a tuple of them. Choices need no rule: a ``Literal``
    annotation is checked by :func:`check_settings`. A mutable default is not allowed
    (settings are frozen; use a tuple).
    """
    rules = rule if isinstance(rule, tuple) else (rule,)
    parsed = tuple(range_rule(r, fix) if isinstance(r, str) else r for r in rules)
    return dataclasses.field(default=default, metadata={"doc": doc, "rules": parsed})


def field_doc(cls: type, name: str) -> str:
    """The one-line doc of a settings field (``""`` when it has none)."""
    return cls.__dataclass_fields__[name].metadata.get("doc", "")


def field_rules(cls: type, name: str) -> tuple[Rule, ...]:
    """The rules of a settings field, besides its type and its ``Literal`` choices."""
    return cls.__dataclass_fields__[name].metadata.get("rules", ())


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` already has the type ``hint`` names, without coercing it.

    Strict like :func:`coerce_value`: a bool is not a number nor a number a bool, a
    ``float`` field takes any real number, a ``tuple`` field only a tuple; ``Literal``
    values are checked by :func:`check_choices`, not here.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(conforms(value, member) for member in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Literal:
        return is_choice(value, typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return isinstance(value, tuple) and all(conforms(v, item) for v in value)
    is_bool = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if hint is bool:
        return is_bool
    if hint is int:
        return isinstance(value, numbers.Integral) and not is_bool
    if hint is float:
        return isinstance(value, numbers.Real) and not is_bool
    if hint is str:
        return isinstance(value, str)
    return True


def _shown(value: Any) -> str:
    """A value as the user wrote it in YAML: tuples as lists."""
    return repr(list(value) if isinstance(value, tuple) else value)


def check_settings(config: Any, what: str = "") -> None:
    """Check every field of the settings dataclass ``config`` against its declaration.

    In order: every value's kind (a ``Literal`` field's choices, else its type), then the
    rules of single settings, then the rules between settings, each in field order, so
    ``epochs: 0`` is reported as itself before ``warmup_epochs < epochs`` is tried.
    ``what`` prefixes the key in messages (``trial parameter 'lr'``; bare ``lr`` when
    empty, for a section whose errors the space file already prefixes).

    Raises:
        ConfigError: the first broken rule: the key, the rule, the value and the fix.
    """
    cls = type(config)
    hints, choices = _hints(cls), _choices(cls)

    def label(name: str) -> str:
        return f"{what} '{name}'" if what else name

    check_choices(config, what)
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if f.name not in choices and not conforms(value, hints[f.name]):
            raise ConfigError(f.name, f"{label(f.name)} expects {f.type}, but got {_shown(value)}")
    for between in (False, True):
        for f in dataclasses.fields(cls):
            value = getattr(config, f.name)
            if value is None:  # an optional setting left unset: null is its documented meaning
                continue
            for rule in field_rules(cls, f.name):
                if bool(rule.uses) != between or rule.holds(value, config):
                    continue
                got = _shown(value)
                if rule.uses:
                    others = ", ".join(f"{k}={_shown(getattr(config, k))}" for k in rule.uses)
                    got = f"{f.name}={got} with {others}"
                fix = rule.fix_for(value)
                raise ConfigError((f.name, *rule.uses), f"{label(f.name)} must be {rule.text}, but got {got}"
                                                        + (f"; {fix}" if fix else ""))


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
            label = f"{what} '{name}'" if what else name
            raise ConfigError(name, f"{label} must be one of {', '.join(map(str, allowed))}, "
                                    f"but got {value!r}{hint}")


# ----------------------------------------------------------------------------- the settings


# Decoded images are held in memory as one uint8 array (n x size x size x channels). At
# 4096 px one RGB image is 48 MiB, so a few hundred of them already exceed a large
# machine's memory, and no ImageNet backbone is trained at more than ~600 px: a larger
# value is a typo or a whole-slide image that must be tiled first. Whether a smaller size
# fits depends on the number of images, which only the data loader knows.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled images are and how to turn them into splits.

    Each field's meaning, default and rule are declared with it (:func:`setting`) and
    printed in the ``data`` table of ``spaces/README.md``. Construction checks them all,
    the data-free ones included (choices, ``image_size`` at most :data:`MAX_IMAGE_SIZE`,
    the fractions, the blank thresholds), so ``channels: 2`` or ``image_size: 100000`` is
    refused before any decoding starts; the loader checks what needs the data.

    The blank-filter defaults were read off the PCam patches: they drop empty glass
    (white, grey or tan) and black scanner borders, and keep patches showing any tissue.
    """

    source: str = setting(doc="`.npz` (MedMNIST), `.csv` manifest, `.zip` holding `labels.csv`, ImageFolder "
                              "directory or Kaggle-PCam directory (`train_labels.csv`); a relative path in a "
                              "space file resolves under `$MEDTUNE_DATA` (default `./data`)")
    format: Literal["auto", "npz", "csv", "imagefolder", "kaggle_pcam"] = setting(
        "auto", doc="how to read `source`; `auto` detects it")
    path_column: str = setting("path", doc="CSV column with each image's path")
    label_column: str = setting("label", doc="CSV column with each image's label: a class index 0..K-1 or a "
                                             "class name (`benign`, `malignant`: classes in sorted order)")
    split_column: str | None = setting(None, doc="CSV column with `train`/`val`/`test` (`valid` accepted); "
                                                 "null: the `split` column when there is one")
    group_column: str | None = setting(None, doc="patient/group id column: no group is ever in two splits; "
                                                 "null: no groups")
    label_name_column: str | None = setting(None, doc="CSV column with class names; null: the `label_name` "
                                                      "column when there is one")
    classes: tuple[str, ...] = setting(
        (), doc="the class names in class-index order, to fix the order (and so the positive class, index 1 of "
                "two) of class names in the labels, a `label_name` column or ImageFolder folders; every class "
                "of the data once; []: sorted names (or the source's order)",
        rule=Rule("distinct names", lambda v: len(set(v)) == len(v) and all(str(n).strip() for n in v),
                  "list each class name once, e.g. [normal, pneumonia]"))
    window: tuple[float, ...] = setting(
        (), doc="DICOM files: the display window `[centre, width]` (in the modality's units, e.g. `[40, 400]` for "
                "soft tissue in CT Hounsfield units) mapped to 0..255; []: each file's own WindowCenter/WindowWidth, "
                "else its min-max",
        rule=Rule("[] or [centre, width] with width > 0",
                  lambda v: len(v) == 0 or (len(v) == 2 and all(math.isfinite(x) for x in v) and v[1] > 0),
                  "e.g. window: [40, 400]"))
    image_size: int | None = setting(
        None, doc="decode every image to this square size; null: the native size, which must then be the "
                  "same for every image",
        rule=f"1 <= x <= {MAX_IMAGE_SIZE}",
        fix="decode to a size the backbone uses (e.g. 224), tile larger images first, or null for the native size")
    channels: Literal[1, 3] | None = setting(None, doc="channels at decode time, 1 (grayscale) or 3 (RGB); "
                                                       "null: 1 when every image is grayscale, else 3")
    val_fraction: float = setting(
        0.15, doc="share of the data for the val split when the source has none",
        rule=("0 <= x < 1", Rule("< 1 - test_fraction", lambda v, c: v + c.test_fraction < 1.0,
                                 "the train split needs the rest: lower val_fraction or test_fraction",
                                 uses=("test_fraction",))))
    test_fraction: float = setting(0.15, doc="share of the data for the test split when the source has none",
                                   rule="0 <= x < 1")
    train_fraction: float = setting(1.0, doc="stratified subsample of the training split, for every trial",
                                    rule="0 < x <= 1")
    seed: int = setting(0, doc="seeds the split and the subsample: same seed, same split in every trial and run",
                        rule=">= 0")
    blank_filter: bool = setting(True, doc="skip near-blank patches: mean >= `blank_white` or <= `blank_black`, "
                                           "and spatial std <= `blank_max_std` in every channel")
    blank_white: float = setting(200.0, doc="mean brightness from which a flat patch is blank (white glass)",
                                 rule="0 <= x <= 255")
    blank_black: float = setting(
        40.0, doc="mean brightness up to which a flat patch is blank (black border)",
        rule=("0 <= x <= 255", Rule("< blank_white", lambda v, c: v < c.blank_white, uses=("blank_white",))))
    blank_max_std: float = setting(6.0, doc="largest spatial standard deviation of a blank patch",
                                   rule=">= 0")
    cache_dir: str | None = setting(None, doc="where decoded arrays are cached; null: `$MEDTUNE_CACHE`, else "
                                              "`~/.cache/medtune`")
    allow_group_overlap: bool = setting(
        False, doc="accept a source whose own splits (a split column, official train/test folders) put one "
                   "group in two splits; refused by default, since a patient in train and test inflates the "
                   "test score; when true, a warning, and the model card says so (Kermany numbers patients "
                   "per official split)")

    def __post_init__(self) -> None:
        check_settings(self, "data setting")

    def validate(self) -> None:
        """Check every setting again (construction already did; kept for callers that ask).

        Raises:
            ConfigError: naming the key, the value and what is allowed.
        """
        check_settings(self, "data setting")


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


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs besides the data: model, optimisation, input, seed.

    Each field's meaning, default and rule are declared with it (:func:`setting`) and
    printed in the trial-parameter table of ``spaces/README.md``; construction checks
    them all. The fields come in groups: the model (``backbone`` .. ``initializer``),
    the optimisation and the learning-rate schedule (``optimizer`` ..
    ``class_weighting``), input and augmentation (``crop_size`` .. ``aug_shift``), the
    per-trial data subsample, the seed, and the hardware (``device``, ``precision``).
    Ranges that depend on the backbone (``frozen_stages``, ``truncate_after``) are
    checked by ``trainables.models``.
    """

    backbone: str = setting("cnn3", doc="any timm model name, or `cnn3` / `cnn9` (from-scratch baselines)")
    pretrained: bool | str = setting(
        False, doc="false (or `none`): train from scratch; true: ImageNet weights (the installed offline "
                   "package for the backbone, else the timm hub); `hub`: force the timm hub; any other "
                   "string: a local `.safetensors`/`.pth` file")
    in_chans: Literal[1, 3] | None = setting(None, doc="network input channels; null: the data's channels")
    frozen_stages: int = setting(0, doc="backbone stages kept frozen from the input: 0 fine-tunes everything, "
                                        "all stages = feature extraction", rule=">= 0")
    truncate_after: int | None = setting(None, doc="keep backbone stages 0..k only; null: the full network",
                                         rule=">= 0", fix="null keeps the full network")
    head_hidden: tuple[int, ...] = setting(
        (), doc="widths of the head's hidden layers; [] = a linear head",
        rule=Rule("positive widths", lambda v: all(h >= 1 for h in v), "[] for a linear head"))
    head_activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = setting(
        "relu", doc="activation between head layers")
    dropout: float = setting(0.0, doc="dropout before each head layer", rule="0 <= x < 1")
    initializer: Initializer = setting("default", doc="head initializer; also the whole network's when not "
                                                      "pretrained (`glorot_*` = `xavier_*`)")

    optimizer: Optimizer = setting("adam", doc="the torch optimizer")
    lr: float = setting(1e-3, doc="learning rate of the head (of every layer when `lr_ratio` is 1)",
                        rule="> 0", fix="e.g. 1e-3")
    # sgd and rmsprop keep `momentum` of the previous step; 1 never forgets a gradient.
    momentum: float = setting(0.9, doc="momentum of sgd and rmsprop", rule="0 <= x < 1", fix="e.g. 0.9")
    nesterov: bool = setting(False, doc="Nesterov momentum (sgd)")
    weight_decay: float = setting(0.0, doc="decoupled weight decay; not on norms and biases", rule=">= 0")
    l1: float = setting(0.0, doc="L1 loss penalty on the weights (not norms or biases), as in Keras", rule=">= 0")
    l2: float = setting(0.0, doc="L2 loss penalty on the weights (not norms or biases), as in Keras", rule=">= 0")
    penalty_scope: Literal["all", "head"] = setting(
        "all", doc="weights that `l1`/`l2` penalise: `head` = the head's only, like Keras regularisers on the "
                   "dense layers")
    lr_ratio: float = setting(1.0, doc="learning rate of the first backbone stage / the head's; the stages in "
                                       "between are interpolated geometrically (discriminative lr)",
                              rule="> 0", fix="1.0 = one lr everywhere")
    schedule: Schedule = setting("constant", doc="learning-rate schedule")
    # Every schedule but onecycle (which ignores it) would still be warming up when
    # training ends, so the configured lr would never be reached.
    warmup_epochs: float = setting(
        0.0, doc="epochs of linear warmup (fractions allowed; onecycle ignores it); 0 = none",
        rule=(">= 0", Rule("< epochs (any for onecycle)",
                           lambda v, c: c.schedule == "onecycle" or v < c.epochs,
                           "lower warmup_epochs or raise epochs", uses=("epochs",))))
    # the step schedule decays every step_size epochs (0 used to be read as 1).
    step_size: int = setting(10, doc="`step` decays the lr every `step_size` epochs", rule=">= 1")
    # multiplying the lr by gamma above 1 grows it; 0 stops training after the first decay.
    gamma: float = setting(0.1, doc="lr decay factor of `step`, `multistep`, `exponential` and `plateau`",
                           rule="0 < x <= 1", fix="e.g. 0.1")
    # multistep decays once per milestone passed; a repeated or unsorted list is a typo.
    milestones: tuple[int, ...] = setting(
        (), doc="epochs at which `multistep` decays the lr",
        rule=Rule("strictly increasing epochs >= 1", lambda v: all(m >= 1 for m in v)
                  and all(a < b for a, b in zip(v, v[1:])), "e.g. [30, 60]"))
    # cosine's floor as a fraction of lr: above 1 the cosine would rise.
    min_lr_ratio: float = setting(0.0, doc="`cosine`'s final lr as a fraction of `lr`", rule="0 <= x <= 1")
    plateau_patience: int = setting(2, doc="epochs without improvement before `plateau` decays the lr",
                                    rule=">= 0")
    batch_size: int = setting(64, doc="training images per batch", rule=">= 1")
    eval_batch_size: int | None = setting(
        None, doc="images per evaluation batch; null: the training batch on the CPU, 4x it (at least 256) on "
                  "a GPU", rule=">= 1", fix="null sizes it by device")
    epochs: int = setting(10, doc="training epochs (ASHA may stop a trial earlier)", rule=">= 1")
    class_weighting: Literal["none", "balanced"] = setting(
        "none", doc="`balanced`: the loss weighted by inverse class frequency")

    crop_size: int | None = setting(None, doc="centre crop of the stored image, in pixels; null: the whole image",
                                    rule=">= 8")
    input_size: int | None = setting(None, doc="size the crop is resized to; null: the crop size", rule=">= 8")
    aug_flip: bool = setting(True, doc="random horizontal and vertical flips")
    aug_rot90: bool = setting(False, doc="random 90° rotations (square inputs)")
    aug_color: float = setting(0.0, doc="brightness/contrast jitter strength; 0 = none", rule=">= 0")
    aug_shift: int = setting(0, doc="random offset of the crop around the centre, in pixels; 0 = none",
                             rule=">= 0")

    train_fraction: float = setting(1.0, doc="stratified, seeded subsample of the training split for this "
                                             "trial, nested (0.05 is inside 0.2): training-size studies",
                                    rule="0 < x <= 1")
    cv_folds: int = setting(1, doc="folds the trial cross-validates over train + val (its metrics are fold means); "
                                   "1: the single train/val split. Not a `params`/`search` key: a study sets it "
                                   "from `tune.cv_folds` (or `--cv`)",
                            rule=">= 1")
    seed: int = setting(0, doc="seeds model init, shuffling and augmentation", rule="0 <= x <= 4294967295")
    device: str = setting(
        "auto", doc="where the trial trains: `auto` = CUDA when present",
        rule=Rule("auto, cpu, cuda, cuda:N (a GPU index) or mps",
                  lambda v: bool(_DEVICE.fullmatch(v)), lambda v: f"did you mean '{h}'?" if (h := _device_hint(v))
                  else ""))
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", doc="`auto`: bf16 autocast on CUDA, fp32 on the CPU; `bf16` also on the CPU (2-3x faster for "
                    "`cnn3`/ResNets on CPUs with AMX, slower for EfficientNets, several times slower on CPUs "
                    "without native bf16; see docs/benchmarks.md); `fp32` never autocasts")

    def __post_init__(self) -> None:
        check_settings(self, "trial parameter")

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
        other sections), then construction checks choices and ranges.

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
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of every setting (tuples as lists), e.g. for logging as parameters."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Check every setting again (construction already did; kept for callers that ask).

        Raises:
            ConfigError: the first broken rule, with the value and what is allowed;
                ``keys`` names the parameters involved (two for a rule between them).
        """
        check_settings(self, "trial parameter")


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


__all__ = ["ConfigError", "DataConfig", "Rule", "TrialConfig", "check_settings", "coerce_value", "conforms",
           "field_choices", "field_doc", "field_rules", "field_types", "is_choice", "range_rule", "setting",
           "suggest_trial_key"]
