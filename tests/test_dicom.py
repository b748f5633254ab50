"""DICOM sources, on the real DICOM files pydicom ships (CT, MR, RT dose, compressed variants)."""

from __future__ import annotations

import csv
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from trainables.config import ConfigError, DataConfig
from trainables.data import DataError, DataWarning, load_dataset
from trainables.data.dicom import dicom_image, is_dicom

CT = get_testdata_file("CT_small.dcm")  # 128x128 CT, 16-bit, rescale slope/intercept, no window
MR = get_testdata_file("MR_small.dcm")  # 64x64 MR with WindowCenter/WindowWidth
NO_CODEC = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")  # JPEG-LS: no decoder installed here
MULTI_FRAME = get_testdata_file("rtdose.dcm")  # 15 frames
TRUNCATED = get_testdata_file("MR_truncated.dcm")


def test_dicom_files_are_recognised_by_their_marker_not_their_name():
    assert is_dicom(Path(CT).read_bytes()) and is_dicom(Path(MR).read_bytes())
    assert not is_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200))


def test_a_file_window_is_applied_as_pydicom_applies_it_and_the_user_window_overrides_it():
    dataset = pydicom.dcmread(MR)
    image = np.asarray(dicom_image(Path(MR).read_bytes()))
    # pydicom's own VOI LUT (the DICOM standard's linear window), which maps the window onto the
    # stored value range (signed 16 bits here), rescaled to 0..255
    voi = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64), dataset)
    low = -(2 ** (dataset.BitsStored - 1)) if dataset.PixelRepresentation else 0
    expected = (voi - low) * 255 / (2 ** dataset.BitsStored - 1)
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert np.abs(image.astype(float) - expected).max() <= 1.5
    # CT: Hounsfield units through the rescale; a soft-tissue window [40, 400] clips below -160 HU to black
    ct = pydicom.dcmread(CT)
    hu = apply_modality_lut(ct.pixel_array, ct)
    windowed = np.asarray(dicom_image(Path(CT).read_bytes(), window=(40.0, 400.0)))
    assert (windowed[hu <= -160] == 0).all() and (windowed[hu >= 240] == 255).all()
    middle = (hu > -150) & (hu < 230)
    assert np.abs(windowed[middle] - (hu[middle] + 160) * 255 / 400).max() <= 0.51
    # no window in the file: its min-max
    plain = np.asarray(dicom_image(Path(CT).read_bytes()))
    assert plain.min() == 0 and plain.max() == 255


def test_monochrome1_is_inverted_so_low_values_are_dark(tmp_path):
    dataset = pydicom.dcmread(CT)
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "inverted.dcm")
    normal = np.asarray(dicom_image(Path(CT).read_bytes())).astype(int)
    inverted = np.asarray(dicom_image((tmp_path / "inverted.dcm").read_bytes())).astype(int)
    assert np.array_equal(inverted, 255 - normal)


