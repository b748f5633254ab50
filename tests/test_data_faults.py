"""trainables.data against hostile inputs: each test is one fault a review found.

Broken inputs are built in tmp_path from real images (PneumoniaMNIST written out as PNG
files, IQ-OTH/NCCD CT slices, the Kermany manifest), never from mocks. Names that are
new in the fixed loader (``describe``) are imported inside the tests that use them, so
each test fails for its own reason when run against the code before the fix.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.config import DataConfig
from trainables.data import DataError, DataWarning, load_dataset
from trainables.data.decode import convert_arrays, decode_files


def cfg(source: str | Path, **kwargs: object) -> DataConfig:
    return DataConfig(source=str(source), **kwargs)  # type: ignore[arg-type]


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def pneumonia(data_root: Path) -> dict[str, np.ndarray]:
    """The official PneumoniaMNIST arrays (images uint8 (N, 28, 28), labels uint8 (N, 1))."""
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory, pneumonia: dict[str, np.ndarray]) -> list[dict[str, str]]:
    """40 real PneumoniaMNIST training images as PNG files: 20 normal (label 0), 20 pneumonia.

    Rows carry absolute paths, so a CSV written anywhere can list them.
    """
    root = tmp_path_factory.mktemp("pneumonia_png")
    labels = pneumonia["train_labels"][:, 0]
    rows = []
    for label in (0, 1):
        for i in np.flatnonzero(labels == label)[:20].tolist():
            path = root / f"{label}_{i}.png"
            Image.fromarray(pneumonia["train_images"][i]).save(path)
            rows.append({"path": str(path), "label": str(label), "index": str(i)})
    return rows


def small_npz(path: Path, pneumonia: dict[str, np.ndarray], train_label: int | None = None,
              labels_dtype: type = np.uint8) -> dict[str, np.ndarray]:
    """A MedMNIST-layout .npz of real images: 40 train, 20 val, 20 test, both classes in
    val and test; with ``train_label`` every train image is of that one class."""
    parts: dict[str, np.ndarray] = {}
    for split, per_class in (("train", 20), ("val", 10), ("test", 10)):
        labels = pneumonia[f"{split}_labels"][:, 0]
        if split == "train" and train_label is not None:
            chosen = np.flatnonzero(labels == train_label)[: 2 * per_class]
        else:
            chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in (0, 1)])
        parts[f"{split}_images"] = pneumonia[f"{split}_images"][chosen]
        parts[f"{split}_labels"] = pneumonia[f"{split}_labels"][chosen].astype(labels_dtype)
    np.savez(path, **parts)
    return parts


# ------------------------------------------------------------------ 1: classes per split


def test_one_class_train_split_is_refused_before_decoding(tmp_path: Path,
                                                          pneumonia: dict[str, np.ndarray]) -> None:
    source = tmp_path / "onlynormal.npz"
    small_npz(source, pneumonia, train_label=0)
    with pytest.raises(DataError) as info:
        load_dataset(cfg(source, cache_dir=str(tmp_path / "cache")))
    message = str(info.value)
    assert "the train split has only class '0' (1 of 2 classes present)" in message
    assert "train 0: 40, 1: 0; val 0: 10, 1: 10; test 0: 10, 1: 10" in message  # counts per split
    assert "label_column" in message and "val_fraction" in message  # the fixes
    assert not (tmp_path / "cache" / "decoded").exists(), "must be refused before decoding"


def test_one_class_val_split_carved_from_train_is_refused(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    # 20 normal + 2 pneumonia: a 15% stratified val gets 3 normal and round(0.3) = 0 pneumonia
    rows = [r for r in pngs if r["label"] == "0"] + [r for r in pngs if r["label"] == "1"][:2]
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with pytest.raises(DataError, match=r"the val split has only class '0'") as info:
        load_dataset(cfg(manifest, val_fraction=0.15, test_fraction=0.0))
    assert "train 0: 17, 1: 2; val 0: 3, 1: 0; test 0: 0, 1: 0" in str(info.value)
    ds = load_dataset(cfg(manifest, val_fraction=0.4, test_fraction=0.0))  # the named fix works
    assert sorted(set(ds.labels[ds.splits["val"]].tolist())) == [0, 1]


def test_class_only_in_test_is_refused(tmp_path: Path, data_root: Path) -> None:
    """Three real CT classes; the source's split puts 'malignant' only in test."""
    zip_path = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    with zipfile.ZipFile(zip_path) as zf:
        inner = next(n for n in zf.namelist() if n.endswith("/labels.csv"))
        top = inner.rsplit("/", 1)[0]
        all_rows = list(csv.DictReader(io.StringIO(zf.read(inner).decode())))
        rows = []
        for label in ("0", "1", "2"):
            for n, row in enumerate(r for r in all_rows if r["label"] == label):
                if n == 6:
                    break
                target = tmp_path / row["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(f"{top}/{row['path']}"))
                split = "test" if label == "2" else ("train", "train", "train", "train", "val", "test")[n]
                rows.append(dict(row, split=split))
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label", "label_name", "split"])
    with pytest.raises(DataError, match=r"classes \['malignant'\] are in val/test but absent from train") as info:
        load_dataset(cfg(manifest, image_size=32))
    assert "train normal: 4, benign: 4, malignant: 0" in str(info.value)


def test_train_fraction_never_drops_a_class(data_root: Path) -> None:
    """The class rule holds after subsampling: every class keeps at least one image."""
    ds = load_dataset(cfg(data_root / "medmnist" / "breastmnist.npz", train_fraction=0.002))
    assert np.bincount(ds.labels[ds.splits["train"]]).tolist() == [1, 1]


# ------------------------------------------------------------------ 2: non-integer labels


def test_nan_labels_in_npz_are_named(tmp_path: Path, pneumonia: dict[str, np.ndarray]) -> None:
    source = tmp_path / "nan.npz"
    parts = small_npz(source, pneumonia, labels_dtype=np.float32)
    parts["train_labels"][[3, 7]] = np.nan
    np.savez(source, **parts)
    with pytest.raises(DataError) as info:
        load_dataset(cfg(source))
    message = str(info.value)
    assert "train_labels: labels must be integer class indices, but 2 of 40 labels are NaN (first at index 3" \
        in message
    assert "negative" not in message and "-9223372036854775808" not in message
    parts["train_labels"][[3, 7]] = 0.5
    np.savez(source, **parts)
    with pytest.raises(DataError, match=r"2 of 40 labels are not whole numbers \(first at index 3: 0.5\)"):
        load_dataset(cfg(source))


def test_empty_and_missing_label_cells_in_csv_are_counted(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    rows = [dict(r) for r in pngs]
    rows[2]["label"] = rows[5]["label"] = ""
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with pytest.raises(DataError, match=r"labels in column 'label' must be class indices or class names, but 2 of 40 "
                                        r"labels are empty \(first at line 4\)") as info:
        load_dataset(cfg(manifest))
    assert "drop the rows of unlabelled images" in str(info.value)
    rows[2]["label"] = rows[5]["label"] = "nan"
    write_csv(manifest, rows, ["path", "label"])
    with pytest.raises(DataError, match=r"2 of 40 labels are NaN \(first at line 4\)"):
        load_dataset(cfg(manifest))


def test_label_beyond_the_image_count_is_refused(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    """An id column taken for the label: label 5000 would make 5001 classes for 40 images."""
    rows = [dict(r) for r in pngs]
    rows[0]["label"] = "5000"
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with pytest.raises(DataError, match=r"label 5000 in 'label' implies 5001 classes, but there are only 40 images"):
        load_dataset(cfg(manifest))


# ------------------------------------------------------------------ 3: groups across the source's splits


@pytest.fixture()
def shared_patient_csv(tmp_path: Path, pngs: list[dict[str, str]]) -> Path:
    """Real images, a split column, patients p0..p9; patient p3 has images in train and test."""
    rows = []
    for n, row in enumerate(pngs):
        split = ("train", "train", "val", "test")[n % 4]
        rows.append(dict(row, split=split, patient=f"p{n // 4}"))
    assert {r["split"] for r in rows if r["patient"] == "p3"} == {"train", "val", "test"}
    for row in rows:  # every other patient stays in one split
        if row["patient"] != "p3":
            row["patient"] = f"{row['patient']}-{row['split']}"
    return write_csv(tmp_path / "labels.csv", rows, ["path", "label", "split", "patient"])


def test_group_shared_across_source_splits_is_refused_by_default(tmp_path: Path,
                                                                 shared_patient_csv: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(cfg(shared_patient_csv, group_column="patient", cache_dir=str(tmp_path / "cache")))
    message = str(info.value)
    assert "1 group ids in column 'patient' occur in more than one of the splits" in message
    assert "'p3' in train and val and test" in message
    assert "data.allow_group_overlap: true" in message
    assert not (tmp_path / "cache" / "decoded").exists(), "must be refused before decoding"


def test_group_overlap_allowed_warns_and_is_recorded(shared_patient_csv: Path) -> None:
    with pytest.warns(DataWarning, match=r"1 group ids .*kept as given because data.allow_group_overlap"):
        ds = load_dataset(cfg(shared_patient_csv, group_column="patient", allow_group_overlap=True))
    assert ds.group_overlap == 1
    from trainables.data import describe

    assert "; 1 group ids in several source splits (allow_group_overlap)" in describe(ds)
    with pytest.warns(DataWarning, match="allow_group_overlap"):
        again = load_dataset(cfg(shared_patient_csv, group_column="patient", allow_group_overlap=True))
    assert again.from_cache and again.group_overlap == 1  # recorded on a cache hit too


def test_kermany_patient_ids_shared_by_official_splits_need_the_flag(data_root: Path) -> None:
    """Kermany numbers patients per official split: 170 ids occur in train and test."""
    source = data_root / "chest_xray" / "kermany_5840_224px.zip"
    with pytest.raises(DataError, match=r"170 group ids in column 'patient_group'.*'person1' in train and test"):
        load_dataset(cfg(source, group_column="patient_group", image_size=64))


# ------------------------------------------------------------------ 4: decoded size vs memory


def test_image_size_beyond_memory_is_refused_npz(data_root: Path) -> None:
    # 5,856 images at the largest size a space accepts (4096 px): 91.5 GiB, more than a
    # machine running these tests has.
    with pytest.raises(DataError) as info:
        load_dataset(cfg(data_root / "medmnist" / "pneumoniamnist.npz", image_size=4096))
    message = str(info.value)
    assert "decoding 5856 images to 4096x4096x1 uint8 needs about 91.5 GiB" in message
    assert "GiB of memory is available" in message and "`data.image_size` (now image_size=4096" in message


def test_image_size_beyond_memory_is_refused_files(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    manifest = write_csv(tmp_path / "labels.csv", pngs * 60, ["path", "label"])  # 2,400 rows: 37.5 GiB at 4096 px
    with pytest.raises(DataError, match=r"decoding 2400 images to 4096x4096x1 uint8 needs about "
                                        r"[0-9.]+ GiB, but only [0-9.]+ GiB of memory is available.*"
                                        r"data.image_size"):
        load_dataset(cfg(manifest, image_size=4096, cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache" / "decoded").exists()


# ------------------------------------------------------------------ 5: channels


def test_decoder_refuses_channels_other_than_1_or_3(pngs: list[dict[str, str]],
                                                   pneumonia: dict[str, np.ndarray]) -> None:
    paths = [r["path"] for r in pngs[:4]]
    with pytest.raises(DataError, match=r"`channels` must be null, 1 or 3, but got channels=2"):
        decode_files(lambda i: Path(paths[i]).read_bytes(), paths, channels=2)
    with pytest.raises(DataError, match=r"`channels` must be null, 1 or 3, but got channels=2"):
        convert_arrays(pneumonia["val_images"][:4, ..., None], channels=2)


def test_loader_refuses_channels_that_only_look_like_1_or_3(data_root: Path) -> None:
    # True == 1 and 3.0 == 3 pass a plain `in (1, 3)` test; a ValueError either way
    # (the config layer may refuse first, the loader must refuse regardless)
    for bad in (2, True, 3.0):
        with pytest.raises(ValueError, match="channels"):
            load_dataset(cfg(data_root / "medmnist" / "breastmnist.npz", channels=bad))


# ------------------------------------------------------------------ 6: the data line


def test_describe_pneumoniamnist(data_root: Path) -> None:
    from trainables.data import describe

    ds = load_dataset(cfg("medmnist/pneumoniamnist.npz"))
    assert describe(ds) == (f"data {data_root / 'medmnist' / 'pneumoniamnist.npz'}: train 4708, val 524, "
                            "test 624; 28x28x1, 2 classes")


def test_describe_shows_the_resolved_path_outside_medtune_data(tmp_path: Path, data_root: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from trainables.data import describe

    (tmp_path / "data" / "medmnist").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(data_root / "medmnist" / "breastmnist.npz", tmp_path / "elsewhere" / "x.npz")
    shutil.copy(data_root / "medmnist" / "breastmnist.npz", tmp_path / "data" / "medmnist" / "x.npz")
    monkeypatch.setenv("MEDTUNE_DATA", str(tmp_path / "data"))
    outside = load_dataset(cfg("../elsewhere/x.npz"))
    assert ".." in outside.source  # the loader keeps the path as resolved from the setting
    assert describe(outside) == (f"data {tmp_path / 'elsewhere' / 'x.npz'}: train 546, val 78, test 156; "
                                 "28x28x1, 2 classes (outside $MEDTUNE_DATA)")
    inside = load_dataset(cfg("medmnist/../medmnist/x.npz"))
    assert describe(inside).startswith(f"data {tmp_path / 'data' / 'medmnist' / 'x.npz'}: ")
    assert not describe(inside).endswith("(outside $MEDTUNE_DATA)")
    monkeypatch.delenv("MEDTUNE_DATA")  # default ./data
    monkeypatch.chdir(tmp_path)
    assert not describe(load_dataset(cfg("medmnist/x.npz"))).endswith("(outside $MEDTUNE_DATA)")
    assert describe(load_dataset(cfg(tmp_path / "elsewhere" / "x.npz"))).endswith(" (outside $MEDTUNE_DATA)")


def test_describe_counts_skipped_images(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    from trainables.data import describe

    rows = [dict(r) for r in pngs]
    noise = np.random.default_rng(0).integers(-2, 3, (28, 28))
    Image.fromarray((250 + noise).clip(0, 255).astype(np.uint8)).save(tmp_path / "white.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    (tmp_path / "cut.png").write_bytes(Path(rows[0]["path"]).read_bytes()[:40])
    rows += [{"path": str(tmp_path / name), "label": "0"} for name in ("white.png", "garbage.png", "cut.png")]
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(cfg(manifest))
    assert ds.skipped == {"unreadable": 2, "blank": 1}
    line = describe(ds)
    assert line.startswith(f"data {manifest}: train ") and "28x28x1, 2 classes; skipped 2 unreadable, 1 blank" in line
    assert os.path.isabs(line.split()[1].rstrip(":"))


def test_a_data_set_of_one_class_loads_for_prediction(tmp_path: Path, pngs: list[dict[str, str]]) -> None:
    """``search predict`` on a folder of one class needs no class in every split."""
    rows = [row for row in pngs if row["label"] == "0"]
    manifest = write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with pytest.raises(DataError, match="class"):
        load_dataset(cfg(manifest, cache_dir=str(tmp_path / "cache")))
    data = load_dataset(cfg(manifest, cache_dir=str(tmp_path / "cache")), require_classes=False)
    assert len(data.labels) == len(rows) and set(data.labels.tolist()) == {0}
    assert data.content_digest  # the digest the export stores and predict compares
