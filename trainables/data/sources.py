"""Find the images and labels a data source describes, without decoding any image.

Five layouts are understood: a MedMNIST ``.npz``; a CSV manifest with images in a
folder beside it; a ``.zip`` holding ``labels.csv`` plus the images (or an
``X.labels.csv`` next to ``X.zip``); an ImageFolder tree; and Kaggle's PCam layout
(``train_labels.csv`` + ``train/<id>.tif``). Each becomes a :class:`Manifest`: the
per-image paths, labels, the source's own split and groups, the files whose bytes
identify the content, and a thread-safe ``read(i)`` returning image ``i``'s bytes.
Every check that needs no decoding happens here, so a wrong column or path fails in
milliseconds instead of after minutes of decoding.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import math
import mmap
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..config import DataConfig
from .errors import DataError
from .medmnist import class_names_for
from .splits import SPLITS, split_code

FORMATS = ("npz", "csv", "imagefolder", "kaggle_pcam")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif",
                              ".webp", ".ppm", ".pgm", ".pbm", ".dcm", ".dicom"})
_NPZ_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


@dataclass
class Manifest:
    """What a source holds, before decoding.

    Attributes:
        format: the resolved format, one of :data:`FORMATS`.
        source: the source path as given (resolved).
        paths: per image, a name for messages and reports (relative path or zip member).
        labels: int64 class index per image.
        class_names: index = label.
        split: the source's own split codes (0 train, 1 val, 2 test), or None.
        groups: group id per image when a group column was used, else None.
        hash_files: ``(name, file)`` pairs whose bytes identify the content.
        key: resolved settings that change what is read (columns, layout) for the cache key.
        read: returns the bytes of image ``i``; safe to call from several threads.
        arrays: already-decoded images (``.npz``), else None.
        close: releases open files.
    """

    format: str
    source: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray | None
    groups: np.ndarray | None
    hash_files: list[tuple[str, Path]]
    key: dict[str, Any]
    read: Callable[[int], bytes] | None = None
    arrays: np.ndarray | None = None
    close: Callable[[], None] = field(default=lambda: None)


def data_root() -> Path:
    """The folder relative data paths live under: ``$MEDTUNE_DATA``, else ``./data``, absolute.

    Read from the environment at each call, as :func:`resolve_data_path` does.
    """
    return Path(os.path.expanduser(os.environ.get("MEDTUNE_DATA", "data"))).absolute()


def is_under_data_root(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with ``..`` collapsed, lies inside :func:`data_root`.

    ``source: ../../elsewhere/x.npz`` resolves outside the data folder; that is allowed,
    but reports should say so, because the study file then depends on more than
    ``$MEDTUNE_DATA``. Paths are compared after ``os.path.normpath`` (not after following
    symlinks), so a data folder that is itself a symlink still counts as inside.
    """
    target = Path(os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))
    root = Path(os.path.normpath(data_root()))
    return target == root or root in target.parents


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """Where a data path points: relative paths live under ``$MEDTUNE_DATA``.

    ``MEDTUNE_DATA`` defaults to ``./data`` in the current directory, so a study file can
    say ``pcam/pcam_26k_96px.zip`` and run unchanged on a laptop and on a cluster whose
    data sits elsewhere. Absolute and ``~`` paths are taken as they are.

    Example:
        >>> os.environ["MEDTUNE_DATA"] = "/data"
        >>> resolve_data_path("medmnist/breastmnist.npz")
        PosixPath('/data/medmnist/breastmnist.npz')
    """
    given = Path(os.path.expanduser(os.fspath(path)))
    if given.is_absolute():
        return given
    return data_root() / given


def missing_source_error(raw: str, path: Path) -> DataError:
    """The error for a source path that does not exist, with the MEDTUNE_DATA hint."""
    hint = ""
    if not Path(os.path.expanduser(raw)).is_absolute():
        root = os.environ.get("MEDTUNE_DATA")
        where = f"MEDTUNE_DATA={root!r}" if root else "MEDTUNE_DATA is unset, so ./data in the current directory"
        hint = (f"; relative paths are looked up under $MEDTUNE_DATA ({where}): set MEDTUNE_DATA "
                "to your data folder or give an absolute path")
    return DataError(f"data source {raw!r} not found at {path}{hint}")


