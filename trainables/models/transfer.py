"""The trial's network: a staged backbone plus a head, and the factory from a config.

Example:
    >>> from trainables.config import TrialConfig
    >>> model = build_model(TrialConfig(backbone="resnet18", frozen_stages=5), num_classes=2, in_chans=1)
    >>> model.num_stages, model.trainable_parameters()[0]  # feature extraction: head only
    (5, 1026)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import TrialConfig
from trainables.models.backbone import (
    backbone_stages,
    create_backbone,
    data_config,
    feature_dim,
    feature_modules,
    module_stages,
    pretrained_mode,
    truncate,
)
from trainables.models.errors import ModelError
from trainables.models.freeze import set_norm_modes, set_requires_grad
from trainables.models.head import build_head
from trainables.models.init import init_module
from trainables.models.scratch import SCRATCH_MODELS


class TransferModel(nn.Module):
    """Backbone (pooled features) + head, with stage-wise freezing.

    Attributes:
        backbone: timm model with ``num_classes=0`` or a scratch CNN.
        head: MLP from :func:`~trainables.models.head.build_head`.
        backbone_name: the name it was built from.
        stage_names: module names of the kept feature stages.
        num_stages: number of kept stages; the head is stage ``num_stages``.
        frozen_stages: stages ``< frozen_stages`` are frozen.
        data_config: ``mean``/``std`` (one per input channel), ``input_size`` and timm's
            other input settings, for normalising the images.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        stage_names: Sequence[str],
        frozen_stages: int = 0,
        data_config: dict | None = None,
        backbone_name: str = "",
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_name = backbone_name or type(backbone).__name__
        self.stage_names = tuple(stage_names)
        self.num_stages = len(self.stage_names)
        self.data_config = dict(data_config or {})
        backbone_modules = module_stages(backbone, self.stage_names)
        self._module_stage = {f"backbone.{k}" if k else "backbone": v for k, v in backbone_modules.items()}
        self._module_stage.update({f"head.{k}" if k else "head": self.num_stages for k, _ in head.named_modules()})
        self.frozen_stages = 0
        self.freeze(frozen_stages)

    def stage_of(self) -> dict[str, int]:
        """Parameter name (as in ``named_parameters()``) -> stage; the head is ``num_stages``."""
        return {name: self._module_stage[name.rpartition(".")[0]] for name, _ in self.named_parameters()}

    def freeze(self, frozen_stages: int) -> None:
        """Freeze stages ``< frozen_stages``, unfreeze the rest (head included).

        Re-callable for gradual unfreezing: only ``requires_grad`` flags and norm modes
        change, the Parameter objects stay, so an existing optimizer keeps them.

        Raises:
            ModelError: ``frozen_stages`` outside ``0..num_stages``.
        """
        check_frozen_stages(frozen_stages, self.num_stages, self.backbone_name)
        self.frozen_stages = int(frozen_stages)
        set_requires_grad(self, self.stage_of(), self.frozen_stages)
        set_norm_modes(self, self._module_stage, self.frozen_stages, self.training)

    def train(self, mode: bool = True) -> "TransferModel":
        """Set train/eval mode, keeping frozen stages' BatchNorm statistics fixed."""
        super().train(mode)
        set_norm_modes(self, self._module_stage, self.frozen_stages, mode)
        return self

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts (log the fraction per trial)."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def stage_sizes(self) -> list[int]:
        """Parameter count per stage, head last (index ``num_stages``)."""
        sizes = [0] * (self.num_stages + 1)
        stage_of = self.stage_of()
        for name, param in self.named_parameters():
            sizes[stage_of[name]] += param.numel()
        return sizes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, C)``, e.g. for linear probes."""
        out = self.backbone(x)
        if out.ndim == 4:  # a backbone that ignored global pooling after pruning
            out = F.adaptive_avg_pool2d(out, 1)
        return torch.flatten(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.features(x))


def check_frozen_stages(frozen_stages: int, num_stages: int, backbone: str, truncated: int | None = None) -> None:
    """Raise :class:`ModelError` unless ``0 <= frozen_stages <= num_stages``."""
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not 0 <= frozen_stages <= num_stages:
        kept = f"truncated after stage {truncated}, " if truncated is not None else ""
        raise ModelError(
            f"frozen_stages must be in 0..{num_stages} for {backbone} ({kept}{num_stages} stages; "
            f"0 = fine-tune everything, {num_stages} = train only the head), but got {frozen_stages!r}"
        )


def check_model_config(config: TrialConfig) -> int:
    """Validate the model settings of ``config`` without building anything heavy.

    For the search CLI before Ray starts: backbone name, truncation and frozen-stage
    ranges, and that a local weights file exists.

    Returns:
        The number of stages the model will have.

    Raises:
        ModelError: the first problem found, with the valid range or close matches.
    """
    total = backbone_stages(config.backbone)
    cut = config.truncate_after
    if cut is not None and not 0 <= cut < total:
        raise ModelError(
            f"truncate_after must be null (full network) or a stage index in 0..{total - 1} for "
            f"{config.backbone} ({total} stages), but got {cut!r}"
        )
    kept = total if cut is None else cut + 1
    check_frozen_stages(config.frozen_stages, kept, config.backbone, cut)
    mode = pretrained_mode(config.pretrained)
    if config.backbone in SCRATCH_MODELS and mode in ("imagenet", "hub"):
        raise ModelError(f"backbone {config.backbone!r} is a from-scratch baseline without ImageNet weights; "
                         f"set pretrained: false")
    if not isinstance(mode, str) and not mode.is_file():
        raise ModelError(
            f"pretrained weights file '{mode}' does not exist; give an existing .safetensors/.pth "
            f"file, true for ImageNet weights or false for random init"
        )
    return kept


def build_model(config: TrialConfig, num_classes: int, in_chans: int) -> TransferModel:
    """Build the trial's model: backbone (+weights), truncation, init, head, freezing.

    Args:
        config: the trial's settings (``backbone``, ``pretrained``, ``in_chans``,
            ``frozen_stages``, ``truncate_after``, ``head_*``, ``dropout``, ``initializer``).
        num_classes: logits of the head.
        in_chans: channels of the images; ``config.in_chans`` overrides it when set.

    Raises:
        ModelError: invalid model settings, raised before any weights are loaded.
    """
    kept = check_model_config(config)
    in_chans = config.in_chans or in_chans
    backbone = create_backbone(config.backbone, config.pretrained, in_chans)
    if config.truncate_after is not None:
        truncate(backbone, config.truncate_after)
    if pretrained_mode(config.pretrained) == "none":
        init_module(backbone, config.initializer)
    head = build_head(
        feature_dim(backbone),
        num_classes,
        hidden=config.head_hidden,
        activation=config.head_activation,
        dropout=config.dropout,
        initializer=config.initializer,
    )
    return TransferModel(
        backbone,
        head,
        feature_modules(backbone)[:kept],
        frozen_stages=config.frozen_stages,
        data_config=data_config(backbone, in_chans),
        backbone_name=config.backbone,
    )


__all__ = ["TransferModel", "build_model", "check_frozen_stages", "check_model_config"]
