"""Classification head on top of pooled backbone features.

``[dropout -> linear -> activation] * len(hidden) -> dropout -> linear``: the shape of
the Keras heads in the papers (``Dense(256, relu)`` + ``Dropout`` + ``Dense(classes)``).
Dropout modules are always present (``p=0`` is a no-op) so the state-dict keys do not
depend on the dropout rate. The head is always initialised with the trial's initializer;
``default`` means Keras's default ``glorot_uniform`` rather than PyTorch's
``kaiming_uniform(a=sqrt(5))``, so a head is comparable across backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainables.models.errors import ModelError
from trainables.models.init import init_module

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def build_head(
    in_features: int,
    num_classes: int,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    dropout: float = 0.0,
    initializer: str = "default",
) -> nn.Sequential:
    """Build the head MLP.

    Args:
        in_features: width of the backbone's pooled features.
        num_classes: number of logits.
        hidden: widths of hidden layers; empty gives dropout + linear.
        activation: key of :data:`ACTIVATIONS`.
        dropout: probability of the dropout before each linear layer.
        initializer: initializer name; ``default`` is ``xavier_uniform`` here.

    Example:
        >>> build_head(512, 2, hidden=(256,), dropout=0.5)
        Sequential(
          (0): Dropout(p=0.5, inplace=False)
          (1): Linear(in_features=512, out_features=256, bias=True)
          (2): ReLU()
          (3): Dropout(p=0.5, inplace=False)
          (4): Linear(in_features=256, out_features=2, bias=True)
        )
    """
    if activation not in ACTIVATIONS:
        raise ModelError(f"head_activation must be one of {sorted(ACTIVATIONS)}, but got {activation!r}")
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, but got {num_classes}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
    head = nn.Sequential(*layers)
    init_module(head, "xavier_uniform" if initializer == "default" else initializer)
    return head


__all__ = ["ACTIVATIONS", "build_head"]
