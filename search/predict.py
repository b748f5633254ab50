"""``search predict DIR INPUT...``: run an exported model on image files, folders or data sets.

Inputs are decoded exactly as training decoded them (the same Pillow conversion and,
when the study's data had an ``image_size``, the same resize), then prepared by
:func:`trainables.augment.prepare_batch` with the export's ``preprocess`` settings, and
run through the network rebuilt from ``config.json`` with its ``model.safetensors``
weights. An INPUT is:

- an image file (PNG, JPEG, TIFF...), or a folder of them (not recursive);
- a data set ``load_dataset`` understands (a MedMNIST ``.npz``, a CSV manifest or
  ``.zip``, an ImageFolder tree, a Kaggle-PCam folder): its test split by default, which
  is the study's held-out split when it is the study's own source; ``--split all`` for
  every image.

The output is a CSV with one row per image: ``path, pred, class_name, prob_<class>...``
(and ``label`` when the data set has labels). For Kaggle's PCam test folder (``<id>.tif``
files named by 40-hex ids) and a two-class model it is Kaggle's submission format instead:
``id,label`` with label = the predicted probability of class 1 (Kaggle scores AUC).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from search.export import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, rebuild_model
from trainables.augment import InputSpec, prepare_batch
from trainables.config import DataConfig, TrialConfig

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"})
DATASET_SUFFIXES = frozenset({".npz", ".csv", ".zip"})
# Pillow modes with a meaningful grayscale/RGB conversion (LAB, HSV... would be silently garbled).
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                             "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
KAGGLE_ID = re.compile(r"^[0-9a-f]{40}$")
CHUNK = 1024  # images decoded and predicted at a time, so a large folder never sits in memory whole


class PredictError(ValueError):
    """An input or export that cannot be predicted on; the message names the fix."""


@dataclass
class ExportedModel:
    """An export folder loaded for inference (CPU, eval mode)."""

    directory: Path
    config: dict[str, Any]
    network: nn.Module
    spec: InputSpec

    @property
    def class_names(self) -> list[str]:
        return list(self.config["model"]["class_names"])

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.config["preprocess"]

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, K)`` of uint8 images ``(N, H, W, C)`` as stored."""
        out = []
        for start in range(0, len(images), batch_size):
            x = prepare_batch(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])), self.spec)
            out.append(torch.softmax(self.network(x), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def load_exported(directory: str | Path) -> ExportedModel:
    """Rebuild an exported network from ``config.json`` and load its safetensors weights."""
    from safetensors.torch import load_model

    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise PredictError(f"{directory} is not a medtune export (no readable {CONFIG_FILE}); pass the folder "
                           "written by `search best NAME --export DIR`")
    model, pre = config["model"], config["preprocess"]
    network = rebuild_model(TrialConfig.from_dict(config["trial_config"]), model["num_classes"], model["data_channels"])
    load_model(network, str(directory / WEIGHTS_FILE))
    spec = InputSpec(crop_size=pre["crop_size"], input_size=pre["input_size"], in_chans=pre["in_chans"],
                     mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    return ExportedModel(directory, config, network.eval(), spec)


@dataclass
class Part:
    """A slice of the inputs: names, uint8 images as stored, labels when known."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class Source:
    """One INPUT: image files (possibly from one folder) or a data set."""

    kind: Literal["files", "dataset"]
    path: Path
    files: tuple[Path, ...] = ()


def resolve_inputs(inputs: list[str]) -> list[Source]:
    """Turn INPUT arguments into image-file lists and data sets (see the module docstring)."""
    from trainables.data.sources import detect_format

    sources = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise PredictError(f"input {raw} does not exist; give image files, a folder of images or a data set")
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix in DATASET_SUFFIXES:
                sources.append(Source("dataset", path))
            else:
                sources.append(Source("files", path, (path,)))  # unreadable non-images fail with a clear message
            continue
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and not p.name.startswith("."))
        is_dataset = (path / "labels.csv").is_file() or detect_format(path) == "kaggle_pcam"
        if images and not is_dataset:
            sources.append(Source("files", path, tuple(images)))
        elif is_dataset or any(p.is_dir() for p in path.iterdir()):
            sources.append(Source("dataset", path))
        else:
            raise PredictError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no data set; "
                               "give image files, a folder of images or a data set")
    return sources


def is_kaggle(sources: list[Source], model: ExportedModel) -> bool:
    """Kaggle's PCam test layout: folders of ``<40-hex id>.tif`` only, and a two-class model."""
    files = [f for s in sources for f in s.files]
    return (len(model.class_names) == 2 and bool(files) and all(s.kind == "files" and s.path.is_dir() for s in sources)
            and all(f.suffix.lower() == ".tif" and KAGGLE_ID.match(f.stem) for f in files))


def decode_image(path: Path, model: ExportedModel) -> np.ndarray:
    """One image file as the study stored its images: ``(H, W, channels)`` uint8.

    Raises:
        PredictError: not decodable (or a mode Pillow cannot convert), or of another size
            than the study's images when its data had no fixed ``image_size``.
    """
    from PIL import Image, UnidentifiedImageError

    from trainables.data.decode import _decode_one  # the training decoder itself, so inputs match training

    pre = model.preprocess
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            mode = image.mode
    except (UnidentifiedImageError, OSError) as err:
        why = "not an image file Pillow can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise PredictError(f"cannot read {path} as an image ({why}); give PNG, JPEG or TIFF files") from None
    if mode not in SUPPORTED_MODES:
        raise PredictError(f"{path} has image mode {mode!r}, which medtune does not convert to "
                           f"{'grayscale' if pre['channels'] == 1 else 'RGB'}; supported modes are "
                           f"{', '.join(sorted(SUPPORTED_MODES))}: convert the image (e.g. to RGB) first")
    try:
        array, _ = _decode_one(data, pre["channels"], pre["image_size"])
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise PredictError(f"cannot decode {path} ({type(err).__name__}: {err}); re-export or convert it") from None
    height, width = pre["stored_size"]
    if array.shape[:2] != (height, width):
        raise PredictError(f"{path} is {array.shape[1]}x{array.shape[0]} pixels, but this model's images were "
                           f"{width}x{height} (its data had no image_size, so images were not resized); resize "
                           f"the images to {width}x{height} first, or train with data.image_size set")
    return array


def file_parts(source: Source, model: ExportedModel, workers: int = 4) -> Iterator[Part]:
    """The files of a source, decoded ``CHUNK`` at a time (threads: Pillow releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(source.files), CHUNK):
            chunk = source.files[start:start + CHUNK]
            images = np.stack(list(pool.map(lambda p: decode_image(p, model), chunk)))
            yield Part([str(p) for p in chunk], images, None)


def dataset_part(source: Source, model: ExportedModel, split: str) -> Part:
    """A data set's ``split`` (or every image), decoded like the study's data.

    The study's own source is loaded with the study's data settings, so its test split
    is exactly the held-out one; any other source with the export's size and channels.
    """
    from trainables.data import load_dataset

    known = {f.name for f in dataclasses.fields(DataConfig)}
    study_data = {k: v for k, v in model.config["data"]["data_config"].items() if k in known}
    pre = model.preprocess
    if Path(study_data["source"]).resolve() == source.path.resolve():
        config = DataConfig(**study_data)
    else:
        config = DataConfig(source=str(source.path.resolve()), image_size=pre["image_size"],
                            channels=pre["channels"], blank_filter=False)
    data = load_dataset(config)
    stored = tuple(pre["stored_size"])
    if data.images.shape[1:3] != stored:
        raise PredictError(f"the images of {source.path} are {data.images.shape[2]}x{data.images.shape[1]} pixels, "
                           f"but this model's were {stored[1]}x{stored[0]} (its data had no image_size); resize them "
                           f"to {stored[1]}x{stored[0]} first, or train with data.image_size set")
    indices = np.arange(len(data.labels)) if split == "all" else data.splits[split]
    names = ([str(p) for p in data.paths[indices]] if data.paths is not None
             else [f"{source.path.name}[{i}]" for i in indices])
    return Part(names, data.images[indices], data.labels[indices])


def csv_rows(part: Part, probs: np.ndarray, class_names: list[str], kaggle: bool, with_labels: bool) -> list[list]:
    """Output rows of one part: ``id,label`` (Kaggle) or path, class, probabilities[, label]."""
    if kaggle:
        return [[Path(name).stem, f"{probs[i, 1]:.6f}"] for i, name in enumerate(part.names)]
    rows = []
    for i, name in enumerate(part.names):
        pred = int(probs[i].argmax())
        label = [int(part.labels[i])] if part.labels is not None else [""]
        rows.append([name, pred, class_names[pred], *[f"{p:.6f}" for p in probs[i]], *(label if with_labels else [])])
    return rows


def predict_inputs(directory: str | Path, inputs: list[str], out: str | Path | None = None,
                   split: Literal["test", "val", "train", "all"] = "test",
                   output_format: Literal["auto", "kaggle", "csv"] = "auto",
                   batch_size: int = 256, log: Any = print) -> Path:
    """Predict every input with the export in ``directory`` and write the CSV.

    Returns:
        The CSV path (default ``submission.csv`` in Kaggle's format, else ``predictions.csv``).

    Raises:
        PredictError: not an export, a missing or unreadable input, an image of the wrong
            size or mode, or Kaggle's format asked of a model that is not two-class.
    """
    model = load_exported(directory)
    sources = resolve_inputs(inputs)
    kaggle = output_format == "kaggle" or (output_format == "auto" and is_kaggle(sources, model))
    names = model.class_names
    if kaggle and len(names) != 2:
        raise PredictError(f"Kaggle's id,label format needs a two-class model, but this one has classes {names}; "
                           "use --format csv")
    with_labels = not kaggle and any(s.kind == "dataset" for s in sources)
    path = Path(out or ("submission.csv" if kaggle else "predictions.csv"))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")  # renamed when complete: a failure leaves no half CSV
    count, labels, scores = 0, [], []
    try:
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label"] if kaggle else
                            ["path", "pred", "class_name", *[f"prob_{n}" for n in names]] + (["label"] * with_labels))
            for source in sources:
                parts = file_parts(source, model) if source.kind == "files" else [dataset_part(source, model, split)]
                for part in parts:
                    probs = model.probabilities(part.images, batch_size)
                    writer.writerows(csv_rows(part, probs, names, kaggle, with_labels))
                    count += len(part.names)
                    if part.labels is not None:
                        labels.append(part.labels)
                        scores.append(probs)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    log(f"{count} images -> {path} ("
        + ("Kaggle submission: id,label = probability of class 1" if kaggle else "predictions") + ")")
    if labels:
        from trainables.metrics import classification_metrics

        metrics = classification_metrics(np.concatenate(labels), np.concatenate(scores), prefix="")
        log("on the labelled inputs: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return path


__all__ = ["ExportedModel", "PredictError", "load_exported", "predict_inputs", "resolve_inputs"]
