"""``search predict DIR INPUT...``: run an exported model on image files, folders or data sets.

Inputs are decoded exactly as training decoded them (the same Pillow conversion and,
when the study's data had an ``image_size``, the same resize), then prepared by
:func:`trainables.augment.prepare_batch` with the export's ``preprocess`` settings, and
run through the network rebuilt from ``config.json`` with its ``model.safetensors``
weights. An INPUT is:

- an image file (PNG, JPEG, TIFF...), or a folder of them (not recursive);
- a data set ``load_dataset`` understands (a MedMNIST ``.npz``, a CSV manifest or
  ``.zip``, an ImageFolder tree, a Kaggle-PCam folder): its test split by default, which
  is the study's held-out split when it holds the study's data, recognised by content
  (a copy at another path counts); ``--split all`` for every image.

Before anything runs, the export is checked: every file its ``manifest.json`` lists must
be there with the same SHA-256 (exports written before manifests existed load with a
warning that they cannot be verified), and, as a second line of defence for configs
written by hand, ``config.json`` must be coherent (a positive std per input channel, one
class name per network output, the backbone the weights were saved for). Probabilities
that are not finite stop the run rather than labelling every image.

The output is a CSV with one row per image: ``path, pred, class_name, prob_<class>...``
(and ``label`` when the data set has labels). For Kaggle's PCam test folder (``<id>.tif``
files named by 40-hex ids) and a two-class model it is Kaggle's submission format instead:
``id,label`` with label = the predicted probability of class 1 (Kaggle scores AUC).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from search.model.export import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    altered_export,
    data_content_digest,
    reexport_command,
    verify_export,
)
from search.model.members import Probabilities, rebuild_model
from search.model.views import TTA_CHOICES
from trainables.augment import InputSpec, prepare_batch
from trainables.config import DataConfig, TrialConfig
from trainables.data import ImageDataset
from trainables.data.sources import IMAGE_EXTENSIONS

Log = Callable[[str], None]

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
    members: list[nn.Module]  # one network, or an ensemble's (the best trial's first)
    spec: InputSpec

    @property
    def network(self) -> nn.Module:
        """The first (or only) member: the best trial's network."""
        return self.members[0]

    @property
    def class_names(self) -> list[str]:
        return list(self.config["model"]["class_names"])

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.config["preprocess"]

    @property
    def temperature(self) -> float:
        """Logits are divided by it before the softmax (exports before format 3: 1)."""
        return float((self.config.get("decision") or {}).get("temperature", 1.0))

    @property
    def tta(self) -> str:
        """The test-time views the graphs average over (exports before format 4: none)."""
        return str(self.config.get("tta", "none"))

    @property
    def threshold(self) -> float | None:
        """Binary models: ``pred`` is class 1 when its probability is at least this; None: argmax."""
        value = (self.config.get("decision") or {}).get("threshold")
        return None if value is None else float(value)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch_size: int = 256, names: list[str] | None = None) -> np.ndarray:
        """Class probabilities ``(N, K)`` of uint8 images ``(N, H, W, C)`` as stored.

        Raises:
            PredictError: some probabilities are NaN or infinite (broken weights or
                preprocessing: a prediction from them would be a label with no meaning).
        """
        vote = Probabilities(self.members, self.temperature, self.tta).eval()  # what the exported graphs compute
        out = []
        for start in range(0, len(images), batch_size):
            x = prepare_batch(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])), self.spec)
            out.append(vote(x).numpy())
        probs = np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)
        bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
        if len(bad):
            where = ", ".join(names[i] if names else f"image {i}" for i in bad[:3])
            raise PredictError(f"the model in {self.directory} gives non-finite (NaN or infinite) probabilities for "
                               f"{len(bad)} of {len(probs)} images (e.g. {where}): its weights or preprocessing "
                               f"settings are broken; re-export it with "
                               f"{reexport_command(self.directory, self.config['study'].get('name'))}")
        return probs


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_config(config: dict[str, Any], directory: Path) -> None:
    """Refuse a ``config.json`` whose settings cannot give meaningful predictions.

    A second line of defence besides the manifest, for configs written or edited by
    hand: the checks are those whose failure otherwise shows as NaN outputs, a CSV with
    more probability columns than class names, or a traceback from deep inside torch.

    Raises:
        PredictError: the first broken setting, with its value and the fix.
    """
    fix = f"re-export it with {reexport_command(directory, (config.get('study') or {}).get('name'))}"

    def rule(ok: bool, what: str) -> None:
        if not ok:
            raise PredictError(f"{directory / CONFIG_FILE} is not a usable export config: {what}; {fix}")

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    version = config.get("format_version", 1)
    if isinstance(version, int) and version > EXPORT_VERSION:
        raise PredictError(f"{directory} is export format version {version}, newer than this medtune reads "
                           f"({EXPORT_VERSION}); upgrade medtune")
    for section in ("model", "preprocess", "trial_config", "data"):
        rule(isinstance(config.get(section), dict), f"section {section!r} is missing or not an object")
    model, pre = config["model"], config["preprocess"]
    names, k = model.get("class_names"), model.get("num_classes")
    rule(positive_int(k) and k >= 2, f"model.num_classes must be an integer >= 2, but is {k!r}")
    rule(isinstance(names, list) and all(isinstance(n, str) and n for n in names),
         f"model.class_names must be a list of non-empty strings, but is {names!r}")
    rule(len(names) == k, f"model.class_names has {len(names)} name(s) {names} but the model has {k} outputs "
                          "(model.num_classes): every output needs exactly one class name")
    rule(len(set(names)) == len(names), f"model.class_names {names} repeats a name")
    rule(pre.get("channels") in (1, 3), f"preprocess.channels must be 1 or 3, but is {pre.get('channels')!r}")
    rule(model.get("data_channels") == pre["channels"],
         f"model.data_channels {model.get('data_channels')!r} differs from preprocess.channels {pre['channels']}")
    rule(positive_int(pre.get("in_chans")), f"preprocess.in_chans must be an integer >= 1, but is "
                                            f"{pre.get('in_chans')!r}")
    mean, std, c = pre.get("mean"), pre.get("std"), pre["in_chans"]
    rule(isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == c,
         f"preprocess.mean and preprocess.std need one value per input channel (in_chans {c}), but are "
         f"{mean!r} and {std!r}")
    rule(all(finite(m) for m in mean), f"preprocess.mean must be finite numbers, but is {mean}")
    rule(all(finite(v) and v > 0 for v in std),
         f"preprocess.std must be a finite number > 0 in every channel (images are divided by it), but is {std}")
    stored = pre.get("stored_size")
    rule(isinstance(stored, list) and len(stored) == 2 and all(positive_int(v) for v in stored),
         f"preprocess.stored_size must be [height, width] in pixels, but is {stored!r}")
    rule(positive_int(pre.get("input_size")), f"preprocess.input_size must be an integer >= 1, but is "
                                              f"{pre.get('input_size')!r}")
    for key in ("crop_size", "image_size"):
        rule(pre.get(key) is None or positive_int(pre[key]), f"preprocess.{key} must be null or an integer >= 1, "
                                                             f"but is {pre.get(key)!r}")
    decision = config.get("decision") or {}
    rule(isinstance(decision, dict), f"decision must be an object, but is {decision!r}")
    temperature = decision.get("temperature", 1.0)
    rule(finite(temperature) and temperature > 0, f"decision.temperature must be a finite number > 0 (logits are "
                                                  f"divided by it), but is {temperature!r}")
    tta = config.get("tta", "none")
    rule(tta in TTA_CHOICES, f"tta must be one of {', '.join(TTA_CHOICES)}, but is {tta!r}")
    threshold = decision.get("threshold")
    # a threshold just above the largest score (specificity 1) may exceed 1.0 by one float step
    rule(threshold is None or (finite(threshold) and 0 <= threshold <= 1 + 1e-9 and k == 2),
         f"decision.threshold must be null or, for a binary model, a probability in [0, 1], but is {threshold!r} "
         f"({k} classes)")
    backbone = config["trial_config"].get("backbone")
    rule(model.get("backbone") == backbone, f"model.backbone {model.get('backbone')!r} differs from "
                                            f"trial_config.backbone {backbone!r}")


