"""Weight initializers under their Keras / config names.

The papers medtune reproduces were written in Keras, so the names and definitions are
Keras's: ``glorot_*`` is ``xavier_*``, ``lecun_normal`` is a truncated normal with
standard deviation ``sqrt(1 / fan_in)`` and ``lecun_uniform`` is ``U(-l, l)`` with
``l = sqrt(3 / fan_in)``. ``kaiming_*`` use the ReLU gain (``std = sqrt(2 / fan_in)``,
``l = sqrt(6 / fan_in)``), as Keras's ``he_*``.

Only convolution and linear weights are drawn; their biases become 0, and norm layers
get weight 1 and bias 0 (as every framework does), so a from-scratch network depends on
the chosen initializer and the seed only.

Example:
    >>> layer = nn.Linear(400, 10)
    >>> init_module(layer, "lecun_uniform")
    >>> bool(layer.weight.abs().max() <= (3 / 400) ** 0.5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from trainables.models.errors import ModelError

# Standard deviation of a standard normal truncated to [-2, 2]; dividing by it makes a
# truncated draw have the requested standard deviation (Keras's VarianceScaling does this).
_TRUNC_STD = 0.87962566103423978


def _fan_in(weight: torch.Tensor) -> int:
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    return fan_in


def _lecun_normal(weight: torch.Tensor) -> None:
    std = math.sqrt(1.0 / _fan_in(weight)) / _TRUNC_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _lecun_uniform(weight: torch.Tensor) -> None:
    limit = math.sqrt(3.0 / _fan_in(weight))
    nn.init.uniform_(weight, -limit, limit)


INITIALIZERS: dict[str, Callable[[torch.Tensor], object]] = {
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "glorot_normal": nn.init.xavier_normal_,
    "glorot_uniform": nn.init.xavier_uniform_,
    "lecun_normal": _lecun_normal,
    "lecun_uniform": _lecun_uniform,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
}
"""Config name -> in-place initializer of one weight tensor (``default`` is not here)."""

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def init_module(module: nn.Module, initializer: str) -> None:
    """Re-initialise every conv/linear layer and norm layer inside ``module`` in place.

    Args:
        module: any network; layers other than conv, linear and norms (e.g. a ViT's
            position embedding) keep their values.
        initializer: a key of :data:`INITIALIZERS`; ``default`` leaves ``module`` as built.

    Raises:
        ModelError: unknown initializer name.
    """
    if initializer == "default":
        return
    if initializer not in INITIALIZERS:
        raise ModelError(f"initializer must be one of {['default', *INITIALIZERS]}, but got {initializer!r}")
    draw = INITIALIZERS[initializer]
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, _WEIGHTED):
                draw(layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
            elif isinstance(layer, _NORMS):
                if getattr(layer, "weight", None) is not None:
                    layer.weight.fill_(1.0)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.zero_()


__all__ = ["INITIALIZERS", "init_module"]
