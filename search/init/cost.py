"""What one epoch of a configuration costs on this machine, measured, for ``search init``'s budget rules.

A few real training steps and one evaluation batch of the real trainable
(:func:`trainables.trial.build_trial`, :func:`train_step`, :func:`predict`) on the decoded
images, with as many threads as one trial gets, give seconds per training and per
evaluation image; an epoch is those times the split sizes. Guessing from FLOPs would miss
what matters on a CPU (memory traffic, depthwise convolutions, thread count).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data import ImageDataset

TIMED_STEPS = 2
EVAL_IMAGES = 128


@dataclass(frozen=True)
class EpochCost:
    """Measured cost of one configuration: seconds per image and per epoch at full data."""

    backbone: str
    train_s_per_image: float
    eval_s_per_image: float
    train_images: int
    val_images: int

    def epoch_seconds(self, train_fraction: float = 1.0, folds: int = 1) -> float:
        """One epoch: training on ``train_fraction`` of train, then scoring val (per fold, ``folds`` times).

        Under CV each fold trains on (K-1)/K of train + val and scores the other 1/K.
        """
        if folds > 1:
            pool = self.train_images + self.val_images
            return folds * (self.train_s_per_image * pool * (folds - 1) / folds * train_fraction
                            + self.eval_s_per_image * pool / folds)
        return self.train_s_per_image * self.train_images * train_fraction + self.eval_s_per_image * self.val_images


def measure_epoch(config: TrialConfig, data: ImageDataset, threads: int = 1) -> EpochCost:
    """Time :data:`TIMED_STEPS` training steps (after one warm-up) and one evaluation batch of ``config``.

    Weights are not loaded (``pretrained`` does not change the arithmetic), nothing is
    frozen (the upper bound: fine-tuning everything), and the threads are those of one
    trial, restored afterwards.
    """
    from trainables.augment import prepare_batch
    from trainables.trial import build_trial, images_tensor, predict, train_step

    config = dataclasses.replace(config, pretrained=False, frozen_stages=0, epochs=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        state = build_trial(config, data)
        images = images_tensor(data, state.device)
        labels = torch.from_numpy(data.labels)
        train = state.train_idx
        rng = np.random.default_rng(0)
        state.model.train()
        elapsed = 0.0
        for step in range(TIMED_STEPS + 1):
            idx = torch.from_numpy(rng.choice(train, size=min(config.batch_size, len(train)), replace=False))
            started = time.perf_counter()
            x = prepare_batch(images[idx], state.input_spec, state.augment, state.generator,
                              channels_last=state.compute.channels_last)
            train_step(state, config, x, labels[idx])
            if step:  # the first step pays for allocation and kernel selection
                elapsed += time.perf_counter() - started
        per_train = elapsed / (TIMED_STEPS * min(config.batch_size, len(train)))
        val = data.splits["val"][:EVAL_IMAGES]
        started = time.perf_counter()
        predict(state.model, images, val, state.input_spec, state.device, config.eval_batch(state.device.type),
                state.compute)
        per_eval = (time.perf_counter() - started) / max(len(val), 1)
    finally:
        torch.set_num_threads(previous)
    return EpochCost(config.backbone, per_train, per_eval, len(data.splits["train"]), len(data.splits["val"]))


__all__ = ["EpochCost", "measure_epoch"]
