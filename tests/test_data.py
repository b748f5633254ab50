"""trainables.data on the real shared data: every format, splits, skipping, cache, download.

Fixtures that need a folder layout (ImageFolder, CSV + images, small zips) are built in
tmp_path from real images read out of the shipped zips. Tests that decode a whole PCam
or Kermany zip at native size are marked ``slow``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.config import ConfigError, DataConfig
from trainables.data import (
    DataError,
    DataWarning,
    ImageDataset,
    ensure_medmnist,
    load_dataset,
    resolve_data_path,
)
from trainables.data import cache as data_cache
from trainables.data.splits import make_splits

SPLITS = ("train", "val", "test")
PNEUMONIA_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"


# ----------------------------------------------------------------------------- helpers


def check_invariants(ds: ImageDataset, *, covers_all: bool = True) -> None:
    """The public contract every loaded dataset must meet."""
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4 and ds.images.flags.c_contiguous
    assert ds.channels in (1, 3) and ds.images.shape[-1] == ds.channels
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds.images),)
    assert 0 <= ds.labels.min() and ds.labels.max() < ds.num_classes == len(ds.class_names)
    seen = np.concatenate([ds.splits[s] for s in SPLITS])
    assert len(np.unique(seen)) == len(seen), "splits overlap"
    for name in SPLITS:
        idx = ds.splits[name]
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0), f"{name} not sorted/unique"
    assert len(ds.splits["train"]) > 0 and len(ds.splits["val"]) > 0
    if covers_all:
        assert len(seen) == len(ds.images)
    assert len(ds.fingerprint) == 64 and int(ds.fingerprint, 16) >= 0
    assert set(ds.skipped) == {"unreadable", "blank"}
    assert ds.split_sizes() == {s: len(ds.splits[s]) for s in SPLITS}
    if ds.groups is not None:
        assert ds.groups.shape == ds.labels.shape


def zip_rows(zip_path: Path) -> tuple[str, list[dict[str, str]]]:
    """(top folder, rows of labels.csv) of a shipped zip."""
    with zipfile.ZipFile(zip_path) as zf:
        inner = next(n for n in zf.namelist() if n.endswith("/labels.csv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(inner).decode())))
    return inner.rsplit("/", 1)[0], rows


def pick(rows: list[dict[str, str]], per_group: int, *keys: str) -> list[dict[str, str]]:
    """First ``per_group`` rows of each combination of ``keys`` (CSV order: deterministic)."""
    counts: dict[tuple[str, ...], int] = {}
    chosen = []
    for row in rows:
        group = tuple(row[k] for k in keys)
        if counts.get(group, 0) < per_group:
            counts[group] = counts.get(group, 0) + 1
            chosen.append(row)
    return chosen


def extract(zip_path: Path, top: str, rows: list[dict[str, str]], dest: Path) -> None:
    """Copy the chosen members of a zip into ``dest`` under their manifest paths."""
    with zipfile.ZipFile(zip_path) as zf:
        for row in rows:
            target = dest / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(f"{top}/{row['path']}"))


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def cfg(source: str | Path, **kwargs) -> DataConfig:
    return DataConfig(source=str(source), **kwargs)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pcam_zip(data_root: Path) -> Path:
    return data_root / "pcam" / "pcam_26k_96px.zip"


@pytest.fixture(scope="module")
def kermany_zip(data_root: Path) -> Path:
    return data_root / "chest_xray" / "kermany_5840_224px.zip"


@pytest.fixture(scope="module")
def pcam_rows(pcam_zip: Path) -> list[dict[str, str]]:
    """200 real PCam patches: per split and label 60 train, 20 valid, 20 test."""
    _, rows = zip_rows(pcam_zip)
    chosen = [r for r in pick(rows, 60, "split", "label") if r["split"] == "train"]
    return chosen + [r for r in pick(rows, 20, "split", "label") if r["split"] != "train"]


@pytest.fixture(scope="module")
def pcam_folder(tmp_path_factory: pytest.TempPathFactory, pcam_zip: Path,
                pcam_rows: list[dict[str, str]]) -> Path:
    """CSV manifest (path,split,label,label_name) + images in a folder beside it."""
    root = tmp_path_factory.mktemp("pcam_folder")
    top, _ = zip_rows(pcam_zip)
    extract(pcam_zip, top, pcam_rows, root)
    write_csv(root / "manifest.csv", pcam_rows, ["path", "split", "label", "label_name"])
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def kermany_imagefolder(tmp_path_factory: pytest.TempPathFactory, kermany_zip: Path) -> Path:
    """ImageFolder with split folders: train/{NORMAL,PNEUMONIA} 30 each, test/ 10 each."""
    root = tmp_path_factory.mktemp("kermany_if")
    top, rows = zip_rows(kermany_zip)
    chosen = [r for r in pick(rows, 30, "split", "label") if r["split"] == "train"]
    chosen += [r for r in pick(rows, 10, "split", "label") if r["split"] == "test"]
    extract(kermany_zip, top, chosen, root)  # manifest paths are already split/CLASS/file
    return root


@pytest.fixture(scope="module")
def lungct_imagefolder(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """ImageFolder without splits (root/<class>/*.jpg), real CT slices of mixed sizes."""
    zip_path = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    root = tmp_path_factory.mktemp("lungct_if")
    top, rows = zip_rows(zip_path)
    wide = [r for r in rows if r["size"] != "256x256"][:4]
    extract(zip_path, top, pick(rows, 20, "label") + wide, root)
    return root


def _stored_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def pcam_small_zips(tmp_path_factory: pytest.TempPathFactory, pcam_zip: Path,
                    pcam_rows: list[dict[str, str]]) -> Path:
    """``mini.zip`` (top folder + labels.csv + images) and ``ext.zip`` + ``ext.labels.csv``."""
    root = tmp_path_factory.mktemp("pcam_zips")
    top, _ = zip_rows(pcam_zip)
    rows = pcam_rows[::2]  # 100 patches, all splits, both labels
    with zipfile.ZipFile(pcam_zip) as zf:
        images = {r["path"]: zf.read(f"{top}/{r['path']}") for r in rows}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "split", "label", "label_name"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    manifest = buffer.getvalue().encode()
    _stored_zip(root / "mini.zip", {"mini/labels.csv": manifest} | {f"mini/{p}": b for p, b in images.items()})
    _stored_zip(root / "ext.zip", {f"ext/{p}": b for p, b in images.items()})
    (root / "ext.labels.csv").write_bytes(manifest)
    return root


# ----------------------------------------------------------------------------- formats


def test_pneumoniamnist_uses_its_own_split(data_root: Path) -> None:
    ds = load_dataset(cfg("medmnist/pneumoniamnist.npz"))  # relative: resolved under MEDTUNE_DATA
    check_invariants(ds)
    assert ds.split_sizes() == {"train": 4708, "val": 524, "test": 624}
    assert ds.images.shape == (5856, 28, 28, 1)
    assert ds.class_names == ["normal", "pneumonia"]
    assert ds.skipped == {"unreadable": 0, "blank": 0}
    assert ds.source == str(data_root / "medmnist" / "pneumoniamnist.npz")
    raw = np.load(data_root / "medmnist" / "pneumoniamnist.npz")
    np.testing.assert_array_equal(ds.images[ds.splits["val"], ..., 0], raw["val_images"])
    np.testing.assert_array_equal(ds.labels[ds.splits["test"]], raw["test_labels"][:, 0])


def test_npz_channels_and_resize(data_root: Path) -> None:
    ds = load_dataset(cfg(data_root / "medmnist" / "breastmnist.npz", channels=3, image_size=32))
    check_invariants(ds)
    assert ds.images.shape == (780, 32, 32, 3)
    assert ds.split_sizes() == {"train": 546, "val": 78, "test": 156}
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])  # gray replicated


def test_csv_folder_pcam(pcam_folder: Path) -> None:
    ds = load_dataset(cfg(pcam_folder, blank_filter=False))
    check_invariants(ds)
    assert ds.split_sizes() == {"train": 120, "val": 40, "test": 40}  # "valid" -> val
    assert ds.images.shape[1:] == (96, 96, 3)
    assert ds.class_names == ["normal", "tumor"]  # from the label_name column
    for name in SPLITS:  # 50/50 in every split, as chosen
        assert np.bincount(ds.labels[ds.splits[name]]).tolist() in ([60, 60], [20, 20])
    # pixels equal a direct decode of the same file
    first = Image.open(pcam_folder.parent / str(ds.paths[0])).convert("RGB")
    np.testing.assert_array_equal(ds.images[0], np.asarray(first))


def test_zip_with_labels_inside_and_beside(pcam_small_zips: Path) -> None:
    before = sorted(p.name for p in pcam_small_zips.iterdir())
    inside = load_dataset(cfg(pcam_small_zips / "mini.zip", blank_filter=False))
    beside = load_dataset(cfg(pcam_small_zips / "ext.labels.csv", blank_filter=False))
    for ds in (inside, beside):
        check_invariants(ds)
        assert ds.split_sizes() == {"train": 60, "val": 20, "test": 20}
    np.testing.assert_array_equal(inside.images, beside.images)
    np.testing.assert_array_equal(inside.labels, beside.labels)
    assert sorted(p.name for p in pcam_small_zips.iterdir()) == before, "nothing may be extracted"


def test_imagefolder_with_split_dirs_carves_val_from_train(kermany_imagefolder: Path) -> None:
    ds = load_dataset(cfg(kermany_imagefolder, seed=3))
    check_invariants(ds)
    assert ds.class_names == ["NORMAL", "PNEUMONIA"]
    sizes = ds.split_sizes()
    assert sizes["test"] == 20 and sizes["train"] + sizes["val"] == 60 and sizes["val"] >= 6
    assert all(str(p).startswith("test/") for p in ds.paths[ds.splits["test"]])
    assert set(ds.labels[ds.splits["val"]].tolist()) == {0, 1}  # stratified
    assert ds.images.shape[1:] == (224, 224, 3)  # RGB JPEGs stay RGB


def test_imagefolder_without_splits_mixed_sizes(lungct_imagefolder: Path) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_dataset(cfg(lungct_imagefolder))
    ds = load_dataset(cfg(lungct_imagefolder, image_size=32, val_fraction=0.2, test_fraction=0.2))
    check_invariants(ds)
    assert ds.class_names == ["benign", "malignant", "normal"]  # sorted folder names
    assert ds.images.shape[1:] == (32, 32, 1)  # grayscale JPEGs detected as 1 channel
    for name in ("val", "test"):
        assert np.bincount(ds.labels[ds.splits[name]], minlength=3).min() >= 4  # stratified


def test_mixed_gray_and_colour_become_rgb_and_16bit_is_scaled(tmp_path: Path, lungct_imagefolder: Path,
                                                               pcam_folder: Path,
                                                               pcam_rows: list[dict[str, str]]) -> None:
    gray = sorted((lungct_imagefolder / "normal").iterdir())[:6]
    for i, file in enumerate(gray):
        (tmp_path / "ct" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ct" / "a" / f"{i}.jpg").write_bytes(file.read_bytes())
    (tmp_path / "ct" / "b").mkdir()
    for i, row in enumerate(pcam_rows[:6]):  # colour patches after the gray ones
        (tmp_path / "ct" / "b" / f"{i}.jpg").write_bytes((pcam_folder.parent / row["path"]).read_bytes())
    ds = load_dataset(cfg(tmp_path / "ct", image_size=32, val_fraction=0.34, test_fraction=0.0))
    assert ds.channels == 3 and np.array_equal(ds.images[0, ..., 0], ds.images[0, ..., 1])
    # a 16-bit CT slice keeps its contrast (Pillow alone would clip it to white)
    ct = np.asarray(Image.open(gray[0]).convert("L")).astype(np.uint16) * 200 + 1000
    (tmp_path / "wide" / "a").mkdir(parents=True)
    (tmp_path / "wide" / "b").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(ct).save(tmp_path / "wide" / ("a" if i % 2 else "b") / f"{i}.png")
    wide = load_dataset(cfg(tmp_path / "wide", val_fraction=0.25, test_fraction=0.0))
    assert wide.channels == 1 and wide.images.min() == 0 and wide.images.max() == 255


def test_kaggle_pcam_sample(data_root: Path) -> None:
    ds = load_dataset(cfg(data_root / "pcam_kaggle_sample", val_fraction=0.2, test_fraction=0.2))
    check_invariants(ds)
    assert len(ds.images) + sum(ds.skipped.values()) == 15  # the 11 unlabelled test/ tifs ignored
    assert len(ds.images) == 15 and ds.images.shape[1:] == (96, 96, 3)
    assert all(str(p).startswith("train/") and str(p).endswith(".tif") for p in ds.paths)


def test_iqothnccd_three_classes_stratified(data_root: Path) -> None:
    source = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    with pytest.raises(DataError, match=r"image_size.*square"):
        load_dataset(cfg(source))  # 256x256 mixed with 312..400x256
    ds = load_dataset(cfg(source, image_size=64))
    check_invariants(ds)
    assert len(ds.images) == 1097 and ds.class_names == ["normal", "benign", "malignant"]
    assert np.bincount(ds.labels).tolist() == [416, 120, 561]
    total = np.bincount(ds.labels) / len(ds.labels)
    for name in SPLITS:
        share = np.bincount(ds.labels[ds.splits[name]], minlength=3) / len(ds.splits[name])
        assert np.abs(share - total).max() < 0.02, (name, share, total)
    assert abs(len(ds.splits["val"]) - 0.15 * 1097) <= 3


def test_kermany_grouped_val_from_official_train(kermany_zip: Path) -> None:
    # The official train and test number patients separately (person1 in train is not
    # person1 in test): 170 ids occur in both, refused unless allow_group_overlap says so.
    with pytest.warns(DataWarning, match="170 group ids in column 'patient_group'"):
        ds = load_dataset(cfg(kermany_zip, group_column="patient_group", image_size=64, allow_group_overlap=True))
    assert ds.group_overlap == 170
    check_invariants(ds)
    sizes = ds.split_sizes()
    assert sizes["test"] == 624 and sizes["train"] + sizes["val"] == 5216
    assert abs(sizes["val"] - 0.15 * 5216) < 40
    assert all(str(p).startswith("test/") for p in ds.paths[ds.splits["test"]])  # official test kept
    train_groups, val_groups = set(ds.groups[ds.splits["train"]]), set(ds.groups[ds.splits["val"]])
    assert not train_groups & val_groups, "a patient in train and val leaks"
    # with the overlap allowed, the official split is kept as given, not regrouped
    assert set(ds.labels[ds.splits["val"]].tolist()) == {0, 1}


def test_grouped_split_on_rows_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = np.array([f"p{g}" for g in rng.integers(0, 300, 2000)])
    labels = (np.char.str_len(groups) % 2).astype(np.int64)  # group-consistent labels
    for seed in range(5):
        splits = make_splits(labels, None, groups, val_fraction=0.2, test_fraction=0.2, seed=seed)
        owner: dict[str, str] = {}
        for name, idx in splits.items():
            for g in set(groups[idx]):
                assert owner.setdefault(g, name) == name
        assert 0.12 < len(splits["val"]) / 2000 < 0.28


# ----------------------------------------------------------------------------- splits


def test_same_seed_same_split_different_seed_different(data_root: Path) -> None:
    source = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    a = load_dataset(cfg(source, image_size=64, seed=7))
    b = load_dataset(cfg(source, image_size=64, seed=7))
    c = load_dataset(cfg(source, image_size=64, seed=8))
    for name in SPLITS:
        np.testing.assert_array_equal(a.splits[name], b.splits[name])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.splits["val"], c.splits["val"])


def test_split_is_identical_in_another_process(data_root: Path) -> None:
    source = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    here = load_dataset(cfg(source, image_size=64, seed=11))
    code = ("from trainables.config import DataConfig; from trainables.data import load_dataset; "
            f"print(load_dataset(DataConfig(source={str(source)!r}, image_size=64, seed=11)).fingerprint)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == here.fingerprint


def test_train_fraction_stratified_deterministic_nested(data_root: Path) -> None:
    source = data_root / "lung_ct" / "iqothnccd_1097_256px.zip"
    full = load_dataset(cfg(source, image_size=64))
    half = load_dataset(cfg(source, image_size=64, train_fraction=0.5))
    half_again = load_dataset(cfg(source, image_size=64, train_fraction=0.5))
    tenth = load_dataset(cfg(source, image_size=64, train_fraction=0.1))
    np.testing.assert_array_equal(half.splits["train"], half_again.splits["train"])
    for name in ("val", "test"):  # only train is subsampled
        np.testing.assert_array_equal(half.splits[name], full.splits[name])
        np.testing.assert_array_equal(tenth.splits[name], full.splits[name])
    assert set(tenth.splits["train"]) <= set(half.splits["train"]) <= set(full.splits["train"])
    per_class_full = np.bincount(full.labels[full.splits["train"]])
    per_class_half = np.bincount(half.labels[half.splits["train"]], minlength=3)
    assert np.abs(per_class_half - per_class_full * 0.5).max() <= 1
    assert half.fingerprint != full.fingerprint
    check_invariants(tenth, covers_all=False)


# ----------------------------------------------------------------------------- skipping


@pytest.fixture()
def messy_folder(tmp_path: Path, pcam_folder: Path, pcam_rows: list[dict[str, str]]) -> Path:
    """40 real patches plus 2 blank, 2 corrupt and 1 missing file, in a CSV folder."""
    rows = [dict(r) for r in pcam_rows[::5]]
    for row in rows:
        target = tmp_path / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((pcam_folder.parent / row["path"]).read_bytes())
    noise = np.random.default_rng(0).integers(-2, 3, (96, 96, 3))
    Image.fromarray((250 + noise).clip(0, 255).astype(np.uint8)).save(tmp_path / "white.png")
    Image.fromarray((8 + noise).clip(0, 255).astype(np.uint8)).save(tmp_path / "black.png")
    real = (pcam_folder.parent / rows[0]["path"]).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(real[: len(real) // 3])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image")
    extra = ["white.png", "black.png", "truncated.jpg", "garbage.jpg", "missing.jpg"]
    rows += [{"path": p, "split": "train", "label": "0", "label_name": "normal"} for p in extra]
    write_csv(tmp_path / "labels.csv", rows, ["path", "split", "label", "label_name"])
    return tmp_path / "labels.csv"


def test_blank_and_corrupt_files_are_skipped_with_one_warning(messy_folder: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(cfg(messy_folder))
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1, [str(w.message) for w in caught]
    message = str(data_warnings[0].message)
    assert "3 unreadable" in message and "2 near-blank" in message and "truncated.jpg" in message
    assert "missing.jpg (missing)" in message and "garbage.jpg (not an image" in message
    assert ds.skipped == {"unreadable": 3, "blank": 2}
    assert len(ds.images) == 40 and not {"white.png", "black.png", "missing.jpg"} & set(ds.paths.tolist())
    check_invariants(ds)
    with pytest.warns(DataWarning, match="3 unreadable"):
        kept = load_dataset(cfg(messy_folder, blank_filter=False))  # blank kept when asked
    assert kept.skipped == {"unreadable": 3, "blank": 0} and len(kept.images) == 42


def test_all_unreadable_is_an_error(tmp_path: Path) -> None:
    rows = [{"path": f"{i}.jpg", "label": str(i % 2)} for i in range(20)]
    for row in rows:
        (tmp_path / row["path"]).write_bytes(b"nope")
    write_csv(tmp_path / "labels.csv", rows, ["path", "label"])
    with pytest.raises(DataError, match="none of the 20 images"):
        load_dataset(cfg(tmp_path / "labels.csv"))


# ----------------------------------------------------------------------------- cache


def test_second_load_comes_from_cache(tmp_path: Path, pcam_folder: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = load_dataset(cfg(pcam_folder, cache_dir=str(cache_dir), blank_filter=False))
    entries = list((cache_dir / "decoded").iterdir())
    assert len(entries) == 1 and not first.from_cache
    images_file = entries[0] / "images.npy"
    stamp = images_file.stat().st_mtime_ns
    second = load_dataset(cfg(pcam_folder, cache_dir=str(cache_dir), blank_filter=False))
    reseeded = load_dataset(cfg(pcam_folder, cache_dir=str(cache_dir), blank_filter=False, seed=5,
                                train_fraction=0.5))
    assert second.from_cache and reseeded.from_cache  # split settings never re-decode
    assert images_file.stat().st_mtime_ns == stamp and len(list((cache_dir / "decoded").iterdir())) == 1
    np.testing.assert_array_equal(first.images, second.images)
    assert first.fingerprint == second.fingerprint and second.images.flags.writeable
    assert type(second.images) is np.ndarray
    resized = load_dataset(cfg(pcam_folder, cache_dir=str(cache_dir), blank_filter=False, image_size=48))
    assert not resized.from_cache and len(list((cache_dir / "decoded").iterdir())) == 2
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["settings"]["decoder"] >= 1 and not list((cache_dir / "decoded").glob(".tmp-*"))


def test_cache_key_follows_content_not_path(tmp_path: Path, pcam_small_zips: Path) -> None:
    cache_dir = str(tmp_path / "cache")
    copy = tmp_path / "renamed.zip"
    copy.write_bytes((pcam_small_zips / "mini.zip").read_bytes())
    load_dataset(cfg(pcam_small_zips / "mini.zip", cache_dir=cache_dir, blank_filter=False))
    assert load_dataset(cfg(copy, cache_dir=cache_dir, blank_filter=False)).from_cache


def test_broken_cache_entry_is_rebuilt(tmp_path: Path, data_root: Path) -> None:
    config = cfg(data_root / "medmnist" / "breastmnist.npz", cache_dir=str(tmp_path))
    load_dataset(config)
    (entry,) = (tmp_path / "decoded").iterdir()
    (entry / "images.npy").write_bytes(b"garbage")
    again = load_dataset(config)
    assert not again.from_cache and again.split_sizes()["train"] == 546
    assert load_dataset(config).from_cache


def test_concurrent_loads_share_one_entry(tmp_path: Path, data_root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = cfg(data_root / "medmnist" / "breastmnist.npz", cache_dir=str(tmp_path), image_size=40)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: load_dataset(config), range(4)))
    assert len({r.fingerprint for r in results}) == 1
    entries = list((tmp_path / "decoded").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    assert load_dataset(config).from_cache


def test_cache_dir_defaults_to_env(medtune_env: Path) -> None:
    assert data_cache.cache_root(None) == medtune_env
    assert data_cache.cache_root("/x/y") == Path("/x/y")


# ----------------------------------------------------------------------------- errors


def test_missing_relative_source_names_medtune_data() -> None:
    with pytest.raises(DataError, match="MEDTUNE_DATA") as info:
        load_dataset(cfg("nowhere/missing.csv"))
    assert "nowhere/missing.csv" in str(info.value)


def test_missing_unknown_npz_is_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(cfg(tmp_path / "mystery.npz"))


def test_missing_column_lists_columns_and_closest(pcam_folder: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'lable'.*did you mean 'label'") as info:
        load_dataset(cfg(pcam_folder, label_column="lable"))
    assert "label_column" in str(info.value) and "'path'" in str(info.value)
    with pytest.raises(DataError, match="group_column"):
        load_dataset(cfg(pcam_folder, group_column="patient"))


def test_bad_labels_and_split_values(tmp_path: Path, pcam_folder: Path, pcam_rows: list[dict[str, str]]) -> None:
    rows = [dict(r, path=str(pcam_folder.parent / r["path"])) for r in pcam_rows[:4]]
    write_csv(tmp_path / "mixed.csv", [dict(r, label="tumour" if i % 2 else "1") for i, r in enumerate(rows)],
              ["path", "label"])
    with pytest.raises(DataError, match=r"labels in column 'label' mix class names \(2, e.g. 'tumour'\) and "
                                        r"numbers \(2, e.g. '1'\); write every label the same way"):
        load_dataset(cfg(tmp_path / "mixed.csv"))
    write_csv(tmp_path / "half.csv", [dict(r, label="1.5") for r in rows], ["path", "label"])
    with pytest.raises(DataError, match=r"label '1.5' in column 'label' is not an integer"):
        load_dataset(cfg(tmp_path / "half.csv"))
    write_csv(tmp_path / "split.csv", [dict(r, split="holdout") for r in rows], ["path", "label", "split"])
    with pytest.raises(DataError, match=r"'holdout'.*train, val"):
        load_dataset(cfg(tmp_path / "split.csv"))


def test_empty_split_and_bad_settings(data_root: Path, tmp_path: Path) -> None:
    source = data_root / "pcam_kaggle_sample"
    with pytest.raises(DataError, match="val split is empty"):
        load_dataset(cfg(source, val_fraction=0.0, cache_dir=str(tmp_path)))
    assert not (tmp_path / "decoded").exists(), "the empty split must be found before decoding"
    # settings that need no data are refused when the DataConfig is built (ConfigError, a ValueError)
    with pytest.raises(ConfigError, match=r"'val_fraction' must be < 1 - test_fraction, but got val_fraction=0.6 "
                                          r"with test_fraction=0.5"):
        load_dataset(cfg(source, val_fraction=0.6, test_fraction=0.5))
    with pytest.raises(ConfigError, match=r"'train_fraction' must be in \(0, 1\], but got 0.0"):
        load_dataset(cfg(source, train_fraction=0.0))
    with pytest.raises(ConfigError, match="'format' must be one of .* but got 'imgfolder'; did you mean 'imagefolder'"):
        load_dataset(cfg(source, format="imgfolder"))  # type: ignore[arg-type]
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)


def test_test_split_empty_only_when_asked(data_root: Path) -> None:
    ds = load_dataset(cfg(data_root / "lung_ct" / "iqothnccd_1097_256px.zip", image_size=32, test_fraction=0.0))
    assert ds.split_sizes()["test"] == 0 and ds.split_sizes()["train"] + ds.split_sizes()["val"] == 1097


def test_resolve_data_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDTUNE_DATA", str(tmp_path))
    assert resolve_data_path("a/b.npz") == tmp_path / "a" / "b.npz"
    assert resolve_data_path("/abs/x.csv") == Path("/abs/x.csv")
    assert resolve_data_path("~/x.csv") == Path.home() / "x.csv"
    monkeypatch.delenv("MEDTUNE_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("x.zip") == tmp_path / "data" / "x.zip"


# ----------------------------------------------------------------------------- download


def test_ensure_medmnist_existing_file_is_returned(data_root: Path) -> None:
    path = data_root / "medmnist" / "pneumoniamnist.npz"
    assert ensure_medmnist(path) == path


def test_ensure_medmnist_downloads_and_checks_md5(tmp_path: Path, data_root: Path) -> None:
    real = (data_root / "medmnist" / "pneumoniamnist.npz").as_uri()
    target = tmp_path / "dl" / "pneumoniamnist.npz"
    assert ensure_medmnist(target, url=real) == target
    from trainables.data.medmnist import md5_of

    assert md5_of(target) == PNEUMONIA_MD5
    wrong = tmp_path / "wrong" / "pneumoniamnist.npz"
    with pytest.raises(DataError, match="MD5"):
        ensure_medmnist(wrong, url=(data_root / "medmnist" / "breastmnist.npz").as_uri())
    assert not wrong.exists() and not list(wrong.parent.iterdir()), "no partial file may remain"


def test_ensure_medmnist_network_failure_says_what_to_do(tmp_path: Path) -> None:
    target = tmp_path / "breastmnist.npz"
    with pytest.raises(DataError) as info:
        ensure_medmnist(target, url="http://127.0.0.1:9/breastmnist.npz", timeout=5)
    message = str(info.value)
    assert str(target) in message and "https://zenodo.org/records/10519652/files/breastmnist.npz" in message
    assert "750601b1f35ba3300ea97c75c52ff8f6" in message and not target.exists()
    with pytest.raises(DataError, match="not a known MedMNIST"):
        ensure_medmnist(tmp_path / "unknownmnist.npz")


def test_official_md5s_match_the_shipped_files(data_root: Path) -> None:
    from trainables.data.medmnist import known_file, md5_of

    for name in ("pneumoniamnist.npz", "breastmnist.npz"):
        url, md5 = known_file(name)
        assert md5_of(data_root / "medmnist" / name) == md5
        assert url == f"https://zenodo.org/records/10519652/files/{name}?download=1"


# ----------------------------------------------------------------------------- slow: whole zips


def _stained_fraction(image: np.ndarray) -> float:
    """Share of H&E-stained pixels (saturated), an independent check of 'blank'."""
    rgb = image.astype(np.int16)
    return float(((rgb.max(-1) - rgb.min(-1)) > 40).mean())


@pytest.mark.slow
def test_pcam_full_zip_counts_and_blank_patches(pcam_zip: Path) -> None:
    raw = load_dataset(cfg(pcam_zip, blank_filter=False))
    check_invariants(raw)
    assert raw.split_sizes() == {"train": 20000, "val": 3000, "test": 3000}
    for name in SPLITS:
        assert np.bincount(raw.labels[raw.splits[name]]).tolist() == [len(raw.splits[name]) // 2] * 2
    with pytest.warns(DataWarning, match="near-blank"):
        ds = load_dataset(cfg(pcam_zip))
    check_invariants(ds)
    dropped = sorted(set(raw.paths.tolist()) - set(ds.paths.tolist()))
    print(f"\nPCam: default blank rule drops {ds.skipped['blank']} of 26000 patches")
    assert len(dropped) == ds.skipped["blank"] and 50 <= len(dropped) <= 150
    position = {p: i for i, p in enumerate(raw.paths.tolist())}
    stained = [_stained_fraction(raw.images[position[p]]) for p in dropped]
    assert max(stained) < 0.01, "a dropped patch shows tissue"


@pytest.mark.slow
def test_kermany_full_zip_native_size_and_cache(kermany_zip: Path) -> None:
    config = cfg(kermany_zip, group_column="patient_group", allow_group_overlap=True)
    with pytest.warns(DataWarning, match="allow_group_overlap"):
        ds = load_dataset(config)
    check_invariants(ds)
    assert ds.images.shape == (5840, 224, 224, 3)
    assert ds.split_sizes()["test"] == 624 and ds.split_sizes()["train"] + ds.split_sizes()["val"] == 5216
    assert not set(ds.groups[ds.splits["train"]]) & set(ds.groups[ds.splits["val"]])
    with pytest.warns(DataWarning, match="allow_group_overlap"):
        again = load_dataset(config)
    assert again.from_cache and again.fingerprint == ds.fingerprint and again.group_overlap == 170


def test_class_names_in_the_label_column_are_classes_in_sorted_order_or_the_order_given(
        tmp_path: Path, pcam_folder: Path, pcam_rows: list[dict[str, str]]) -> None:
    names = {"0": "normal", "1": "tumour"}  # the manifest's label_name column says normal, tumor
    rows = [dict(r, path=str(pcam_folder.parent / r["path"]), label=names[r["label"]]) for r in pcam_rows]
    write_csv(tmp_path / "names.csv", rows, ["path", "label", "split"])
    by_index = load_dataset(cfg(pcam_folder))
    named = load_dataset(cfg(tmp_path / "names.csv"))
    assert named.class_names == ["normal", "tumour"]  # sorted
    assert np.array_equal(named.labels, by_index.labels) and np.array_equal(named.images, by_index.images)
    # data.classes fixes the order: tumour first makes normal the positive class (index 1)
    flipped = load_dataset(cfg(tmp_path / "names.csv", classes=("tumour", "normal")))
    assert flipped.class_names == ["tumour", "normal"] and np.array_equal(flipped.labels, 1 - by_index.labels)
    assert flipped.fingerprint != named.fingerprint  # another labelling: never the same cache entry or study
    # bare integer labels (no names anywhere): data.classes names them in index order
    write_csv(tmp_path / "ints.csv", [dict(r, label=str(int(r["label"] == "tumour"))) for r in rows],
              ["path", "label", "split"])
    bare = load_dataset(cfg(tmp_path / "ints.csv", classes=("benign", "metastasis")))
    assert bare.class_names == ["benign", "metastasis"] and np.array_equal(bare.labels, by_index.labels)
    with pytest.raises(DataError, match=r"\['tumor'\] in data.classes is not a class of the data; the data's class "
                                        r"\['tumour'\] is missing from data.classes; the data's classes are "
                                        r"\['normal', 'tumour'\]"):
        load_dataset(cfg(tmp_path / "names.csv", classes=("normal", "tumor")))
    with pytest.raises(DataError, match=r"the data's class \['tumour'\] is missing from data.classes"):
        load_dataset(cfg(tmp_path / "names.csv", classes=("normal",)))
    with pytest.raises(ConfigError, match="data setting 'classes' must be distinct names"):
        cfg(tmp_path / "names.csv", classes=("normal", "normal"))
    write_csv(tmp_path / "both.csv", [dict(r, label_name=r["label"]) for r in rows], ["path", "label", "label_name"])
    with pytest.raises(DataError, match="holds class names, so column 'label_name' cannot name them again"):
        load_dataset(cfg(tmp_path / "both.csv"))