def _folder(tmp_path: Path, bad: list[str]) -> Path:
    """An ImageFolder of real DICOM files without a .dcm suffix in half of them: ct/ and mr/."""
    root = tmp_path / "dicom"
    for label, source in (("ct", CT), ("mr", MR)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            shutil.copy(source, root / label / (f"{i}.dcm" if i % 2 else f"{i}.dicom"))
    for i, path in enumerate(bad):
        shutil.copy(path, root / "mr" / f"bad{i}.dcm")
    return root


def test_a_folder_of_dicom_files_loads_and_unreadable_ones_are_skipped_and_counted(tmp_path):
    root = _folder(tmp_path, [NO_CODEC, MULTI_FRAME, TRUNCATED])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(DataConfig(source=str(root), image_size=32, channels=1, cache_dir=str(tmp_path / "c")))
    assert data.class_names == ["ct", "mr"] and len(data.labels) == 24 and data.images.shape[1:] == (32, 32, 1)
    assert data.skipped["unreadable"] == 3
    message = " ".join(str(w.message) for w in caught if issubclass(w.category, DataWarning))
    assert "multi-frame DICOM (15 frames)" in message and "cannot be decoded here" in message
    # one file per class decodes to the same pixels as the file read alone
    ct_image = np.asarray(dicom_image(Path(CT).read_bytes()).resize((32, 32), resample=2))
    assert np.abs(data.images[data.labels == 0][0, ..., 0].astype(int) - ct_image.astype(int)).max() <= 1
    # a window is part of the decode: another window, other pixels, another cache entry
    windowed = load_dataset(DataConfig(source=str(root), image_size=32, channels=1, window=(40.0, 400.0),
                                       cache_dir=str(tmp_path / "c")))
    assert windowed.fingerprint != data.fingerprint and not np.array_equal(windowed.images, data.images)


def test_dicom_in_a_zip_manifest_and_mixed_sizes_need_an_image_size(tmp_path):
    archive = tmp_path / "dicom.zip"
    rows = [(f"images/{i}.dcm", i % 2) for i in range(24)]
    with zipfile.ZipFile(archive, "w") as out:
        for path, label in rows:
            out.write(CT if label == 0 else MR, path)
        with out.open("labels.csv", "w") as handle:
            text = "path,label\n" + "".join(f"{p},{'ct' if label == 0 else 'mr'}\n" for p, label in rows)
            handle.write(text.encode())
    with pytest.raises(DataError, match=r"images differ in size: images/1.dcm is 64x64 but images/0.dcm is "
                                        r"128x128; set `image_size`"):
        load_dataset(DataConfig(source=str(archive), cache_dir=str(tmp_path / "c")))
    data = load_dataset(DataConfig(source=str(archive), image_size=64, cache_dir=str(tmp_path / "c")))
    assert data.class_names == ["ct", "mr"] and data.channels == 1 and len(data.labels) == 24


def test_a_bad_window_is_refused_before_anything_is_read():
    for bad in ((40.0,), (40.0, 0.0), (40.0, -10.0), (float("nan"), 400.0)):
        with pytest.raises(ConfigError, match=r"'window' must be \[\] or \[centre, width\] with width > 0"):
            DataConfig(source="x.zip", window=bad)


def test_a_csv_manifest_lists_dicom_files_by_path(tmp_path):
    rows = []
    for i in range(24):
        target = tmp_path / f"scan{i}.dcm"
        shutil.copy(CT if i % 2 == 0 else MR, target)
        rows.append({"path": str(target), "label": "ct" if i % 2 == 0 else "mr"})
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    data = load_dataset(DataConfig(source=str(tmp_path / "labels.csv"), image_size=32,
                                   cache_dir=str(tmp_path / "c")))
    assert data.split_sizes()["train"] > 0 and sorted(np.bincount(data.labels)) == [12, 12]


def test_predict_decodes_a_dicom_file_with_the_studys_window(tmp_path):
    from search.model.predict import ExportedModel, PredictError, decode_image
    from trainables.augment import InputSpec

    pre = {"channels": 1, "image_size": 32, "stored_size": [32, 32], "window": [40.0, 400.0]}
    model = ExportedModel(tmp_path, {"preprocess": pre}, [], InputSpec(None, 32, 1, (0.5,), (0.5,)))
    image = decode_image(Path(CT), model)
    expected = np.asarray(dicom_image(Path(CT).read_bytes(), window=(40.0, 400.0)).resize((32, 32), resample=2))
    assert image.shape == (32, 32, 1) and np.array_equal(image[..., 0], expected)
    unwindowed = decode_image(Path(CT), ExportedModel(tmp_path, {"preprocess": {**pre, "window": None}}, [],
                                                      model.spec))
    assert not np.array_equal(unwindowed, image)  # the file has no window: its min-max instead
    with pytest.raises(PredictError, match=r"cannot decode .*rtdose.dcm \(DicomError: multi-frame DICOM \(15 frames\)"):
        decode_image(Path(MULTI_FRAME), model)
