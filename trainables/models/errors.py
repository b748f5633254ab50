"""The one user-facing error of model building."""

from __future__ import annotations


class ModelError(ValueError):
    """A model setting that cannot work, raised before any training starts.

    The message states the rule, shows the value and names the fix, e.g.
    ``frozen_stages must be in 0..5 for resnet18 (...), but got 7``. It subclasses
    ``ValueError`` so that callers validating a whole search space can catch both
    config and model errors with one ``except``.
    """


__all__ = ["ModelError"]