def detect_format(path: Path, requested: str = "auto") -> str:
    """The format of an existing source; checks that an explicit format fits the path."""
    if path.is_dir():
        if (path / "train_labels.csv").is_file() and (path / "train").is_dir():
            found = "kaggle_pcam"
        elif (path / "labels.csv").is_file():
            found = "csv"
        else:
            found = "imagefolder"
    else:
        found = {".npz": "npz", ".zip": "csv", ".csv": "csv"}.get(path.suffix.lower(), "")
    if requested == "auto":
        if not found:
            raise DataError(f"cannot tell the format of {path}: expected a .npz, .csv or .zip file "
                            f"or a folder; set `format` to one of {', '.join(FORMATS)}")
        return found
    if requested not in FORMATS:
        close = difflib.get_close_matches(requested, FORMATS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown data format {requested!r}: use auto or one of {', '.join(FORMATS)}{hint}")
    fits = {"npz": path.is_file(), "csv": path.is_file() or (path / "labels.csv").is_file(),
            "imagefolder": path.is_dir(),
            "kaggle_pcam": (path / "train_labels.csv").is_file()}[requested]
    if not fits:
        raise DataError(f"data source {path} does not look like format={requested!r} "
                        f"(it looks like {found or 'nothing known'}); fix `source` or set format: auto")
    return requested


def open_source(path: Path, config: DataConfig) -> Manifest:
    """Read the manifest of ``path`` in the layout ``config.format`` (or the detected one).

    Args:
        path: resolved, existing source path.
        config: a :class:`~trainables.config.DataConfig`.

    Raises:
        DataError: a wrong layout, column, label, split value or path.
    """
    fmt = detect_format(path, config.format)
    if config.group_column and fmt != "csv":
        raise DataError(f"group_column={config.group_column!r} needs a CSV manifest, but {path} is "
                        f"format {fmt!r}; drop group_column or describe the images in a CSV")
    if fmt == "npz":
        manifest = _open_npz(path)
    elif fmt == "imagefolder":
        manifest = _open_imagefolder(path)
    elif fmt == "kaggle_pcam":
        manifest = _open_kaggle_pcam(path)
    elif path.is_dir():
        manifest = _open_csv(path / "labels.csv", config)
    elif path.suffix.lower() == ".zip":
        manifest = _open_zip(path, None, config)
    else:
        manifest = _open_csv(path, config)
    return with_classes(manifest, config.classes) if config.classes else manifest


def with_classes(manifest: Manifest, classes: tuple[str, ...]) -> Manifest:
    """``manifest`` with its classes in the order ``data.classes`` gives (labels renumbered).

    The names must be the data's class names, each once. Labels that are bare indices
    (no names anywhere, so named ``0``, ``1``...) are named by ``classes`` in index order.

    Raises:
        DataError: a name the data lacks, or a class of the data ``classes`` leaves out.
    """
    wanted = [str(name) for name in classes]
    have = list(manifest.class_names)
    key = {**manifest.key, "classes": wanted}
    if have == [str(i) for i in range(len(have))] and len(wanted) == len(have) and set(wanted) != set(have):
        return dataclasses.replace(manifest, class_names=wanted, key=key)  # naming bare indices
    missing, extra = [n for n in wanted if n not in have], [n for n in have if n not in wanted]
    if missing or extra:
        problem = "; ".join(part for part in (
            f"{missing} in data.classes {'is' if len(missing) == 1 else 'are'} not a class of the data" if missing
            else "", f"the data's class{'es' if len(extra) > 1 else ''} {extra} {'are' if len(extra) > 1 else 'is'} "
            "missing from data.classes" if extra else "") if part)
        raise DataError(f"{manifest.source}: {problem}; the data's classes are {have}: list each of them once "
                        "in data.classes, in the order you want (for two classes, the positive one second)")
    order = np.array([wanted.index(name) for name in have], dtype=np.int64)
    return dataclasses.replace(manifest, labels=order[manifest.labels], class_names=wanted, key=key)


# ---------------------------------------------------------------------------- npz


def _open_npz(path: Path) -> Manifest:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} lacks the MedMNIST keys {missing} (it has {sorted(npz.files)}); "
                                "a MedMNIST .npz holds train/val/test _images and _labels")
            parts = {k: npz[k] for k in _NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} as a .npz ({exc}); re-download it or check the file") from None
    images, labels, codes, paths = [], [], [], []
    for code, split in enumerate(SPLITS):
        imgs, labs = parts[f"{split}_images"], parts[f"{split}_labels"]
        if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[-1] not in (1, 3)):
            raise DataError(f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, 1|3), "
                            f"but is {imgs.dtype} {imgs.shape}")
        if labs.ndim == 2 and labs.shape[1] != 1:
            raise DataError(f"{path}: {split}_labels has shape {labs.shape}: multi-label data "
                            "(e.g. ChestMNIST) is not supported; use a single-label dataset")
        labs = labs.reshape(-1)
        if len(labs) != len(imgs):
            raise DataError(f"{path}: {len(imgs)} {split}_images but {len(labs)} {split}_labels")
        images.append(imgs if imgs.ndim == 4 else imgs[..., None])
        labels.append(_integer_labels(labs, f"{path}: {split}_labels"))
        codes.append(np.full(len(labs), code, np.int8))
        paths += [f"{split}_images[{i}]" for i in range(len(labs))]
    sizes = {im.shape[1:] for im in images}
    if len(sizes) > 1:
        raise DataError(f"{path}: splits have different image shapes {sorted(sizes)}")
    label_array = np.concatenate(labels)
    _check_label_range(label_array, str(path), "labels")
    k = int(label_array.max()) + 1
    names = class_names_for(path)
    class_names = names if names is not None and len(names) >= k else [str(i) for i in range(k)]
    return Manifest("npz", path, paths, label_array, class_names, np.concatenate(codes), None,
                    [("npz", path)], {"layout": "npz"}, arrays=np.concatenate(images))


