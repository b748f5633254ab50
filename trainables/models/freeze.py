"""Freezing stages as a named operation: gradient flags plus BatchNorm statistics.

A frozen stage must not change at all, and ``requires_grad=False`` alone does not get
there: BatchNorm layers in train mode keep updating their running mean and variance.
So frozen stages' norm layers with running statistics are put in eval mode, and again
after every ``model.train()`` (Keras's ``trainable=False`` semantics).

Unfreezing only flips flags on the same Parameter objects (unlike timm's
``unfreeze``, which rebuilds BatchNorm parameters), so an optimizer holding one
parameter group per stage keeps working through gradual unfreezing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import nn


def has_running_stats(module: nn.Module) -> bool:
    """True for BatchNorm-like layers (incl. timm's ``BatchNormAct2d``) that track statistics."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


def stat_norms(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every norm layer with running statistics in ``model``."""
    return ((name, module) for name, module in model.named_modules() if has_running_stats(module))


def set_requires_grad(model: nn.Module, stage_of: Mapping[str, int], frozen_stages: int) -> None:
    """Parameters of stages ``< frozen_stages`` stop training, the others train."""
    for name, param in model.named_parameters():
        param.requires_grad_(stage_of[name] >= frozen_stages)


def set_norm_modes(model: nn.Module, module_stage: Mapping[str, int], frozen_stages: int, training: bool) -> None:
    """Frozen stages' running-stat norms -> eval; the others follow ``training``."""
    for name, module in stat_norms(model):
        module.train(training and module_stage[name] >= frozen_stages)


__all__ = ["has_running_stats", "set_norm_modes", "set_requires_grad", "stat_norms"]