def check_weights_metadata(config: dict[str, Any], directory: Path, weights: str = WEIGHTS_FILE,
                           trial_config: dict[str, Any] | None = None) -> None:
    """Refuse a ``config.json`` that describes another network than ``weights`` holds.

    The weights file records, in its metadata, the backbone, trial config, number of
    classes and channels it was saved with; a config edited since (another backbone,
    another class count) would otherwise fail deep inside torch or mislabel every output.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(directory / weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise PredictError(str(altered_export(directory, weights,
                                              f"unreadable: {type(err).__name__}: {err}"))) from None
    model = config["model"]
    trial_config = config["trial_config"] if trial_config is None else trial_config
    # Class names are not compared: renaming them is harmless, and their count is checked
    # against num_classes (compared here) by check_config.
    expected = {"backbone": trial_config.get("backbone"), "num_classes": model["num_classes"],
                "data_channels": model["data_channels"], "trial_config": trial_config}
    for key, value in expected.items():
        if key not in metadata:  # metadata is all strings: the trial config as JSON, numbers as text
            continue
        if key == "trial_config":
            try:
                same = json.loads(metadata[key]) == value
            except ValueError:
                same = False
        else:
            same = metadata[key] == str(value)
        if not same:
            shown = metadata[key] if key != "trial_config" else "another trial config"
            raise PredictError(f"{directory / CONFIG_FILE} does not describe the network in {weights}: its "
                               f"{key} is {value!r}, but the weights were saved with {shown!r}; re-export it with "
                               f"{reexport_command(directory, config['study'].get('name'))}")


def load_exported(directory: str | Path, warn: Log = _warn) -> ExportedModel:
    """Check an export folder, rebuild its network from ``config.json`` and load its weights.

    Args:
        directory: the folder ``search best NAME --export DIR`` wrote.
        warn: receives the one-line warning for an export without ``manifest.json``.

    Raises:
        PredictError: not an export, a file missing or changed since export, a config
            that cannot work, or weights that do not fit it; each message names the fix.
    """

    directory = Path(directory)
    try:
        verified = verify_export(directory)
    except ValueError as err:
        raise PredictError(str(err)) from None
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise PredictError(f"{directory} is not a medtune export (no readable {CONFIG_FILE}); pass the folder "
                           "written by `search best NAME --export DIR`")
    study = config.get("study") if isinstance(config.get("study"), dict) else {}
    config["study"] = study
    if not verified:
        version = config.get("format_version", 1)
        if isinstance(version, int) and version >= 2:
            raise PredictError(str(altered_export(directory, MANIFEST_FILE, "missing; exports of format version 2 "
                                                                            "and later always have one")))
        warn(f"{directory} was exported before medtune wrote {MANIFEST_FILE}, so its files cannot be verified; "
             f"re-export it with {reexport_command(directory, study.get('name'))} to add checksums")
    check_config(config, directory)
    pre = config["preprocess"]
    spec = InputSpec(crop_size=pre["crop_size"], input_size=pre["input_size"], in_chans=pre["in_chans"],
                     mean=tuple(float(m) for m in pre["mean"]), std=tuple(float(v) for v in pre["std"]))
    # member 0 is the best trial's network, described by the top-level trial_config; others by their own entry
    listed = (config.get("ensemble") or {}).get("members") or []
    if not isinstance(listed, list):
        raise PredictError(f"{directory / CONFIG_FILE}: ensemble.members must be a list, but is {listed!r}; "
                           f"re-export it with {reexport_command(directory, study.get('name'))}")
    members = [{"weights": WEIGHTS_FILE, "trial_config": config["trial_config"]}, *listed[1:]]
    return ExportedModel(directory, config, [_load_member(directory, config, member, spec) for member in members], spec)


def _load_member(directory: Path, config: dict[str, Any], member: dict[str, Any], spec: InputSpec) -> nn.Module:
    """One network of an export, rebuilt from its trial config and checked against its weights file."""
    from safetensors.torch import load_model

    fix = f"re-export it with {reexport_command(directory, config['study'].get('name'))}"
    weights = member.get("weights")
    if not isinstance(weights, str) or Path(weights).name != weights or not isinstance(member.get("trial_config"),
                                                                                        dict):
        raise PredictError(f"{directory / CONFIG_FILE} lists an ensemble member without a weights file name in "
                           f"the export folder and a trial_config ({member!r}); {fix}")
    if not (directory / weights).is_file():
        raise PredictError(str(altered_export(directory, weights, "missing")))
    check_weights_metadata(config, directory, weights, member["trial_config"])
    model = config["model"]
    backbone = member["trial_config"].get("backbone")
    try:
        network = rebuild_model(TrialConfig.from_dict(member["trial_config"]), model["num_classes"],
                                model["data_channels"])
        load_model(network, str(directory / weights))
        with torch.no_grad():  # one blank input: the shapes config.json promises must go through
            outputs = network.eval()(torch.zeros(1, spec.in_chans, spec.input_size, spec.input_size)).shape
    except Exception as err:  # noqa: BLE001 - timm, torch and safetensors raise many types for a mismatch
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PredictError(f"the network described by {directory / CONFIG_FILE} (backbone "
                           f"{backbone!r}, {model['num_classes']} classes, input {spec.in_chans}x"
                           f"{spec.input_size}x{spec.input_size}) cannot be built or does not fit "
                           f"{weights} ({type(err).__name__}: {first[:300]}); {fix}") from None
    if tuple(outputs) != (1, len(model["class_names"])):
        raise PredictError(f"the network of {directory} outputs shape {tuple(outputs)} for one image, but "
                           f"{CONFIG_FILE} names {len(model['class_names'])} classes; {fix}")
    return network


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
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                        and not p.name.startswith("."))
        is_dataset = (path / "labels.csv").is_file() or detect_format(path) == "kaggle_pcam"
        if images and not is_dataset:
            sources.append(Source("files", path, tuple(images)))
        elif is_dataset or any(p.is_dir() for p in path.iterdir()):
            sources.append(Source("dataset", path))
        else:
            raise PredictError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) and no data set; "
                               "give image files, a folder of images or a data set")
    return sources


def is_kaggle(sources: list[Source], model: ExportedModel) -> bool:
    """Kaggle's PCam test layout: folders of ``<40-hex id>.tif`` only, and a two-class model."""
    files = [f for s in sources for f in s.files]
    return (len(model.class_names) == 2 and bool(files) and all(s.kind == "files" and s.path.is_dir() for s in sources)
            and all(f.suffix.lower() == ".tif" and KAGGLE_ID.match(f.stem) for f in files))