_LABEL_LIMIT = 2**62  # beyond this an int64 cast is undefined; no real label comes near it


def _integer_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as int64, refusing NaN, infinite, fractional or non-numeric values first.

    Casting NaN to int64 gives -9223372036854775808, which the range check would then
    call a "negative label": the message must name the real problem instead.
    """
    fix = ("give every image its class index 0..K-1 (drop the unlabelled images, or re-export "
           "the labels as integers)")
    kind = labels.dtype.kind
    if kind in "biu":
        return labels.astype(np.int64)
    if kind != "f":
        raise DataError(f"{name}: labels must be integer class indices, but their dtype is {labels.dtype}; {fix}")
    finite = np.isfinite(labels)
    checks = (
        (np.isnan(labels), "NaN"),
        (np.isinf(labels), "infinite"),
        (finite & (labels != np.round(labels)), "not whole numbers"),
        (finite & (np.abs(labels) >= _LABEL_LIMIT), "beyond +-2**62"),
    )
    for mask, what in checks:
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            value = labels[first].item()
            raise DataError(f"{name}: labels must be integer class indices, but {int(mask.sum())} of "
                            f"{len(labels)} labels are {what} (first at index {first}: {value!r}); {fix}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------- CSV


def _open_csv(csv_path: Path, config: DataConfig) -> Manifest:
    """CSV manifest: images under the CSV's folder, or in a sibling ``X.zip``."""
    header, rows = _read_csv(csv_path.read_bytes(), str(csv_path))
    table = _parse_table(header, rows, str(csv_path), config)
    root = csv_path.parent
    first = table["paths"][0]
    if not (root / first).exists():
        zip_path = _sibling_zip(csv_path)
        if zip_path is not None:
            return _open_zip(zip_path, (csv_path, header, rows), config)
    exists = [(root / p).is_file() for p in table["paths"]]
    if not any(exists):
        raise DataError(f"{csv_path}: none of the {len(exists)} image paths exist; the first is "
                        f"{first!r}, looked for at {root / first}; paths in column "
                        f"{table['key']['path_column']!r} must be relative to the CSV's folder "
                        "(or put the images in a zip named like the CSV: X.labels.csv + X.zip)")
    files = sorted(set(table["paths"]))
    return Manifest("csv", csv_path, table["paths"], table["labels"], table["class_names"],
                    table["split"], table["groups"],
                    [("manifest", csv_path)] + [(p, root / p) for p in files],
                    {"layout": "csv-folder", **table["key"]},
                    read=_DirReader(root, table["paths"]).read)


