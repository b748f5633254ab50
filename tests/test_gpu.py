"""The CUDA path of the trainable: GPU-resident uint8 data, batched augmentation on the
device, bf16 autocast, channels_last and eval batch sizing, run for real.

Marked ``gpu`` and skipped where no CUDA device is present; ``benchmarks/gpu_check.sh``
runs them on a GPU machine (``pytest -q -m gpu tests/test_gpu.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.augment import AugmentSpec, InputSpec, prepare_batch
from trainables.config import DataConfig, TrialConfig
from trainables.data import load_dataset
from trainables.trial import ComputeFormat, build_trial, images_tensor, run_trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on a GPU machine)"),
]


@pytest.fixture(scope="module")
def pneumonia(data_root):
    return load_dataset(DataConfig(source=str(data_root / "medmnist" / "pneumoniamnist.npz")))


def test_augmentation_on_the_gpu_matches_the_cpu():
    """Same generator seed, same draws: the device only changes where the arithmetic runs."""
    images = torch.randint(0, 256, (64, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    spec = InputSpec(crop_size=32, input_size=48, in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    augment = AugmentSpec(flip=True, rot90=True, color=0.2, shift=4)
    cpu = prepare_batch(images, spec, augment, torch.Generator().manual_seed(0), channels_last=True)
    gpu = prepare_batch(images.cuda(), spec, augment, torch.Generator().manual_seed(0), channels_last=True)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_cuda_trial_defaults_to_bf16_channels_last_and_gpu_resident_data(pneumonia):
    config = TrialConfig(backbone="cnn3", pretrained=False, batch_size=128, epochs=1, device="auto")
    state = build_trial(config, pneumonia)
    assert state.device.type == "cuda"
    assert state.compute == ComputeFormat(channels_last=True, bf16=True)
    conv = next(p for p in state.model.parameters() if p.dim() == 4)
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    images = images_tensor(pneumonia, state.device)
    assert images.is_cuda and images.dtype == torch.uint8 and images.shape == pneumonia.images.shape
    assert config.eval_batch("cuda") == 512 and config.eval_batch("cpu") == 128
    fp32 = build_trial(TrialConfig(backbone="cnn3", pretrained=False, device="cuda", precision="fp32"), pneumonia)
    assert fp32.compute == ComputeFormat(channels_last=True, bf16=False)


@pytest.mark.parametrize("backbone, input_size", [("cnn3", None), ("resnet18", 64)])
def test_short_trial_on_cuda_learns(pneumonia, backbone, input_size, tmp_path):
    """One epoch on PneumoniaMNIST: finite loss, a validation AUC above chance, a checkpoint."""
    config = TrialConfig(backbone=backbone, pretrained=False, batch_size=128, epochs=1, input_size=input_size,
                         train_fraction=0.5, aug_flip=True, aug_shift=2, device="cuda", seed=0)
    history = run_trial(config, pneumonia, checkpoint_dir=tmp_path)
    last = history[-1]
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["val_loss"])
    assert last["val_auc"] > 0.6, last
    assert last["images_per_second"] > 0
    assert (tmp_path / "val_predictions.npz").exists()
    probs = np.load(tmp_path / "val_predictions.npz")["probs"]
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
