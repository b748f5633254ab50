"""Size and speed of a trial's network: parameter count and CPU inference time.

The report asks whether a truncated backbone is as good as the full one; the answer
needs what truncation saves. Each architecture is built exactly as its trial built it
(``build_model`` with the trial's settings, random weights: the weights do not change
size or speed) and timed on the CPU with one thread, so numbers compare across rows.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from trainables.config import TrialConfig


@dataclass(frozen=True)
class NetworkCost:
    """Parameters (total, in millions) and CPU milliseconds per image at the trial's input size."""

    params_m: float
    ms_per_image: float
    input_size: int


def input_side(config: TrialConfig, stored_side: int) -> int:
    """The side of the square image the network sees: input_size, else crop, else the stored image."""
    return int(config.input_size or config.crop_size or stored_side)


def network_cost(config: TrialConfig, num_classes: int, data_channels: int, stored_side: int,
                 batch: int = 16, repeats: int = 5) -> NetworkCost:
    """Build the trial's network (no pretrained weights) and time a forward pass on the CPU.

    Args:
        config: the trial's settings.
        num_classes / data_channels / stored_side: what the data gives the network.
        batch: images per timed forward pass.
        repeats: timed passes after one warm-up; the median is reported.
    """
    from trainables.models import build_model

    model = build_model(dataclasses.replace(config, pretrained=False, device="cpu"), num_classes=num_classes,
                        in_chans=data_channels).eval()
    side = input_side(config, stored_side)
    x = torch.randn(batch, config.in_chans or data_channels, side, side)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model(x)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    params = sum(p.numel() for p in model.parameters())
    return NetworkCost(params_m=params / 1e6, ms_per_image=1000 * statistics.median(times) / batch, input_size=side)


__all__ = ["NetworkCost", "input_side", "network_cost"]
