"""From-scratch baseline CNNs with timm's backbone protocol.

The "scratch vs transfer" question needs small networks trained from random weights.
``cnn3`` follows the PCam course report (three blocks of conv -> ReLU -> BatchNorm ->
max-pool, 32/64/128 filters); ``cnn9`` the classic Kaggle PCam kernel (three blocks of
three 3x3 convs, 32/64/128 filters, max-pool after each block). Both end in global
average pooling instead of ``Flatten`` so that any input size works and the head is the
same as for timm backbones.

They speak the same protocol as a timm model built with ``num_classes=0``, so the rest of
:mod:`trainables.models` treats them alike: ``feature_info`` (one stage per block),
``num_features``, ``head_hidden_size``, ``pretrained_cfg``, ``forward`` returning pooled
features, ``prune_intermediate_layers`` for truncation and ``reset_classifier``.

Example:
    >>> net = create_scratch("cnn9", in_chans=1)
    >>> net(torch.zeros(2, 1, 96, 96)).shape
    torch.Size([2, 128])
    >>> [info["module"] for info in net.feature_info]
    ['stages.0', 'stages.1', 'stages.2']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Scratch nets have no pretraining statistics to match. 0.5 / 0.25 maps [0, 1] pixels
# to [-2, 2]: zero-centred with roughly unit spread for typical histology and X-ray
# intensities, which is what the first conv (before any BatchNorm) needs. The exact
# values matter little because every block normalises its activations.
SCRATCH_MEAN = 0.5
SCRATCH_STD = 0.25


@dataclass(frozen=True)
class ScratchSpec:
    """Shape of a scratch CNN: filters per block and convs per block."""

    widths: tuple[int, ...]
    convs_per_block: int
    norm: bool = True

    @property
    def num_stages(self) -> int:
        """One feature stage per block."""
        return len(self.widths)


SCRATCH_MODELS: dict[str, ScratchSpec] = {
    "cnn3": ScratchSpec(widths=(32, 64, 128), convs_per_block=1),
    "cnn9": ScratchSpec(widths=(32, 64, 128), convs_per_block=3),
}
"""Registered scratch baselines, usable as ``backbone`` alongside timm names."""


def _block(in_chs: int, out_chs: int, convs: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_chs if i == 0 else out_chs, out_chs, 3, padding=1), nn.ReLU(inplace=True)]
        if norm:
            layers.append(nn.BatchNorm2d(out_chs))
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute stage indices to keep and the largest, as timm's helper of the same name.

    ``None``: all stages; an int ``n``: the last ``n``; a list: those indices (negative
    from the end). Kept here so that a scratch trial never imports timm.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = list(range(num_features - indices, num_features))
    else:
        take = [num_features + i if i < 0 else i for i in indices]
        if not all(0 <= i < num_features for i in take):
            raise ValueError(f"feature indices {list(indices)} out of range (0 to {num_features - 1})")
    return take, max(take)


class ScratchCNN(nn.Module):
    """Plain VGG-style CNN: blocks of 3x3 conv -> ReLU -> BatchNorm, max-pool per block.

    Args:
        widths: filters of each block (one feature stage per block).
        convs_per_block: 3x3 convolutions in each block.
        in_chans: input channels.
        norm: BatchNorm after each ReLU (the course report's "(bn)").
    """

    def __init__(self, widths: Sequence[int], convs_per_block: int = 1, in_chans: int = 3, norm: bool = True):
        super().__init__()
        chs = [in_chans, *widths]
        self.stages = nn.Sequential(*[_block(chs[i], chs[i + 1], convs_per_block, norm) for i in range(len(widths))])
        self.feature_info = [
            {"module": f"stages.{i}", "num_chs": w, "reduction": 2 ** (i + 1)} for i, w in enumerate(widths)
        ]
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.pretrained_cfg = {
            "input_size": (in_chans, 96, 96),
            "interpolation": "bilinear",
            "mean": (SCRATCH_MEAN,) * in_chans,
            "std": (SCRATCH_STD,) * in_chans,
            "crop_pct": 1.0,
            "num_classes": 0,
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last kept stage."""
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features, shape ``(B, num_features)``."""
        return torch.flatten(self.global_pool(self.stages(x)), 1)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the largest index, as timm models do.

        Args:
            indices: int = keep the last n stages' outputs (timm semantics), list = indices.
            prune_norm: unused, for protocol compatibility.
            prune_head: unused (there is no classifier).

        Returns:
            The absolute indices kept.
        """
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
        return take

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Protocol stub: scratch backbones never carry a classifier."""
        if num_classes:
            raise ValueError("scratch backbones return features; put the classifier in the head")


def create_scratch(name: str, in_chans: int = 3) -> ScratchCNN:
    """Build a registered scratch baseline by name (``cnn3``, ``cnn9``)."""
    spec = SCRATCH_MODELS[name]
    return ScratchCNN(spec.widths, spec.convs_per_block, in_chans=in_chans, norm=spec.norm)


__all__ = ["SCRATCH_MEAN", "SCRATCH_MODELS", "SCRATCH_STD", "ScratchCNN", "ScratchSpec", "create_scratch"]
