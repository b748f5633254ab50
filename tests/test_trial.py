"""One trial end to end on real PneumoniaMNIST: it learns, it resumes exactly, it fails clearly."""

import dataclasses
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from search.cli import main
from trainables.checkpoint import load_checkpoint
from trainables.config import DataConfig, TrialConfig
from trainables.data import load_dataset
from trainables.trial import (
    ComputeFormat,
    NonFiniteLossError,
    TrialSetupError,
    build_trial,
    evaluate,
    images_tensor,
    run_trial,
    train_epoch,
)


@pytest.fixture(scope="module")
def pneumonia(data_root):
    return load_dataset(DataConfig(source=str(data_root / "medmnist" / "pneumoniamnist.npz")))


QUICKSTART = str(Path(__file__).parents[1] / "spaces" / "quickstart.yaml")
FAST = dict(backbone="cnn3", batch_size=64, train_fraction=0.3, eval_batch_size=512)


def test_two_epochs_raise_validation_auc(pneumonia):
    config = TrialConfig(**FAST, epochs=2, lr=2e-3)
    state = build_trial(config, pneumonia)
    before, _ = evaluate(state, config, images_tensor(pneumonia, state.device), pneumonia)
    history = run_trial(config, pneumonia)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["val_auc"] > max(0.85, before["val_auc"] + 0.1), (before["val_auc"], history)
    for key in ("val_acc", "val_balanced_acc", "val_f1", "val_sensitivity", "val_specificity", "val_loss",
                "train_loss", "trainable_params", "trainable_fraction", "epoch_seconds", "images_per_second"):
        assert math.isfinite(history[-1][key]), key
    assert history[-1]["trainable_fraction"] == 1.0


def test_trial_shares_the_read_only_dataset_without_copying(pneumonia):
    # Arrays from Ray's object store are read-only views of shared memory: the trial must wrap
    # them, never copy (a copy per concurrent trial is what benchmarks/memory.py guards against).
    shared = dataclasses.replace(pneumonia, images=pneumonia.images.view())
    shared.images.flags.writeable = False
    tensor = images_tensor(shared, torch.device("cpu"))
    assert tensor.data_ptr() == shared.images.__array_interface__["data"][0]


def _one_epoch(config, data, compute):
    state = build_trial(config, data)
    state.compute = compute
    if not compute.channels_last:
        state.model = state.model.to(memory_format=torch.contiguous_format)
    images = images_tensor(data, state.device)
    loss, seen = train_epoch(state, config, images, data)
    metrics, probs = evaluate(state, config, images, data)
    return loss, seen, metrics, probs


def test_fast_compute_format_matches_plain_path(pneumonia):
    # channels_last (the default on every device) is a memory layout, not other arithmetic:
    # under one seed it sees the same batches and ends within float rounding of NCHW.
    config = TrialConfig(**{**FAST, "train_fraction": 0.1}, epochs=1, aug_flip=True, aug_shift=2)
    assert build_trial(config, pneumonia).compute == ComputeFormat(channels_last=True, bf16=False)
    fast = _one_epoch(config, pneumonia, ComputeFormat(channels_last=True, bf16=False))
    plain = _one_epoch(config, pneumonia, ComputeFormat(channels_last=False, bf16=False))
    assert fast[1] == plain[1]
    # 47 optimizer steps amplify rounding differences a little (measured: 6e-4 in loss, 6e-3 in probs).
    assert fast[0] == pytest.approx(plain[0], rel=5e-3)
    np.testing.assert_allclose(fast[3], plain[3], atol=3e-2)
    assert fast[2]["val_auc"] == pytest.approx(plain[2]["val_auc"], abs=2e-2)


def test_bf16_on_cpu_is_opt_in_and_learns_like_fp32(pneumonia):
    config = TrialConfig(**{**FAST, "train_fraction": 0.1}, epochs=1, precision="bf16", lr=2e-3)
    state = build_trial(config, pneumonia)
    assert state.compute.bf16 and state.device.type == "cpu"
    bf16 = run_trial(config, pneumonia)[-1]
    fp32 = run_trial(dataclasses.replace(config, precision="auto"), pneumonia)[-1]
    assert math.isfinite(bf16["val_loss"])
    assert bf16["val_auc"] == pytest.approx(fp32["val_auc"], abs=0.05), (bf16, fp32)


def test_resume_continues_exactly(pneumonia, tmp_path):
    # Cosine schedule, dropout, augmentation and shuffling all consume state that must be restored.
    config = TrialConfig(**FAST, epochs=2, schedule="cosine", warmup_epochs=0.5, dropout=0.3, head_hidden=(32,),
                         aug_flip=True, aug_rot90=True, aug_color=0.1, aug_shift=2, optimizer="sgd", nesterov=True)
    after_first = tmp_path / "after-epoch-1"

    def keep_first(metrics, directory):
        if metrics["epoch"] == 1:
            shutil.copytree(directory, after_first)

    straight = run_trial(config, pneumonia, report=keep_first, checkpoint_dir=tmp_path / "straight")
    resumed = run_trial(config, pneumonia, checkpoint_dir=tmp_path / "resumed", resume_from=after_first)
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert resumed[-1]["val_auc"] == straight[-1]["val_auc"]
    assert resumed[-1]["train_loss"] == straight[-1]["train_loss"]
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    predictions = np.load(tmp_path / "resumed" / "val_predictions.npz")
    assert predictions["probs"].shape == (len(pneumonia.splits["val"]), 2)


def test_non_finite_loss_ends_the_trial_with_a_fix(pneumonia):
    config = TrialConfig(**FAST, epochs=1, optimizer="sgd", lr=1e30, momentum=0.0)
    with pytest.raises(NonFiniteLossError, match="lower lr"):
        run_trial(config, pneumonia)


def test_crop_larger_than_images_is_refused(pneumonia):
    with pytest.raises(TrialSetupError, match="crop_size 64 is larger than the stored images"):
        run_trial(TrialConfig(**FAST, epochs=1, crop_size=64), pneumonia)


def test_train_fraction_subsamples_per_trial(pneumonia):
    small = build_trial(TrialConfig(**{**FAST, "train_fraction": 0.1}), pneumonia)
    large = build_trial(TrialConfig(**{**FAST, "train_fraction": 0.5}), pneumonia)
    assert abs(len(small.train_idx) - 0.1 * len(pneumonia.splits["train"])) <= 2
    assert set(small.train_idx) <= set(large.train_idx) <= set(pneumonia.splits["train"])


def test_search_trial_cli_quickstart(capsys, tmp_path):
    code = main(["trial", QUICKSTART, "--set", "epochs=2", "--out", str(tmp_path / "ckpt")])
    out = capsys.readouterr().out
    assert code == 0, out
    aucs = [float(v) for v in re.findall(r"val_auc (\d\.\d+)", out)]
    assert len(aucs) == 2 and aucs[-1] > 0.85, out
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 2


def test_search_trial_cli_reports_bad_override(capsys):
    assert main(["trial", QUICKSTART, "--set", "epoch=2"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
