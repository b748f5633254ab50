"""Test-time augmentation: the views of a preprocessed batch that an export averages over.

``search best --export DIR --tta flip|dihedral`` (or the space's ``export.tta``) makes the
exported graphs score every image in several orientations and average the members'
probabilities over them: ``flip`` adds the left-right mirror (2 views), ``dihedral`` the
8 rotations and mirrors of the square (for images with no natural orientation, such as
histology patches). The views act on the batch *after* preprocessing: a mirror or a
quarter turn commutes with per-channel normalisation and with a centre crop of a square
image, so they are exactly the views of the stored image. Off (``none``) by default: a
left-right mirror of a chest X-ray is a different anatomy, and every view costs one more
forward pass per member.
"""

from __future__ import annotations

import torch
from torch import nn

TTA_CHOICES = ("none", "flip", "dihedral")


def parse_tta(text: str) -> str:
    """``none``, ``flip`` or ``dihedral`` (case-insensitive).

    Raises:
        ValueError: anything else, naming the choices.
    """
    value = str(text).strip().lower()
    if value not in TTA_CHOICES:
        raise ValueError(f"--tta {text!r} is not a choice: use none, flip (the image and its left-right mirror) "
                         "or dihedral (the 8 rotations and mirrors, for images with no natural orientation)")
    return value


def view(x: torch.Tensor, index: int) -> torch.Tensor:
    """View ``index`` (0 = the batch itself) of an ``(B, C, S, S)`` batch: ``index % 4`` quarter
    turns of the mirror (``index >= 4``) or of the batch. ``flip`` uses views 0 and 4."""
    if index >= 4:
        x = torch.flip(x, dims=(-1,))
    turns = index % 4
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def view_indices(tta: str) -> tuple[int, ...]:
    """The views ``tta`` averages over, the batch itself first."""
    return {"none": (0,), "flip": (0, 4), "dihedral": tuple(range(8))}[parse_tta(tta)]


class Viewed(nn.Module):
    """A network that sees view ``index`` of its input: one (member, view) pair of a
    test-time-augmented soft vote, for scoring it alone."""

    def __init__(self, network: nn.Module, index: int) -> None:
        super().__init__()
        self.network = network
        self.index = int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(view(x, self.index))


__all__ = ["TTA_CHOICES", "Viewed", "parse_tta", "view", "view_indices"]