def _header_mode(data: bytes) -> str:
    """The Pillow mode of an encoded image, from its header."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.mode


def decode_image(path: Path, model: ExportedModel) -> np.ndarray:
    """One image file as the study stored its images: ``(H, W, channels)`` uint8.

    Raises:
        PredictError: not decodable (or a mode Pillow cannot convert), or of another size
            than the study's images when its data had no fixed ``image_size``.
    """
    from PIL import UnidentifiedImageError

    from trainables.data.decode import (
        _decode_one,  # the training decoder itself, so inputs match training
    )
    from trainables.data.dicom import is_dicom

    pre = model.preprocess
    window = tuple(pre["window"]) if pre.get("window") else None  # DICOM: the study's display window
    data = path.read_bytes()
    try:  # the header only; a DICOM file always becomes L or RGB, and is decoded once, below
        mode = "L" if is_dicom(data) else _header_mode(data)
    except (UnidentifiedImageError, OSError) as err:
        why = "not an image file Pillow can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise PredictError(f"cannot read {path} as an image ({why}); give PNG, JPEG, TIFF or single-frame DICOM "
                           "files") from None
    if mode not in SUPPORTED_MODES:
        raise PredictError(f"{path} has image mode {mode!r}, which medtune does not convert to "
                           f"{'grayscale' if pre['channels'] == 1 else 'RGB'}; supported modes are "
                           f"{', '.join(sorted(SUPPORTED_MODES))}: convert the image (e.g. to RGB) first")
    try:
        array, _ = _decode_one(data, pre["channels"], pre["image_size"], window)
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


def study_dataset(source: Source, model: ExportedModel, log: Log) -> ImageDataset | None:
    """The data set at ``source`` loaded with the study's data settings, when it holds the study's data.

    Recognised by content, never by path: a copy of the study's data anywhere (another
    folder, another file name) is loaded with the study's split settings, and its
    dataset fingerprint (content, decoding and split) must equal the export's. Exports
    that record the content digest are compared on it first, so other data sets are
    not decoded with the study's settings for nothing.

    Returns:
        The study's data (so its test split is the held-out one), or None for other data.
    """
    from trainables.data import DataError, load_dataset

    stored = model.config["data"]
    known = {f.name for f in dataclasses.fields(DataConfig)}
    # JSON holds tuples (data.classes) as lists
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (stored.get("data_config") or {}).items()
                if k in known}
    try:
        config = DataConfig(**{**settings, "source": str(source.path.resolve())})
    except (TypeError, ValueError):  # a hand-edited data_config: not usable to recognise the study's data
        return None
    digest = stored.get("content_digest")
    if digest is not None:
        try:
            if data_content_digest(source.path.resolve(), config) != digest:
                return None
        except DataError:  # the study's settings (columns, layout) do not even fit: other data
            return None
    try:
        data = load_dataset(config)
    except DataError:
        if digest is None:
            return None
        raise
    if data.fingerprint == stored.get("fingerprint"):
        return data
    if digest is None:
        return None
    log(f"warning: {source.path} holds the study's images, but they load now with another split or decoding "
        f"(fingerprint {data.fingerprint[:12]}, the study's {str(stored.get('fingerprint'))[:12]}: another medtune "
        "or Pillow version?); its splits are made with the study's settings but may differ from the study's")
    return data


def dataset_part(source: Source, model: ExportedModel, split: str, log: Log = print) -> Part:
    """A data set's ``split`` (or every image), decoded like the study's data.

    The study's data (recognised by content, see :func:`study_dataset`) is loaded with
    the study's data settings, so its test split is exactly the held-out one; any other
    data set with the export's size and channels and medtune's default split.
    """
    from trainables.data import load_dataset

    pre = model.preprocess
    data = study_dataset(source, model, log)
    if data is None:
        if split != "all":
            log(f"{source.path} is not the data this model's study ran on (compared by content), so its {split} "
                "split is medtune's default split of it, not the study's held-out split")
        data = load_dataset(DataConfig(source=str(source.path.resolve()), image_size=pre["image_size"],
                                       channels=pre["channels"], blank_filter=False,
                                       window=tuple(pre.get("window") or ())),
                            require_classes=False)  # a folder of one class is fine to predict on
    stored = tuple(pre["stored_size"])
    if data.images.shape[1:3] != stored:
        raise PredictError(f"the images of {source.path} are {data.images.shape[2]}x{data.images.shape[1]} pixels, "
                           f"but this model's were {stored[1]}x{stored[0]} (its data had no image_size); resize them "
                           f"to {stored[1]}x{stored[0]} first, or train with data.image_size set")
    indices = np.arange(len(data.labels)) if split == "all" else data.splits[split]
    names = ([str(p) for p in data.paths[indices]] if data.paths is not None
             else [f"{source.path.name}[{i}]" for i in indices])
    return Part(names, data.images[indices], data.labels[indices])


def csv_rows(part: Part, probs: np.ndarray, class_names: list[str], kaggle: bool, with_labels: bool,
             threshold: float | None = None) -> list[list]:
    """Output rows of one part: ``id,label`` (Kaggle) or path, class, probabilities[, label].

    ``pred`` is the export's decision: the positive class when its probability reaches
    ``threshold`` (binary models), else the argmax.
    """
    from search.model.decision import predicted_classes

    if kaggle:
        return [[Path(name).stem, f"{probs[i, 1]:.6f}"] for i, name in enumerate(part.names)]
    rows = []
    decided = predicted_classes(probs, threshold)
    for i, name in enumerate(part.names):
        pred = int(decided[i])
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
        PredictError: not an export or one altered since export (see :func:`load_exported`),
            a missing or unreadable input, an image of the wrong size or mode, non-finite
            probabilities, or Kaggle's format asked of a model that is not two-class.
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
                parts = (file_parts(source, model) if source.kind == "files"
                         else [dataset_part(source, model, split, log)])
                for part in parts:
                    probs = model.probabilities(part.images, batch_size, part.names)
                    writer.writerows(csv_rows(part, probs, names, kaggle, with_labels, model.threshold))
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

        from search.evaluation.threshold import rates

        known, probs = np.concatenate(labels), np.concatenate(scores)
        metrics = classification_metrics(known, probs, prefix="")
        line = "on the labelled inputs: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if model.threshold is not None:  # the rates of `pred`, the export's decision (the others: argmax)
            sensitivity, specificity = rates(known, probs[:, 1], model.threshold)
            line += (f"; at the export's threshold {model.threshold:.4f} (pred): sensitivity {sensitivity:.4f}  "
                     f"specificity {specificity:.4f}")
        log(line)
    return path


__all__ = ["ExportedModel", "PredictError", "check_config", "load_exported", "predict_inputs", "resolve_inputs",
           "study_dataset"]
