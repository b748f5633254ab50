"""Cross-validated trials on real PneumoniaMNIST: the folds, the fold-mean report, OOF predictions, resume."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from search.space import SpaceError, load_space
from search.study.folds import AUTO_FOLDS, resolve_cv_folds, with_cv_folds
from trainables.checkpoint import load_checkpoint
from trainables.config import DataConfig, TrialConfig
from trainables.data import DataError, load_dataset
from trainables.data.folds import check_folds, fold_pool, make_folds
from trainables.metrics import classification_metrics
from trainables.trial import TrialSetupError, fold_models, run_trial

FAST = dict(backbone="cnn3", batch_size=64, eval_batch_size=512, cv_folds=3)


@pytest.fixture(scope="module")
def pneumonia(data_root):
    """A 10% training subsample: 3 fold models per epoch stay fast on two CPU cores."""
    return load_dataset(DataConfig(source=str(data_root / "medmnist" / "pneumoniamnist.npz"), train_fraction=0.1))


def test_folds_are_disjoint_stratified_cover_train_and_val_and_never_test(pneumonia):
    pool = fold_pool(pneumonia.splits)
    folds = make_folds(pneumonia.labels, pool, None, 5, pneumonia.class_names)
    assert np.array_equal(np.sort(np.concatenate(folds)), pool)
    assert not np.intersect1d(pool, pneumonia.splits["test"]).size
    counts = np.array([np.bincount(pneumonia.labels[f], minlength=2) for f in folds])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all(), counts  # each class dealt evenly
    again = make_folds(pneumonia.labels, pool, None, 5, pneumonia.class_names)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # same folds in every trial


def test_grouped_folds_keep_each_patient_in_one_fold(pneumonia):
    pool = fold_pool(pneumonia.splits)
    groups = np.array([f"patient{i // 4}" for i in range(len(pneumonia.labels))])  # 4 images per patient
    folds = make_folds(pneumonia.labels, pool, groups, 4, pneumonia.class_names)
    seen = [set(groups[f]) for f in folds]
    assert all(not (seen[a] & seen[b]) for a in range(4) for b in range(a + 1, 4))
    assert np.array_equal(np.sort(np.concatenate(folds)), pool)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 8, sizes


def test_too_many_folds_for_the_data_are_refused_with_the_largest_k_that_works():
    labels = np.array([0] * 20 + [1] * 3)
    with pytest.raises(DataError, match=r"cv_folds 5 is larger than class 'b' has images in train \+ val \(3\).*"
                                        r"use cv_folds <= 3"):
        check_folds(labels, None, 5, ["a", "b"])
    groups = np.array([str(i % 3) for i in range(23)])
    with pytest.raises(DataError, match="cv_folds 4 needs at least 4 groups, but train \\+ val hold 3"):
        check_folds(labels, groups, 4, ["a", "b"])
    # grouped: patients are dealt by their majority class, so b, the majority of only 2 of its 3 patients, allows 2
    labels = np.array([0] * 20 + [1, 1, 0, 1, 1, 0, 1, 0, 0])
    groups = np.array([f"a{i}" for i in range(20)] + ["b1", "b1", "b1", "b2", "b2", "b2", "m", "m", "m"])
    with pytest.raises(DataError, match=r"class 'b' has groups \(patients\) it is the majority class of in train \+ "
                                        r"val \(2\).*use cv_folds <= 2"):
        check_folds(labels, groups, 3, ["a", "b"])
    check_folds(labels, groups, 2, ["a", "b"])
    with pytest.raises(DataError, match="cv_folds must be >= 2"):
        check_folds(labels, None, 1, ["a", "b"])


def test_a_cross_validated_trial_reports_fold_means_and_out_of_fold_predictions(pneumonia, tmp_path):
    config = TrialConfig(**FAST, epochs=1, lr=2e-3)
    reports = []
    history = run_trial(config, pneumonia, report=lambda m, d: reports.append(dict(m)), checkpoint_dir=tmp_path)
    last = history[-1]
    folds = [last[f"val_auc_fold{k}"] for k in range(3)]
    assert last["val_auc"] == pytest.approx(np.mean(folds)) and last["val_auc_std"] == pytest.approx(
        np.std(folds, ddof=1))
    assert "val_auc_fold3" not in last and len(reports) == 1
    saved = np.load(tmp_path / "val_predictions.npz")
    pool = fold_pool(pneumonia.splits)
    assert np.array_equal(saved["indices"], pool)  # every train + val image once, no test image
    assert np.array_equal(saved["labels"], pneumonia.labels[pool])
    oof = classification_metrics(saved["labels"], saved["probs"], prefix="oof_")
    assert last["oof_auc"] == pytest.approx(oof["oof_auc"])
    assert last["val_auc"] > 0.8
    checkpoint = load_checkpoint(tmp_path)
    models = fold_models(checkpoint)
    first = next(iter(models[0]))
    # same initialisation (same seed), trained on different images
    assert len(models) == 3 and not torch.equal(models[0][first], models[1][first])
    assert checkpoint["config"]["cv_folds"] == 3


def test_resume_mid_study_gives_the_same_fold_metrics_as_an_uninterrupted_run(pneumonia, tmp_path):
    config = TrialConfig(**FAST, epochs=2, lr=2e-3, dropout=0.2, schedule="cosine", aug_rot90=True)
    after_first = tmp_path / "after-epoch-1"

    def keep_first(metrics, directory):
        if metrics["epoch"] == 1:
            shutil.copytree(directory, after_first)

    straight = run_trial(config, pneumonia, report=keep_first, checkpoint_dir=tmp_path / "straight")
    resumed = run_trial(config, pneumonia, checkpoint_dir=tmp_path / "resumed", resume_from=after_first)
    for key in ("val_auc", "val_loss", "val_auc_fold0", "val_auc_fold2", "oof_auc", "train_loss"):
        assert resumed[-1][key] == straight[-1][key], key
    for a, b in zip(fold_models(load_checkpoint(tmp_path / "straight")), fold_models(load_checkpoint(tmp_path / "resumed"))):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint of another fold count is refused, not half-loaded
    with pytest.raises(TrialSetupError, match="holds 3 fold model"):
        run_trial(dataclasses.replace(config, cv_folds=2), pneumonia, resume_from=after_first)


def test_cv_folds_auto_and_its_checks_before_ray(pneumonia, tmp_path, data_root):
    assert resolve_cv_folds("auto", pneumonia)[0] == AUTO_FOLDS  # 1,254 train + val images
    big = dataclasses.replace(pneumonia, splits={**pneumonia.splits,
                                                 "train": np.arange(5000, dtype=np.int64)})
    assert resolve_cv_folds("auto", big)[0] == 1
    space_file = tmp_path / "cv.yaml"
    space_file.write_text(f"data: {{source: {data_root}/medmnist/pneumoniamnist.npz}}\ntune: {{cv_folds: 4}}\n")
    space = load_space(space_file)
    assert with_cv_folds(space, pneumonia, 4).default_config().cv_folds == 4
    tiny = dataclasses.replace(pneumonia, splits={"train": np.flatnonzero(pneumonia.labels == 0)[:50],
                                                  "val": np.flatnonzero(pneumonia.labels == 1)[:2],
                                                  "test": pneumonia.splits["test"]})
    with pytest.raises(SpaceError, match="tune.cv_folds.*use cv_folds <= 2"):
        with_cv_folds(space, tiny, 4)
    space_file.write_text(f"data: {{source: {data_root}/medmnist/pneumoniamnist.npz}}\nparams: {{cv_folds: 4}}\n")
    with pytest.raises(SpaceError, match="params.cv_folds.*is a study setting.*tune: \\{cv_folds: 5\\}"):
        load_space(space_file)
    space_file.write_text(f"data: {{source: {data_root}/medmnist/pneumoniamnist.npz}}\ntune: {{cv_folds: many}}\n")
    with pytest.raises(SpaceError, match="cv_folds must be auto or an integer >= 1"):
        load_space(space_file)