def csv_header(path: Path) -> list[str]:
    """The columns of the CSV manifest a source uses (``[]`` when it has none).

    The same file :func:`open_source` reads: the ``.csv`` itself, ``labels.csv`` in a folder,
    or the ``labels.csv`` in a zip's top folder. ``search init`` reads it to find the label,
    path and patient columns before it writes a space.
    """
    try:
        if path.is_file() and path.suffix.lower() == ".csv":
            data, name = path.read_bytes(), str(path)
        elif path.is_dir() and (path / "labels.csv").is_file():
            data, name = (path / "labels.csv").read_bytes(), str(path / "labels.csv")
        elif path.is_file() and path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                inner = sorted((m for m in zf.namelist() if PurePosixPath(m).name == "labels.csv"
                                and len(PurePosixPath(m).parts) <= 2), key=lambda m: (m.count("/"), m))
                if not inner:
                    return []
                data, name = zf.read(inner[0]), f"{path}:{inner[0]}"
        else:
            return []
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the manifest of {path} ({exc})") from None
    return _read_csv(data, name)[0]


def _sibling_zip(csv_path: Path) -> Path | None:
    name = csv_path.name
    stem = name[: -len(".labels.csv")] if name.endswith(".labels.csv") else csv_path.stem
    candidate = csv_path.with_name(stem + ".zip")
    return candidate if candidate.is_file() else None


