"""Batched preprocessing and augmentation as tensor ops on the trial's device.

Images arrive as one uint8 batch ``(B, H, W, C)`` gathered from the decoded dataset, so
there is no per-sample PIL work anywhere in the loop. All random draws come from a
``torch.Generator`` owned by the trial (on the CPU, then moved), which makes the
augmentation reproducible under a seed and resumable from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class InputSpec:
    """How a stored image becomes network input.

    Attributes:
        crop_size: side of the centre crop taken from the stored image (``None`` = all).
        input_size: side the crop is resized to (``None`` = crop size).
        in_chans: channels the network expects (grayscale is repeated to RGB and RGB
            averaged to grayscale when they differ from the data).
        mean / std: per-channel normalisation in [0, 1] units (length ``in_chans``).
    """

    crop_size: int | None
    input_size: int | None
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation; every field off means the evaluation transform."""

    flip: bool = False
    rot90: bool = False
    color: float = 0.0
    shift: int = 0

    @property
    def active(self) -> bool:
        return self.flip or self.rot90 or self.color > 0 or self.shift > 0


def prepare_batch(
    images: torch.Tensor,
    spec: InputSpec,
    augment: AugmentSpec | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Turn a uint8 ``(B, H, W, C)`` batch into a normalised float ``(B, C, S, S)`` input.

    Order: (random-offset) crop, flips and 90° rotations, colour jitter, resize,
    channel conversion, normalisation. With ``augment`` None or inactive the result is
    the deterministic evaluation transform (centre crop).

    Args:
        images: uint8 batch already on the target device.
        spec: crop, size, channels and normalisation.
        augment: training augmentation, or None for evaluation.
        generator: CPU generator for the random draws (required when augmenting).
        channels_last: return a channels_last tensor (faster convolutions with cuDNN and oneDNN).
    """
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    batch, _, height, width = x.shape
    augmenting = augment is not None and augment.active
    if augmenting and generator is None:
        raise ValueError("prepare_batch needs a generator when augmenting")

    crop = min(spec.crop_size or min(height, width), height, width)
    if augmenting and augment.shift > 0:
        x = _random_offset_crop(x, crop, augment.shift, generator)
    elif crop != height or crop != width:
        top, left = (height - crop) // 2, (width - crop) // 2
        x = x[:, :, top : top + crop, left : left + crop]

    if augmenting:
        if augment.flip:
            x = _random_flip(x, generator, dim=3)
            x = _random_flip(x, generator, dim=2)
        if augment.rot90 and x.shape[2] == x.shape[3]:
            x = _random_rot90(x, generator)
        if augment.color > 0:
            x = _color_jitter(x, augment.color, generator)

    size = spec.input_size or crop
    if x.shape[2] != size or x.shape[3] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < crop)

    if x.shape[1] != spec.in_chans:
        x = x.mean(dim=1, keepdim=True) if spec.in_chans == 1 else x.expand(-1, spec.in_chans, -1, -1)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.contiguous() if not channels_last else x


def _draw(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def _random_flip(x: torch.Tensor, generator: torch.Generator, dim: int) -> torch.Tensor:
    mask = (_draw(generator, x.shape[0]) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def _random_rot90(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    turns = torch.randint(0, 4, (x.shape[0],), generator=generator).to(x.device)
    out = x.clone()
    for k in (1, 2, 3):
        selected = (turns == k).nonzero(as_tuple=True)[0]
        if selected.numel():
            out[selected] = torch.rot90(x[selected], k, dims=(2, 3))
    return out


def _color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness and contrast factors in ``[1 - strength, 1 + strength]``."""
    factors = 1.0 + strength * (2.0 * _draw(generator, 2, x.shape[0]) - 1.0)
    brightness, contrast = (f.to(x.device).view(-1, 1, 1, 1) for f in factors)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * brightness - mean) * contrast + mean).clamp_(0.0, 1.0)


def _random_offset_crop(x: torch.Tensor, crop: int, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Crop ``crop`` pixels around the centre, moved by up to ``shift`` pixels per image.

    Offsets are clipped to the image, so a crop as large as the image does not move.
    """
    batch, channels, height, width = x.shape
    top0, left0 = (height - crop) // 2, (width - crop) // 2
    offsets = torch.randint(-shift, shift + 1, (2, batch), generator=generator)
    top = (top0 + offsets[0]).clamp(0, height - crop).to(x.device)
    left = (left0 + offsets[1]).clamp(0, width - crop).to(x.device)
    rows = (top.view(-1, 1) + torch.arange(crop, device=x.device)).view(batch, 1, crop, 1)
    cols = (left.view(-1, 1) + torch.arange(crop, device=x.device)).view(batch, 1, 1, crop)
    batch_index = torch.arange(batch, device=x.device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=x.device).view(1, channels, 1, 1)
    return x[batch_index, channel_index, rows, cols]
