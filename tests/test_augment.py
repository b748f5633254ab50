"""Batched preprocessing: exact geometry, determinism under a seed, eval = centre crop."""

import torch

from trainables.augment import AugmentSpec, InputSpec, prepare_batch


def _batch(n: int = 8, size: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_eval_transform_is_normalised_centre_crop():
    images = _batch()
    spec = InputSpec(crop_size=8, input_size=None, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = prepare_batch(images, spec)
    expected = (images[:, 4:12, 4:12, :].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert x.shape == (8, 3, 8, 8)
    torch.testing.assert_close(x, expected)


def test_resize_and_channel_conversion():
    gray = _batch(channels=1)
    spec = InputSpec(crop_size=None, input_size=32, in_chans=3, mean=(0.0,) * 3, std=(1.0,) * 3)
    x = prepare_batch(gray, spec)
    assert x.shape == (8, 3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 2])
    rgb = _batch()
    to_gray = prepare_batch(rgb, InputSpec(None, None, 1, (0.0,), (1.0,)))
    torch.testing.assert_close(to_gray[:, 0], rgb.permute(0, 3, 1, 2).float().div(255).mean(1))


def test_augmentation_is_reproducible_and_label_preserving_geometry():
    images = _batch(n=64)
    spec = InputSpec(crop_size=12, input_size=None, in_chans=3, mean=(0.0,) * 3, std=(1.0,) * 3)
    aug = AugmentSpec(flip=True, rot90=True, color=0.0, shift=2)
    a = prepare_batch(images, spec, aug, torch.Generator().manual_seed(1))
    b = prepare_batch(images, spec, aug, torch.Generator().manual_seed(1))
    c = prepare_batch(images, spec, aug, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # Without colour jitter every output is a pixel-exact window of its own input:
    # its multiset of values matches some 12x12 crop of the source (flips/rotations permute pixels).
    src = images.permute(0, 3, 1, 2).float() / 255
    for i in range(8):
        out_sorted = a[i].flatten().sort().values
        found = any(
            torch.equal(out_sorted, src[i, :, t : t + 12, l : l + 12].flatten().sort().values)
            for t in range(0, 5) for l in range(0, 5)
        )
        assert found, f"sample {i} is not a flipped/rotated crop of its input"


def test_colour_jitter_changes_values_within_range():
    images = _batch(n=16)
    spec = InputSpec(None, None, 3, (0.0,) * 3, (1.0,) * 3)
    x = prepare_batch(images, spec, AugmentSpec(color=0.3), torch.Generator().manual_seed(0))
    plain = prepare_batch(images, spec)
    assert not torch.allclose(x, plain)
    assert x.min() >= 0 and x.max() <= 1


def test_channels_last_layout():
    x = prepare_batch(_batch(), InputSpec(None, None, 3, (0.0,) * 3, (1.0,) * 3), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