def _open_zip(zip_path: Path, outside: tuple[Path, list[str], list[list[str]]] | None, config: DataConfig) -> Manifest:
    """Images read straight from a zip (never extracted); the CSV inside it or beside it."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/")]
            inner = sorted((m for m in members if PurePosixPath(m).name == "labels.csv"
                            and len(PurePosixPath(m).parts) <= 2), key=lambda m: (m.count("/"), m))
            inner_bytes = zf.read(inner[0]) if inner and outside is None else None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open {zip_path} as a zip ({exc}); re-download or re-create it") from None
    if outside is not None:
        csv_path, header, rows = outside
        csv_name = str(csv_path)
    elif inner_bytes is not None:
        csv_path, csv_name = None, f"{zip_path}:{inner[0]}"
        header, rows = _read_csv(inner_bytes, csv_name)
    else:
        raise DataError(f"{zip_path} holds no labels.csv in its top folder; add one with columns "
                        "path,label[,split] (paths relative to that folder), or put the manifest next "
                        f"to the zip as {zip_path.with_suffix('.labels.csv').name}")
    table = _parse_table(header, rows, csv_name, config)
    names = set(members)
    prefixes = []
    if inner:
        parent = PurePosixPath(inner[0]).parent.as_posix()
        prefixes.append("" if parent == "." else parent)
    tops = {m.split("/", 1)[0] for m in members if "/" in m}
    if len(tops) == 1:
        prefixes.append(next(iter(tops)))
    prefixes.append("")
    paths = table["paths"]
    best, best_hits = "", -1
    for prefix in dict.fromkeys(prefixes):
        hits = sum(_join(prefix, p) in names for p in paths[:200])
        if hits > best_hits:
            best, best_hits = prefix, hits
    if best_hits <= 0:
        raise DataError(f"{zip_path}: none of the image paths of {csv_name} are in the zip; the first is "
                        f"{paths[0]!r} (tried prefixes {sorted(set(prefixes))}); paths must be relative "
                        "to the zip folder holding labels.csv")
    member_paths = [_join(best, p) for p in paths]
    hash_files = [("zip", zip_path)] + ([("manifest", csv_path)] if csv_path is not None else [])
    reader = _ZipReader(zip_path, member_paths)
    return Manifest("csv", csv_path or zip_path, paths, table["labels"], table["class_names"],
                    table["split"], table["groups"], hash_files,
                    {"layout": "csv-zip", "prefix": best, **table["key"]},
                    read=reader.read, close=reader.close)


def _join(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path


def _read_csv(data: bytes, name: str) -> tuple[list[str], list[list[str]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text ({exc}); save the manifest as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header or not any(header):
        raise DataError(f"{name} is empty; a manifest needs a header row such as path,label[,split]")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{name} line {line} has {len(row)} fields but the header has {len(header)}; "
                            "quote fields that contain commas")
        rows.append([cell.strip() for cell in row])
    if not rows:
        raise DataError(f"{name} has a header but no rows; list one image per row")
    return header, rows


def _column(header: list[str], name: str, setting: str, csv_name: str) -> int:
    if name in header:
        return header.index(name)
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(f"{csv_name} has no column {name!r} (set by `{setting}`); its columns are "
                    f"{header}{hint}; set `{setting}` to the right column name")


def _parse_table(header: list[str], rows: list[list[str]], csv_name: str, config: DataConfig) -> dict[str, Any]:
    """Paths, labels, split codes, groups and class names from a manifest's rows."""
    path_col = _column(header, config.path_column, "path_column", csv_name)
    label_col = _column(header, config.label_column, "label_column", csv_name)
    split_name = config.split_column or ("split" if "split" in header else None)
    split_col = _column(header, split_name, "split_column", csv_name) if split_name else None
    group_col = _column(header, config.group_column, "group_column", csv_name) if config.group_column else None
    name_name = config.label_name_column or ("label_name" if "label_name" in header else None)
    name_col = _column(header, name_name, "label_name_column", csv_name) if name_name else None

    cells = [row[label_col] for row in rows]
    _check_label_cells(cells, csv_name, config.label_column)
    named = label_names(cells, csv_name, config.label_column)  # None: class indices
    if named is not None and name_col is not None:
        raise DataError(f"{csv_name}: column {config.label_column!r} holds class names, so column {name_name!r} "
                        "cannot name them again; drop one of the two (or set `label_name_column` to null)")
    index = {name: i for i, name in enumerate(named or [])}
    paths, labels, codes, groups = [], [], [], []
    names: dict[int, str] = dict(enumerate(named or []))
    for line, row in enumerate(rows, start=2):
        path = row[path_col].replace("\\", "/").removeprefix("./")
        if not path:
            raise DataError(f"{csv_name} line {line}: empty {config.path_column!r}; every row needs an image path")
        paths.append(path)
        labels.append(index[row[label_col]] if named is not None
                      else _parse_label(row[label_col], csv_name, line, config.label_column))
        if split_col is not None:
            code = split_code(row[split_col])
            if code is None:
                raise DataError(f"{csv_name} line {line}: split value {row[split_col]!r} in column "
                                f"{split_name!r} is not one of train, val (valid, validation) or test; "
                                "fix the value or set `split_column` to another column")
            codes.append(code)
        if group_col is not None:
            if not row[group_col]:
                raise DataError(f"{csv_name} line {line}: empty group in column {config.group_column!r}; "
                                "give every row a group id (e.g. the patient id) or drop `group_column`")
            groups.append(row[group_col])
        if name_col is not None:
            previous = names.setdefault(labels[-1], row[name_col])
            if previous != row[name_col]:
                raise DataError(f"{csv_name} line {line}: label {labels[-1]} is named {row[name_col]!r} "
                                f"but earlier {previous!r}; one label needs one name in column {name_name!r}")
    label_array = np.asarray(labels, np.int64)
    _check_label_range(label_array, csv_name, config.label_column)
    k = int(label_array.max()) + 1
    return {
        "paths": paths,
        "labels": label_array,
        "split": np.asarray(codes, np.int8) if split_col is not None else None,
        "groups": np.asarray(groups, dtype=str) if group_col is not None else None,
        "class_names": [names.get(i, str(i)) for i in range(k)],
        "key": {"path_column": config.path_column, "label_column": config.label_column,
                "split_column": split_name, "group_column": config.group_column,
                "label_name_column": name_name},
    }


_MISSING = frozenset({"na", "n/a", "null", "none", "missing"})


