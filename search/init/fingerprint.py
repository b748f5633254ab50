"""What a data source holds, read before a space is written: ``search init``'s fingerprint.

The fingerprint is what the rules of :mod:`search.init.rules` decide from: image count,
classes and their balance, image sizes and colour, DICOM modalities, patient groups,
the splits the source defines, and (once decoded) near-duplicates across splits. Sizes
and modes come from the image headers of an even sample of the files (PIL's lazy open,
pydicom with ``stop_before_pixels``), so reading it costs seconds, not a decode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainables.config import DataConfig
from trainables.data import DataError, ImageDataset
from trainables.data.dicom import is_dicom
from trainables.data.sources import (
    Manifest,
    csv_header,
    detect_format,
    open_source,
)
from trainables.data.splits import SPLITS, groups_across_source_splits

if TYPE_CHECKING:
    from PIL import Image

SCAN_IMAGES = 400  # headers read, evenly spaced over the source
# Lower-cased CSV column names taken for the image path, the label and the patient, in order.
PATH_COLUMNS = ("path", "filename", "file", "image", "image_path", "filepath", "file_path")
LABEL_COLUMNS = ("label", "class", "diagnosis", "target", "finding", "y")
GROUP_COLUMNS = ("patient_id", "patientid", "patient", "patient_group", "subject_id", "subject", "participant_id",
                 "participant", "case_id", "study_id", "group")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class Fingerprint:
    """A data source as ``search init`` sees it.

    Attributes:
        source: the resolved source path; format: its layout (one of ``trainables.data.sources.FORMATS``).
        config: the data settings that read it (the columns found, the group column).
        class_names / class_counts: the classes, index = label, and images per class.
        sides: shorter image side over the scanned images (``min``, ``median``, ``max``).
        uniform_size: every scanned image has the same height and width.
        gray: every scanned image is grayscale.
        modalities: DICOM ``Modality`` tag -> scanned files (empty: no DICOM).
        scanned / unreadable: headers read, and those that could not be read.
        groups: distinct group ids (0: no group column); group_overlap: ids in several
            of the source's own splits.
        source_splits: images per split the source defines (empty: it defines none).
        hint: words of the source's path (lower case), for the modality rule.
        near_duplicates: val/test images whose 16x16 thumbnail equals a train image's
            (None until :func:`with_near_duplicates` has looked at the decoded images).
    """

    source: Path
    format: str
    config: DataConfig
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    sides: tuple[int, int, int]
    uniform_size: bool
    gray: bool
    modalities: dict[str, int]
    scanned: int
    unreadable: int
    groups: int
    group_overlap: int
    source_splits: dict[str, int]
    hint: str
    near_duplicates: int | None = None
    frames: int = 0
    size_example: tuple[int, int] = (0, 0)

    @property
    def images(self) -> int:
        """Images the source lists."""
        return int(sum(self.class_counts))

    @property
    def imbalance(self) -> float:
        """Images of the largest class per image of the smallest (1.0: balanced)."""
        return max(self.class_counts) / max(min(self.class_counts), 1)

    def lines(self) -> list[str]:
        """The fingerprint in a few printed lines (also the head comment of the space)."""
        counts = ", ".join(f"{name} {count}" for name, count in zip(self.class_names, self.class_counts))
        low, mid, high = self.sides
        size = (f"{self.size_example[0]}x{self.size_example[1]} px" if self.uniform_size
                else f"mixed sizes, shorter side {low}..{high} px (median {mid})")
        out = [(f"source {self.source} ({self.format}): {self.images} images, {len(self.class_names)} classes "
               f"({counts}; {self.imbalance:.1f}:1 largest to smallest)"),
               f"images: {size}, {'grayscale' if self.gray else 'colour'} (headers of {self.scanned} read"
               + (f", {self.unreadable} unreadable" if self.unreadable else "") + ")"]
        if self.modalities:
            out.append("DICOM: " + ", ".join(f"{m} {n}" for m, n in sorted(self.modalities.items()))
                       + (f"; {self.frames} multi-frame files (skipped when decoding)" if self.frames else ""))
        splits = ", ".join(f"{k} {v}" for k, v in self.source_splits.items()) or "none (carved out of the data)"
        out.append(f"splits in the source: {splits}")
        if self.config.group_column:
            out.append(f"groups: {self.groups} ids in column {self.config.group_column!r}"
                       + (f", {self.group_overlap} of them in several source splits" if self.group_overlap else ""))
        else:
            out.append("groups: no patient column found (" + "/".join(GROUP_COLUMNS[:3]) + "...): split by image")
        if self.near_duplicates is not None:
            out.append(f"near-duplicates: {self.near_duplicates} val/test images have a 16x16 thumbnail equal to a "
                       "train image's" + (" (possible leakage: check them)" if self.near_duplicates else ""))
        return out


def find_column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    """The first header column whose lower-cased name is one of ``candidates``."""
    lowered = {name.lower(): name for name in header}
    return next((lowered[c] for c in candidates if c in lowered), None)


def data_settings(path: Path) -> DataConfig:
    """The data settings that read ``path``: its path, label and patient columns found by name.

    Raises:
        DataError: a CSV manifest with no column that can hold the path or the label.
    """
    fmt = detect_format(path)
    config = DataConfig(source=str(path))
    header = csv_header(path) if fmt == "csv" else []
    if not header:
        return config
    path_column, label_column = find_column(header, PATH_COLUMNS), find_column(header, LABEL_COLUMNS)
    if path_column is None or label_column is None:
        missing = "an image path column (" + ", ".join(PATH_COLUMNS[:4]) + ")" if path_column is None else \
            "a label column (" + ", ".join(LABEL_COLUMNS[:4]) + ")"
        raise DataError(f"{path}: the manifest's columns are {header}, with no {missing}; rename the column, "
                        "or write the space by hand with data.path_column / data.label_column")
    return dataclasses.replace(config, path_column=path_column, label_column=label_column,
                               group_column=find_column(header, GROUP_COLUMNS))


def read_fingerprint(path: Path) -> Fingerprint:
    """Read a source's manifest and a sample of its image headers.

    Raises:
        DataError: the source cannot be read, lists no image, or mixes DICOM modalities.
    """
    config = data_settings(path)
    manifest = open_source(path, config)
    try:
        scan = _scan(manifest)
    finally:
        manifest.close()
    if scan.read == 0:
        raise DataError(f"{path}: none of the {scan.unreadable} images sampled could be read as an image or DICOM "
                        "file; check that the files are images (png, jpeg, tiff, dcm...) and not damaged")
    if len(scan.modalities) > 1:
        found = ", ".join(f"{m} ({n} files)" for m, n in sorted(scan.modalities.items()))
        raise DataError(f"{path} mixes DICOM modalities: {found}; a study learns one kind of image, so give each "
                        "modality its own source (a CSV listing only its files, or its own folder)")
    counts = np.bincount(manifest.labels, minlength=len(manifest.class_names))
    splits = {}
    if manifest.split is not None:
        codes = np.bincount(manifest.split.astype(np.int64), minlength=len(SPLITS))
        splits = {name: int(n) for name, n in zip(SPLITS, codes) if n}
    overlap = groups_across_source_splits(manifest.split, manifest.groups)
    sides = sorted(min(h, w) for h, w in scan.sizes)
    example = Counter(scan.sizes).most_common(1)[0][0]
    return Fingerprint(
        source=path, format=manifest.format, config=config, class_names=tuple(manifest.class_names),
        class_counts=tuple(int(c) for c in counts), sides=(sides[0], int(statistics.median(sides)), sides[-1]),
        uniform_size=len(set(scan.sizes)) == 1, gray=scan.gray, modalities=dict(scan.modalities),
        scanned=scan.read, unreadable=scan.unreadable,
        groups=len(set(manifest.groups.tolist())) if manifest.groups is not None else 0,
        group_overlap=len(overlap), source_splits=splits, hint=str(path).lower(), frames=scan.frames,
        size_example=example,
    )


@dataclass
class _Scan:
    sizes: list[tuple[int, int]] = field(default_factory=list)
    gray: bool = True
    modalities: Counter = field(default_factory=Counter)
    read: int = 0
    unreadable: int = 0
    frames: int = 0


def _scan(manifest: Manifest) -> _Scan:
    """Sizes, colour and DICOM modality of up to :data:`SCAN_IMAGES` evenly spaced images."""
    scan = _Scan()
    if manifest.arrays is not None:  # MedMNIST: decoded already
        shape = manifest.arrays.shape
        scan.sizes = [(int(shape[1]), int(shape[2]))]
        scan.gray = len(shape) == 3 or shape[-1] == 1
        scan.read = int(shape[0])
        return scan
    count = len(manifest.paths)
    for i in sorted(set(np.linspace(0, count - 1, min(count, SCAN_IMAGES)).astype(int).tolist())):
        try:
            data = manifest.read(i)
            if is_dicom(data) or manifest.paths[i].lower().endswith((".dcm", ".dicom")):
                size, gray, modality, frames = _dicom_header(data)
                scan.modalities[modality] += 1
                scan.frames += frames > 1
            else:
                from PIL import Image

                with Image.open(io.BytesIO(data)) as image:
                    size, gray = (image.height, image.width), _is_gray(image)
        except Exception:  # noqa: BLE001 - any unreadable file is counted, as the decoder does
            scan.unreadable += 1
            continue
        scan.sizes.append(size)
        scan.gray &= gray
        scan.read += 1
    return scan


def _is_gray(image: Image.Image) -> bool:
    """Grayscale by mode, or an RGB image whose three channels are equal (X-rays saved as colour JPEGs)."""
    if image.mode in GRAY_MODES:
        return True
    if image.mode not in ("RGB", "RGBA", "P"):
        return False
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int(np.abs(pixels - pixels[..., :1]).max()) <= 8  # JPEG chroma noise stays within a few levels


def _dicom_header(data: bytes) -> tuple[tuple[int, int], bool, str, int]:
    """(rows, columns), grayscale, Modality and frame count from a DICOM header."""
    import pydicom

    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    size = (int(header.Rows), int(header.Columns))
    gray = int(getattr(header, "SamplesPerPixel", 1)) == 1 and \
        str(getattr(header, "PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")
    return size, gray, str(getattr(header, "Modality", "") or "unknown"), int(getattr(header, "NumberOfFrames", 1) or 1)


def with_near_duplicates(fingerprint: Fingerprint, data: ImageDataset) -> Fingerprint:
    """``fingerprint`` with the count of val/test images whose thumbnail equals a train image's.

    The thumbnail is the image mean-pooled to 16x16 and quantised to 16 grey levels, so
    a re-encoded or rescaled copy still matches; it costs one pass over the decoded array.
    """
    thumbs = _thumbnail_digests(data.images)
    train = {thumbs[i] for i in data.splits["train"].tolist()}
    held_out = np.concatenate([data.splits["val"], data.splits["test"]]).tolist()
    return dataclasses.replace(fingerprint, near_duplicates=sum(thumbs[i] in train for i in held_out))


def _thumbnail_digests(images: np.ndarray, side: int = 16) -> list[bytes]:
    n, h, w, _ = images.shape
    digests = []
    for start in range(0, n, 1024):
        batch = images[start:start + 1024].astype(np.float32).mean(axis=3)
        rows, cols = np.linspace(0, h, side + 1).astype(int), np.linspace(0, w, side + 1).astype(int)
        pooled = np.add.reduceat(np.add.reduceat(batch, rows[:-1], axis=1), cols[:-1], axis=2)
        pooled /= np.outer(np.diff(rows), np.diff(cols))[None]
        quantised = (pooled // 16).astype(np.uint8)
        digests += [hashlib.blake2b(q.tobytes(), digest_size=12).digest() for q in quantised]
    return digests


__all__ = ["Fingerprint", "data_settings", "find_column", "read_fingerprint", "with_near_duplicates"]
