"""``search init`` and ``search run DATA``: fingerprints and rules on real data, spaces that run as written."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from search.cli import main
from search.init import InitError, InitOptions, configure, rules, write_space
from search.init.cost import EpochCost
from search.init.fingerprint import read_fingerprint
from search.space import load_space
from trainables.data import DataError, load_dataset

CT = get_testdata_file("CT_small.dcm")
MR = get_testdata_file("MR_small.dcm")


def cost(train_s: float, train: int = 4000, val: int = 500, eval_s: float = 0.0, name: str = "x") -> EpochCost:
    """An epoch that costs ``train_s`` s per training image (and ``eval_s`` per val image)."""
    return EpochCost(name, train_s, eval_s, train, val)


# ------------------------------------------------------------------------------------- rules


def test_budget_rules_size_the_study_and_refuse_a_budget_shorter_than_one_epoch():
    small = cost(0.01, train=4000, val=500)  # 40 s per epoch
    with pytest.raises(InitError, match=r"--budget 1m is too short for one epoch of the smallest configuration "
                                        r"\(x: 40 s per epoch.*pass --budget 3m or more"):
        rules.budget_rule(60, small, 1.0)
    assert rules.budget_rule(900, small, 1.0).value == 900
    compute = rules.compute_seconds(900, slots=2)
    assert compute == (900 - rules.STARTUP_S) * 2
    # all of train when 4 trials x 3 epochs fit, else a subsample, never below 1000 images
    assert rules.train_fraction_rule(small, 1, compute).value == 1.0
    assert rules.train_fraction_rule(cost(0.02), 1, compute).value == 1.0  # 4 x 3 x 80 s = 16 min of 28.7
    heavy = cost(0.2)  # 800 s per epoch
    fraction = rules.train_fraction_rule(heavy, 1, compute)
    assert fraction.value == 0.25 and "each trial trains on 1000" in fraction.reason  # floor: 1000 of 4000
    assert rules.train_fraction_rule(cost(0.06), 1, compute).value == pytest.approx(0.59, abs=0.01)
    epochs = rules.epochs_rule(small, 1.0, 1, compute)
    assert 2 <= epochs.value <= 12 and "40 s per epoch" in epochs.reason
    assert rules.epochs_rule(heavy, 0.25, 1, compute).value == 2  # 2 x 1720 / (12 x 200) = 1.4: at least 2
    assert rules.reduction_factor_rule(20).value == 3 and rules.reduction_factor_rule(5).value == 2
    assert rules.num_samples_rule(3).value == 16 and rules.num_samples_rule(40).value == 80


def test_cross_validation_only_for_small_data_it_can_afford_and_classes_that_fill_every_fold():
    cheap, compute = cost(0.001, train=500, val=100), rules.compute_seconds(900, 2)
    assert rules.cv_rule(600, 200, cheap, compute).value == 5
    assert rules.cv_rule(600, 3, cheap, compute).value == 3  # the smallest class has 3 images
    assert rules.cv_rule(600, 1, cheap, compute).value == 1
    assert rules.cv_rule(5000, 200, cheap, compute).value == 1  # large: one split is enough
    costly = cost(0.05, train=500, val=100)
    assert "5-fold CV would fit fewer than 12 trials" in rules.cv_rule(600, 200, costly, compute).reason


def test_backbones_that_cannot_run_six_trials_are_left_out_but_cnn3_and_one_imagenet_network_stay():
    costs = {"cnn3": cost(0.001), "cnn9": cost(0.05), "tf_efficientnet_lite0": cost(0.004),
             "tf_efficientnet_lite2": cost(0.2)}
    compute = rules.compute_seconds(900, 2)
    chosen = rules.backbones_rule("all", costs, ["tf_efficientnet_lite0", "tf_efficientnet_lite2"], 1.0, 1, 6,
                                  compute)
    assert chosen.value == ["cnn3", "tf_efficientnet_lite0"]
    assert "cnn9, tf_efficientnet_lite2 left out: 6 trials of each would not fit" in chosen.reason
    only_heavy = rules.backbones_rule("transfer", costs, ["tf_efficientnet_lite2"], 1.0, 1, 6, compute)
    assert only_heavy.value == ["cnn3", "tf_efficientnet_lite2"]  # the question needs an ImageNet network
    assert rules.backbones_rule("depth", costs, ["tf_efficientnet_lite0"], 1.0, 1, 6, compute).value == \
        ["tf_efficientnet_lite0"]


def test_each_question_searches_its_own_dimensions():
    assert set(rules.question_rule("transfer", 5).value) == {"pretrained"}
    assert rules.question_rule("depth", 5).value["frozen_stages"]["int"] == [0, 5]
    assert rules.question_rule("features", 5).value["frozen_stages"]["choice"] == [0, 5]
    assert rules.question_rule("truncation", 5).value["truncate_after"]["int"] == [1, 4]
    assert set(rules.question_rule("all", 5).value) == {"pretrained", "frozen_stages", "lr_ratio"}
    with pytest.raises(InitError, match="--question 'deep' is not one of transfer, depth"):
        rules.question_rule("deep", 5)


def test_augmentations_and_weights_follow_the_modality_and_the_class_balance(data_root):
    breast = read_fingerprint(data_root / "medmnist" / "breastmnist.npz")
    assert breast.class_counts == (210, 570) and breast.sides == (28, 28, 28) and breast.gray
    assert rules.class_weighting_rule(breast).value == "balanced"  # 2.7:1
    assert rules.modality_rule(breast, None).value == "other"
    assert rules.modality_rule(breast, "histology").value == "histology"
    with pytest.raises(InitError, match="--modality 'us' is not one of"):
        rules.modality_rule(breast, "us")
    histology = rules.augmentation_rule("histology", 96).value
    assert histology["aug_flip"] and histology["aug_rot90"]
    xray = rules.augmentation_rule("xray", 128).value
    assert not xray["aug_flip"] and not xray["aug_rot90"] and xray["aug_shift"] == 8
    assert not rules.augmentation_rule("other", 64).value["aug_flip"]  # unknown orientation: no flip
    pcam = read_fingerprint(data_root / "pcam_kaggle_sample")
    assert rules.modality_rule(pcam, None).value == "histology" and not pcam.gray
    assert rules.image_size_rule(breast, cap=128).value is None  # uniform 28 px: native
    assert rules.input_size_rule(28).value == 64 and "scratch trials train at 28 px" in rules.input_size_rule(28).reason
    assert rules.input_size_rule(96).value is None


# ------------------------------------------------------------------------------- fingerprints


@pytest.fixture(scope="module")
def kermany_manifest(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """60 real Kermany X-rays in a folder with a CSV named as another team would: filename, diagnosis,
    patient_id (the official test split shares patient ids with train)."""
    root = tmp_path_factory.mktemp("kermany_named")
    archive = data_root / "chest_xray" / "kermany_5840_224px.zip"
    with zipfile.ZipFile(archive) as zf:
        inner = next(n for n in zf.namelist() if n.endswith("/labels.csv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(inner).decode())))
        top = inner.rsplit("/", 1)[0]
        chosen, seen = [], {}
        for row in rows:
            key = (row["split"], row["label_name"])
            if seen.get(key, 0) < 15:
                seen[key] = seen.get(key, 0) + 1
                chosen.append(row)
        for row in chosen:
            (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
            (root / row["path"]).write_bytes(zf.read(f"{top}/{row['path']}"))
    shared = {r["patient_group"] for r in chosen if r["split"] == "train"}
    for row in chosen:  # make sure some ids recur across the source's splits
        if row["split"] == "test" and shared:
            row["patient_group"] = next(iter(sorted(shared)))
            break
    with open(root / "cases.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["filename", "diagnosis", "patient_id", "split"])
        writer.writerows([r["path"], r["label_name"], r["patient_group"], r["split"]] for r in chosen)
    return root / "cases.csv"


def test_a_manifest_with_other_column_names_is_read_with_its_patients(kermany_manifest):
    fingerprint = read_fingerprint(kermany_manifest)
    config = fingerprint.config
    assert (config.path_column, config.label_column, config.group_column) == ("filename", "diagnosis", "patient_id")
    assert fingerprint.class_names == ("NORMAL", "PNEUMONIA") and fingerprint.images == 60
    assert fingerprint.source_splits == {"train": 30, "test": 30} and fingerprint.group_overlap >= 1
    assert fingerprint.gray and rules.image_size_rule(fingerprint, cap=128).value == 128
    assert rules.modality_rule(fingerprint, None).value == "other"  # "kermany_named/cases.csv" names nothing
    choice = rules.groups_rule(fingerprint)
    assert choice.value == "patient_id" and "allow_group_overlap" in choice.reason


def test_dicom_folders_give_their_modality_and_mixed_modalities_are_refused(tmp_path):
    ct = tmp_path / "ct"
    for label in ("nodule", "clear"):
        (ct / label).mkdir(parents=True)
        for i in range(6):
            shutil.copy(CT, ct / label / f"{i}.dcm")
    fingerprint = read_fingerprint(ct)
    assert fingerprint.modalities == {"CT": 12} and fingerprint.size_example == (128, 128)
    assert rules.modality_rule(fingerprint, None).value == "ct"
    mixed = tmp_path / "mixed"
    shutil.copytree(ct, mixed)
    for i in range(3):
        shutil.copy(MR, mixed / "clear" / f"mr{i}.dcm")
    with pytest.raises(DataError, match=r"mixes DICOM modalities: CT \(12 files\), MR \(3 files\); a study learns "
                                        r"one kind of image, so give each modality its own source"):
        read_fingerprint(mixed)


# ---------------------------------------------------------------------------- whole spaces


def test_init_writes_a_space_that_validates_and_decodes_once_for_the_study(tmp_path, kermany_manifest, capsys):
    out = tmp_path / "xray.yaml"
    assert main(["init", str(kermany_manifest), "--budget", "10m", "--modality", "xray", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data.group_column: patient_id    # split by 'patient_id'" in printed
    assert "params.aug_flip: false    # xray anatomy is not left-right symmetric" in printed
    assert f"wrote {out}" in printed and f"search run {out}" in printed
    space = load_space(out)
    assert space.data.path_column == "filename" and space.data.label_column == "diagnosis"
    assert space.data.allow_group_overlap and space.data.image_size == 128 and space.data.channels == 1
    assert space.params["aug_flip"] is False and space.tune.time_budget == "10m"
    assert "cnn3" in space.search["backbone"].values and "pretrained" in space.search
    assert "# Written by `search init`" in out.read_text()
    data = load_dataset(space.data)
    assert data.from_cache  # init decoded it: the study's load is a cache hit
    assert main(["init", str(kermany_manifest), "--out", str(out)]) == 2  # exists: --force replaces it
    assert "exists; pass --force" in capsys.readouterr().err


def test_questions_write_their_dimensions_and_a_budget_too_short_is_refused_before_the_big_backbones(tmp_path):
    result = configure("medmnist/breastmnist.npz", InitOptions(budget="20m", question="features"))
    space = load_space(write_space(result, tmp_path / "features.yaml"))
    assert space.params["backbone"] == "tf_efficientnet_lite0" and space.params["pretrained"] is True
    assert space.search["frozen_stages"].values == (0, 5) and "backbone" not in space.search
    assert space.params["input_size"] == 64  # every trial is pretrained: all upsampled
    assert result.cv_folds in (1, 5)
    with pytest.raises(InitError, match=r"--budget 30s leaves no time to train"):
        configure("medmnist/breastmnist.npz", InitOptions(budget="30s"))
    # cnn3 takes ~30 s per epoch of lung CT's 769 training images at 128 px here: 50 s cannot start and train one
    with pytest.raises(InitError, match=r"--budget 50s is too short for one epoch of the smallest configuration "
                                        r"\(cnn3: .* pass --budget [0-9]+m or more"):
        configure("lung_ct/iqothnccd_1097_256px.zip", InitOptions(budget="50s"))


def test_a_folder_without_images_is_refused_with_the_layout_it_needs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["init", str(tmp_path / "empty")]) == 2
    assert "has no class folders; an ImageFolder is root/<class>/<image>" in capsys.readouterr().err
    (tmp_path / "notes" / "benign").mkdir(parents=True)
    (tmp_path / "notes" / "benign" / "readme.txt").write_text("no images here")
    assert main(["init", str(tmp_path / "notes")]) == 2
    assert "has class folders ['benign'] but no images" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_search_run_data_configures_runs_and_resumes_with_the_space_it_wrote(tmp_path, data_root, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    storage = tmp_path / "studies"
    args = ["run", str(data_root / "pcam_kaggle_sample"), "--storage", str(storage), "--num-cpus", "2",
            "--time-budget", "1m", "--num-samples", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    written = storage / "pcam_kaggle_sample.space.yaml"
    assert written.is_file() and f"search init wrote {written}" in printed
    assert "  aug_rot90: true" in written.read_text()  # histology: quarter turns
    assert "search best pcam_kaggle_sample" in printed  # the study ran and printed its next steps
    assert (storage / "pcam_kaggle_sample" / "medtune_study.json").is_file()
    before = written.read_text()
    main(["run", str(data_root / "pcam_kaggle_sample"), "--storage", str(storage), "--resume"])
    assert f"resuming with the space search init wrote: {written}" in capsys.readouterr().out
    assert written.read_text() == before  # resume reuses the space instead of configuring anew
    assert main(args) == 2  # a second start would overwrite the study's space: refused
    assert "already has the space search init wrote for it" in capsys.readouterr().err
    assert written.read_text() == before


def test_a_class_too_small_for_the_splits_is_refused_before_decoding_with_the_counts(tmp_path, data_root, capsys):
    archive = data_root / "pcam" / "pcam_26k_96px.zip"
    with zipfile.ZipFile(archive) as zf:
        inner = next(n for n in zf.namelist() if n.endswith("labels.csv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(inner).decode())))
        chosen = [r for r in rows if r["label"] == "0"][:30] + [r for r in rows if r["label"] == "1"][:30]
        lines = ["path,label"]
        for i, row in enumerate(chosen):
            (tmp_path / f"{i}.jpg").write_bytes(zf.read(f"{inner.rsplit('/', 1)[0]}/{row['path']}"))
            lines.append(f"{i}.jpg,{'rare' if i < 2 else row['label_name']}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    assert main(["init", str(tmp_path), "--out", str(tmp_path / "space.yaml")]) == 2
    err = capsys.readouterr().err
    assert "class 'rare' has 2 images, but the val (0.15) and test (0.15) splits carved out of the data need at " \
           "least 4 images per class to hold one; add images of it, merge it" in err
    assert not (tmp_path / "space.yaml").exists()
