"""Optimizer, learning-rate schedule and L1/L2 penalties of one trial.

The optimizer always holds one parameter group per stage (backbone stages, then the
head), split again into decayed weights and undecayed norms/biases. Frozen stages keep
their groups with ``requires_grad=False``: gradual unfreezing flips flags and never
calls ``add_param_group``, which breaks several LR schedulers (pytorch#79888).

Discriminative learning rates: ``lr_ratio`` is the first stage's lr divided by the
head's; stages in between get geometrically interpolated factors. Unlike layer-wise decay
over a backbone's fine layer groups, this means the same thing for every backbone.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from trainables.config import TrialConfig


def stage_lr_factors(num_stages: int, lr_ratio: float) -> list[float]:
    """Learning-rate factor per stage; the head (index ``num_stages``) gets 1.

    >>> [round(f, 3) for f in stage_lr_factors(2, 0.01)]
    [0.01, 0.1, 1.0]
    """
    return [lr_ratio ** ((num_stages - s) / num_stages) for s in range(num_stages)] + [1.0]


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weights of convolutions and linear layers; not biases, norms or 1-d scales."""
    return param.ndim > 1 and not name.endswith(".bias")


def build_optimizer(model: nn.Module, stage_of: dict[str, int], num_stages: int, config: TrialConfig) -> torch.optim.Optimizer:
    """One group per (stage, decayed?) pair, with the stage's learning rate."""
    factors = stage_lr_factors(num_stages, config.lr_ratio)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        groups.setdefault((stage_of[name], is_decayed(name, param)), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": config.lr * factors[stage],
            "weight_decay": config.weight_decay if decayed else 0.0,
            "stage": stage,
        }
        for (stage, decayed), params in sorted(groups.items())
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    raise ValueError(f"optimizer must be one of sgd, adam, adamw, rmsprop, but got {config.optimizer!r}")


def penalty(named_params: Iterable[tuple[str, nn.Parameter]], l1: float, l2: float) -> torch.Tensor | None:
    """Keras-style ``l1 * sum|w| + l2 * sum w^2`` over trainable decayed weights."""
    if l1 == 0 and l2 == 0:
        return None
    total: torch.Tensor | None = None
    for name, param in named_params:
        if not param.requires_grad or not is_decayed(name, param):
            continue
        term = 0.0
        if l1:
            term = term + l1 * param.abs().sum()
        if l2:
            term = term + l2 * param.pow(2).sum()
        total = term if total is None else total + term
    return total


class Schedule:
    """Per-step learning-rate schedule plus the epoch-level plateau rule.

    Every schedule except ``plateau`` is a multiplicative factor of the step (computed
    from the fractional epoch, so the same config means the same curve at any batch
    size) with optional linear warmup. ``plateau`` multiplies the factor by ``gamma``
    when the validation loss has not improved for ``plateau_patience`` epochs.
    ``onecycle`` is the triangular-cosine one-cycle policy (peak = lr at 30%).
    The state is two numbers and a counter, so resuming restores it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrialConfig, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.config = config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau_factor = 1.0
        self.best_loss = math.inf
        self.bad_epochs = 0
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rates at optimizer step ``step``."""
        c = self.config
        epoch = step / self.steps_per_epoch
        if c.schedule == "onecycle":
            return _one_cycle(epoch / c.epochs)
        warm = min(1.0, (epoch + 1.0 / self.steps_per_epoch) / c.warmup_epochs) if c.warmup_epochs > 0 else 1.0
        whole = math.floor(epoch)
        if c.schedule in ("constant", "plateau"):
            value = 1.0
        elif c.schedule == "step":
            value = c.gamma ** (whole // max(1, c.step_size))
        elif c.schedule == "multistep":
            value = c.gamma ** sum(whole >= m for m in c.milestones)
        elif c.schedule == "exponential":
            value = c.gamma**whole
        elif c.schedule == "cosine":
            span = max(1e-8, c.epochs - c.warmup_epochs)
            progress = min(1.0, max(0.0, (epoch - c.warmup_epochs) / span))
            value = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"schedule must be one of constant, step, multistep, exponential, cosine, onecycle, plateau, but got {c.schedule!r}")
        return warm * value * self.plateau_factor

    def step(self) -> None:
        """Advance one optimizer step."""
        self.step_count += 1
        self._apply()

    def end_epoch(self, val_loss: float) -> None:
        """Feed the epoch's validation loss to the plateau rule."""
        if self.config.schedule != "plateau":
            return
        if val_loss < self.best_loss - 1e-4:
            self.best_loss, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.config.plateau_patience:
                self.plateau_factor *= self.config.gamma
                self.bad_epochs = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, float | int]:
        return {
            "step_count": self.step_count,
            "plateau_factor": self.plateau_factor,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_factor = float(state["plateau_factor"])
        self.best_loss = float(state["best_loss"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()


def _one_cycle(progress: float, peak_at: float = 0.3, start: float = 1 / 25, end: float = 1 / 1e4) -> float:
    """Factor of the one-cycle policy (Smith 2018) as in ``torch.optim.lr_scheduler.OneCycleLR``."""
    progress = min(1.0, max(0.0, progress))
    if progress < peak_at:
        t = progress / peak_at
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = (progress - peak_at) / (1 - peak_at)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