def _check_label_cells(cells: list[str], csv_name: str, column: str) -> None:
    """Refuse empty, missing (NA/null), NaN or infinite label cells, counted, before parsing.

    One message for all of them (how many, and the first line) instead of a per-row
    "not an integer" that suggests a label-name column when the label is simply absent.
    """
    found: dict[str, list[int]] = {"empty": [], "missing (NA/null/None)": [], "NaN": [], "infinite": []}
    for line, cell in enumerate(cells, start=2):
        if not cell:
            found["empty"].append(line)
        elif cell.lower() in _MISSING:
            found["missing (NA/null/None)"].append(line)
        else:
            try:
                number = float(cell)
            except ValueError:
                continue  # a class name: _parse_label explains that case
            if math.isnan(number):
                found["NaN"].append(line)
            elif math.isinf(number):
                found["infinite"].append(line)
    for what, lines in found.items():
        if lines:
            raise DataError(f"{csv_name}: labels in column {column!r} must be class indices or class names, but "
                            f"{len(lines)} of {len(cells)} labels are {what} (first at line {lines[0]}); give "
                            "every row its class (index 0..K-1 or name), drop the rows of unlabelled images, or "
                            "set `label_column` to the column that holds the labels")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def label_names(cells: list[str], csv_name: str, column: str) -> list[str] | None:
    """The sorted class names when the label cells are names (``benign``...), None when they are numbers.

    Raises:
        DataError: the column mixes names and numbers (say which, and how many of each).
    """
    numbers = [cell for cell in cells if _is_number(cell)]
    if len(numbers) == len(cells):
        return None
    if numbers:
        names = [cell for cell in cells if not _is_number(cell)]
        raise DataError(f"{csv_name}: labels in column {column!r} mix class names ({len(names)}, e.g. "
                        f"{names[0]!r}) and numbers ({len(numbers)}, e.g. {numbers[0]!r}); write every label "
                        "the same way: all class names, or all class indices 0..K-1")
    return sorted(set(cells))


def _parse_label(value: str, csv_name: str, line: int, column: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number.is_integer():
        if abs(number) >= _LABEL_LIMIT:  # int64 would overflow
            raise DataError(f"{csv_name} line {line}: label {value!r} in column {column!r} is out of range; "
                            "labels must be class indices 0..K-1")
        return int(number)
    raise DataError(f"{csv_name} line {line}: label {value!r} in column {column!r} is not an integer; "
                    "labels must be class indices 0..K-1 or class names")


def _check_label_range(labels: np.ndarray, name: str, column: str) -> None:
    """Labels are 0..K-1: none negative, and K (max + 1) no larger than the number of images.

    The upper bound keeps a stray huge label (an id column taken for the label) from
    building a class list of that length; with K above the image count some class
    could never hold an image anyway.
    """
    if labels.size and labels.min() < 0:
        bad = int(labels.min())
        raise DataError(f"{name}: label {bad} in {column!r} is negative; labels must be class "
                        "indices 0..K-1")
    if labels.size and int(labels.max()) >= len(labels):
        bad = int(labels.max())
        raise DataError(f"{name}: label {bad} in {column!r} implies {bad + 1} classes, but there are only "
                        f"{len(labels)} images; labels must be class indices 0..K-1: renumber them, or set "
                        "`label_column` to the column that holds the class index")


# ---------------------------------------------------------------------------- folders


def _open_imagefolder(root: Path) -> Manifest:
    """``root/<class>/*`` or ``root/<split>/<class>/*``; classes are sorted dir names."""
    children = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in children if split_code(d.name) is not None]
    if split_dirs:
        others = [d.name for d in children if split_code(d.name) is None]
        if others:
            raise DataError(f"{root} mixes split folders ({[d.name for d in split_dirs]}) with other "
                            f"folders {others}; put every class folder inside train/, val/ or test/")
        layout = [(split_code(d.name), d) for d in split_dirs]
    else:
        layout = [(None, root)]
    classes = sorted({c.name for _, top in layout for c in top.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise DataError(f"{root} has no class folders; an ImageFolder is root/<class>/<image> or "
                        "root/train/<class>/<image> (+ val/, test/)")
    paths, labels, codes = [], [], []
    for code, top in layout:
        for label, name in enumerate(classes):
            folder = top / name
            if not folder.is_dir():
                continue
            for file in sorted(folder.rglob("*")):
                if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file() and not file.name.startswith("."):
                    paths.append(file.relative_to(root).as_posix())
                    labels.append(label)
                    codes.append(code)
    if not paths:
        raise DataError(f"{root} has class folders {classes} but no images with extensions "
                        f"{sorted(IMAGE_EXTENSIONS)}")
    split = np.asarray(codes, np.int8) if split_dirs else None
    return Manifest("imagefolder", root, paths, np.asarray(labels, np.int64), classes, split, None,
                    [(p, root / p) for p in paths], {"layout": "imagefolder"},
                    read=_DirReader(root, paths).read)


def _open_kaggle_pcam(root: Path) -> Manifest:
    """Kaggle "Histopathologic Cancer Detection": ``train_labels.csv`` (id,label), ``train/<id>.tif``.

    The unlabelled ``test/`` folder is not training data and is ignored.
    """
    csv_path = root / "train_labels.csv"
    header, rows = _read_csv(csv_path.read_bytes(), str(csv_path))
    if "id" not in header or "label" not in header:
        raise DataError(f"{csv_path} has columns {header}, but Kaggle's PCam layout has id,label; "
                        "fix the file, or describe the images in a CSV manifest with format: csv")
    id_col, label_col = header.index("id"), header.index("label")
    _check_label_cells([row[label_col] for row in rows], str(csv_path), "label")
    paths = [f"train/{row[id_col]}.tif" for row in rows]
    labels = np.asarray([_parse_label(row[label_col], str(csv_path), i, "label")
                         for i, row in enumerate(rows, start=2)], np.int64)
    _check_label_range(labels, str(csv_path), "label")
    if not any((root / p).is_file() for p in paths[:50]):
        raise DataError(f"{csv_path} lists ids but {root / paths[0]} does not exist; Kaggle's layout "
                        "keeps each labelled patch as train/<id>.tif")
    k = int(labels.max()) + 1
    return Manifest("kaggle_pcam", root, paths, labels, [str(i) for i in range(k)], None, None,
                    [("manifest", csv_path)] + [(p, root / p) for p in sorted(paths)],
                    {"layout": "kaggle_pcam"}, read=_DirReader(root, paths).read)


# ---------------------------------------------------------------------------- readers


class _DirReader:
    """Bytes of image ``i`` from a folder."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root, self.paths = root, paths

    def read(self, i: int) -> bytes:
        return (self.root / self.paths[i]).read_bytes()


class _ZipReader:
    """Bytes of image ``i`` from a zip, safe to call from many threads at once.

    Stored (uncompressed) members, the usual case for image zips, are sliced straight out
    of a read-only memory map and CRC-checked: no lock and no per-call ``ZipFile.open``
    overhead, which is a third of the cost of decoding a small JPEG. Compressed or
    encrypted members go through one ``ZipFile`` handle per thread.
    """

    def __init__(self, path: Path, members: list[str]) -> None:
        self.path, self.members = path, members
        with zipfile.ZipFile(path) as zf:
            self._infos = {info.filename: info for info in zf.infolist()}
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._local = threading.local()
        self._handles: list[zipfile.ZipFile] = []
        self._lock = threading.Lock()

    def read(self, i: int) -> bytes:
        member = self.members[i]
        info = self._infos.get(member)
        if info is None:
            raise FileNotFoundError(f"{member} is not in {self.path.name}")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            offset = info.header_offset
            header = self._map[offset:offset + 30]
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"bad local header for {member}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            start = offset + 30 + name_len + extra_len
            data = self._map[start:start + info.compress_size]
            if zlib.crc32(data) != info.CRC:
                raise zipfile.BadZipFile(f"CRC mismatch in {member}")
            return data
        handle = getattr(self._local, "zf", None)
        if handle is None:
            handle = zipfile.ZipFile(self.path)
            self._local.zf = handle
            with self._lock:
                self._handles.append(handle)
        return handle.read(member)

    def close(self) -> None:
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
        self._local = threading.local()
        self._map.close()
        self._file.close()


__all__ = ["FORMATS", "Manifest", "data_root", "is_under_data_root", "resolve_data_path", "missing_source_error",
           "detect_format", "open_source"]
