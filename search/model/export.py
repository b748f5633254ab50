"""``search best NAME --export DIR``: the best trial as a self-contained, tested model.

What the export folder holds, and why:

- ``model.safetensors``: the network's weights (it outputs logits); safetensors never
  runs code when loaded, unlike a pickle.
- ``config.json``: everything needed to rebuild the network and feed it: backbone and
  the full trial config, class names, and the preprocessing (the stored image size the
  data was decoded at, channels, centre crop, input size, normalisation mean/std).
- ``model.torchscript.pt`` and ``model.onnx``: network, logits divided by the fitted
  temperature, softmax, for serving without medtune. Their input is the float ``(B, C, S, S)`` batch *after* preprocessing, and
  their output class probabilities ``(B, K)``: preprocessing stays in ``config.json`` and
  in :func:`trainables.augment.prepare_batch`, the one code path training used, rather
  than being re-implemented inside each graph. The ONNX file is checked against PyTorch
  with onnxruntime on real test images before the export is accepted.
- ``config.json``'s ``decision``: the temperature and, for a binary model, the decision
  threshold, both fitted on the chosen trial's validation predictions
  (:mod:`search.model.decision`); ``search predict`` applies the threshold for ``pred``.
- ``config.json``'s ``tta``: the test-time views the graphs average over
  (:mod:`search.model.views`; ``none`` by default). With views, the temperature and
  threshold are fitted on held-out predictions under the same views.
- ``MODEL_CARD.md``, ``metrics.json``, ``roc_curve.png`` (the operating point marked),
  ``confusion_matrix.png`` (at the threshold), ``reliability.png``.
- ``manifest.json``: the SHA-256 and size of every other file, ``config.json`` included,
  written last. One file listing all the others is the simplest rule that covers every
  file whatever the order they are written in (the card, for one, is written from the
  finished config); a hash inside ``config.json`` could not cover ``config.json``
  itself. :func:`verify_export` checks it before anything loads an export, so an edited
  ``config.json`` or a missing weights file is refused instead of predicting garbage.

The test split is used here and only here: each export evaluates the final model on it
once, the numbers go into the card and onto the study's MLflow parent run (``test_*``),
and the parent run counts the uses (``medtune.test_uses``): from the second export on,
the card says that the test score is no longer an unbiased estimate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from search.evaluation.calibration import soft_vote
from search.model.decision import (
    Decision,
    DecisionError,
    fit_decision,
    held_out_predictions,
    predicted_classes,
    test_report,
)
from search.model.members import (
    EnsembleChoice,
    FinalModel,
    Probabilities,
    cv_folds_of,
    default_ensemble,
    final_model,
    held_out_view_probabilities,
    member_trials,
    parse_ensemble,
    rebuild_model,
    view_probabilities,
)
from search.model.views import parse_tta
from search.model.files import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    METRICS_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    member_weights_file,
)
from search.records.studies import (
    BestTrial,
    Study,
    StudyError,
    best_checkpoint,
    best_trial,
    child_runs,
)
from search.records.tags import DATA_SKIPPED_TAG, SPACE_TAG, SPACE_TAG_LIMIT, STATE_TAG
from trainables.augment import InputSpec, prepare_batch
from trainables.config import TrialConfig
from trainables.data import ImageDataset
from trainables.metrics import scores

FORMAT_TOLERANCE = 1e-4  # max abs difference in probabilities a reloaded format may have to PyTorch
CHECK_IMAGES = 64

Log = Callable[[str], None]


RELIABILITY_FILE = "reliability.png"


class ExportError(ValueError):
    """The export cannot be written (or read back) as asked; the message names the fix."""


def reexport_command(directory: Path, study_name: str | None = None) -> str:
    """The command that rewrites ``directory`` from its study (``NAME`` when unknown)."""
    return f"`search best {study_name or 'NAME'} --export {directory} --force`"


def study_name_of(directory: Path) -> str | None:
    """The study name in ``directory/config.json`` when it can be read, for messages only."""
    try:
        name = json.loads((directory / CONFIG_FILE).read_text())["study"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def altered_export(directory: Path, name: str, what: str) -> ExportError:
    """The one error for an export whose files are missing or changed since it was written."""
    return ExportError(f"this export is incomplete or was altered: {directory / name} ({what}); re-export it with "
                       f"{reexport_command(directory, study_name_of(directory))}")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (weights can be hundreds of MB)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def write_manifest(directory: Path) -> dict[str, Any]:
    """Write ``manifest.json``: SHA-256 and size of every other file in ``directory``.

    Called once every other file is final, so the manifest covers all of them,
    ``config.json`` included.
    """
    files = {path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
             for path in sorted(directory.iterdir()) if path.is_file() and path.name != MANIFEST_FILE}
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_export(directory: Path) -> bool:
    """Check every file ``manifest.json`` lists: present, same size, same SHA-256.

    Returns:
        True when the export has a manifest and every file matches it; False when it has
        no manifest (an export written before manifests existed: it cannot be verified,
        and the caller decides whether that is allowed).

    Raises:
        ExportError: the manifest is unreadable, does not cover ``config.json`` and the
            weights, or a listed file is missing or differs ("this export is incomplete
            or was altered: ...").
    """
    path = directory / MANIFEST_FILE
    if not path.exists():
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("algorithm") != "sha256" \
                or not isinstance(files, dict):
            raise ValueError(f"not a {MANIFEST_FORMAT} with sha256 entries")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise altered_export(directory, MANIFEST_FILE, f"unreadable: {err}") from None
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise altered_export(directory, MANIFEST_FILE, f"it does not list {required}")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise altered_export(directory, MANIFEST_FILE, f"it lists {name!r}, which is not a file name")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise altered_export(directory, MANIFEST_FILE, f"its entry for {name} has no sha256")
        file = directory / name
        if not file.is_file():
            raise altered_export(directory, name, "missing")
        size, listed = file.stat().st_size, entry.get("bytes")
        if (isinstance(listed, int) and size != listed) or sha256_file(file) != entry["sha256"]:
            sizes = f"; {size} bytes, {listed} when exported" if isinstance(listed, int) and size != listed else ""
            raise altered_export(directory, name, f"changed since export: its SHA-256 differs from the one in "
                                                  f"{MANIFEST_FILE}{sizes}")
    return True


def data_content_digest(source: Path, settings: Any) -> str:
    """Digest of the bytes of a data source as ``settings`` (a DataConfig) reads it.

    The same digest the decode cache keys on: file names inside the source are relative,
    so a copy of the data at another path has the same digest. ``search predict`` uses
    it to recognise the study's data wherever it lies.

    Raises:
        DataError: ``source`` cannot be read with these settings (so it is not that data).
    """
    from trainables.data.cache import content_digest
    from trainables.data.sources import open_source

    manifest = open_source(source, settings)
    try:
        return content_digest(manifest.hash_files)
    finally:
        manifest.close()


@dataclass(frozen=True)
class ExportOptions:
    """Choices of ``search best --export``.

    Attributes:
        directory: the export folder (must not exist unless ``force``).
        force: replace an existing export folder.
        refit: retrain the best configuration on train + val for its best epoch count.
        register: also register the model under this name in the MLflow model registry.
        metric: rank trials by this validation metric instead of the study's.
        threshold: the decision-threshold rule (``youden``, ``sensitivity:0.95``...);
            None: the space's ``export.threshold``.
        calibrate: fit temperature scaling; None: the space's ``export.calibrate``.
        ensemble: ``none``, ``folds`` or ``top-K`` (:mod:`search.model.members`); None:
            ``folds`` when the best trial cross-validated, else ``none``.
        tta: test-time views, ``none``, ``flip`` or ``dihedral`` (:mod:`search.model.views`);
            None: the space's ``export.tta``.
    """

    directory: Path
    force: bool = False
    refit: bool = False
    register: str | None = None
    metric: str | None = None
    threshold: str | None = None
    calibrate: bool | None = None
    ensemble: str | None = None
    tta: str | None = None


def check_target(directory: Path, force: bool) -> None:
    """Refuse to overwrite anything unless ``--force``, and then only a folder medtune wrote."""
    if not directory.exists():
        return
    if not force:
        raise ExportError(f"the export directory {directory} already exists; choose a new directory, "
                          "or pass --force to replace it")
    if not directory.is_dir():
        raise ExportError(f"{directory} exists and is not a directory; choose another export directory")
    if any(directory.iterdir()) and not _is_export(directory):
        raise ExportError(f"{directory} exists and is not a medtune export (no {CONFIG_FILE} of format "
                          f"{EXPORT_FORMAT!r}); --force only replaces earlier exports: choose another directory")


def _is_export(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG_FILE).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def study_space(client: Any, study: Study) -> tuple[Any, str]:
    """The space exactly as the study ran it (parsed, and its text): the parent run's
    ``space.yaml``, else the space file."""
    from search.space import load_yaml, parse_space

    text = client.get_run(study.parent_run_id).data.tags.get(SPACE_TAG)
    if text is None or len(text) >= SPACE_TAG_LIMIT:  # the tag holds a space only up to its length limit
        with tempfile.TemporaryDirectory() as tmp:
            try:
                text = Path(client.download_artifacts(study.parent_run_id, "space.yaml", tmp)).read_text()
            except Exception:  # noqa: BLE001 - artifact store unreachable: fall back to the file
                text = None
    if text is None:
        path = Path(study.space_path)
        if not path.is_file():
            raise StudyError(f"study {study.name!r} has no space.yaml in its MLflow run and its space file "
                             f"{path} is gone; put the space file back at that path")
        text = path.read_text()
    return parse_space(Path(study.space_path), load_yaml(text) or {}), text


def study_data(client: Any, study: Study, log: Log) -> tuple[Any, str, ImageDataset]:
    """The study's space, its text and its dataset, checked to be the very data (and split) it ran on."""
    from trainables.data import describe, load_dataset

    space, text = study_space(client, study)
    started = time.perf_counter()
    data = load_dataset(space.data)
    log(f"{describe(data)} ({time.perf_counter() - started:.1f}s)")
    if data.fingerprint != study.data_fingerprint:
        raise StudyError(f"the data loaded now ({data.source}) differs from the data study {study.name!r} ran on "
                         f"(fingerprint {data.fingerprint[:12]} vs {study.data_fingerprint[:12]}), so its test split "
                         "may not be held out; point MEDTUNE_DATA (or the space's data.source) at the study's data")
    return space, text, data


def write_networks(directory: Path, networks: list[nn.Module], sample: torch.Tensor,
                   metadata: list[dict[str, str]], temperature: float = 1.0, tta: str = "none") -> dict[str, float]:
    """Write each member's safetensors and the TorchScript and ONNX graphs of the soft vote;
    return each format's max abs difference to PyTorch.

    Raises:
        ExportError: a reloaded format disagrees with PyTorch beyond ``FORMAT_TOLERANCE``.
    """
    import onnxruntime
    from safetensors.torch import load_model, save_model

    wrapped = Probabilities([n.eval() for n in networks], temperature, tta).eval()
    with torch.no_grad():
        expected = wrapped(sample).numpy()
    reloaded = []
    for index, (network, meta) in enumerate(zip(networks, metadata)):
        path = str(directory / member_weights_file(index))
        save_model(network, path, metadata=meta)
        again = rebuild_model(TrialConfig.from_dict(json.loads(meta["trial_config"])), int(meta["num_classes"]),
                              int(meta["data_channels"]))
        load_model(again, path)
        reloaded.append(again)
    backbones = ", ".join(sorted({m["backbone"] for m in metadata}))
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; TorchScript is still what LibTorch (C++) serving loads.
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(wrapped, sample[:2])
            torch.jit.save(traced, str(directory / TORCHSCRIPT_FILE))
            scripted = torch.jit.load(str(directory / TORCHSCRIPT_FILE))
        except Exception as err:  # noqa: BLE001 - tracing fails in many ways for unusual modules
            raise ExportError(f"TorchScript tracing of backbone {backbones!r} failed "
                              f"({type(err).__name__}: {err}); please report this backbone") from err
        try:
            torch.onnx.export(wrapped, (sample[:2],), str(directory / ONNX_FILE), input_names=["images"],
                              output_names=["probabilities"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, external_data=False, verbose=False)
        except Exception as err:  # noqa: BLE001 - torch.export / onnxscript raise many error types
            raise ExportError(f"ONNX export of backbone {backbones!r} failed "
                              f"({type(err).__name__}: {err}); please report this backbone") from err
    session = onnxruntime.InferenceSession(str(directory / ONNX_FILE), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        outputs = {
            "safetensors": Probabilities(reloaded, temperature, tta)(sample).numpy(),
            "torchscript": scripted(sample).numpy(),
            "onnx": session.run(["probabilities"], {"images": sample.numpy()})[0],
        }
    diffs = {name: float(np.abs(out - expected).max()) for name, out in outputs.items()}
    bad = {name: diff for name, diff in diffs.items() if not diff <= FORMAT_TOLERANCE}
    if bad:
        raise ExportError(f"the exported {', '.join(bad)} model disagrees with PyTorch on {len(sample)} test images "
                          f"(max abs difference {bad}, tolerance {FORMAT_TOLERANCE}); please report this backbone")
    return diffs


def validation_metrics(client: Any, best: BestTrial) -> dict[str, float]:
    """The best trial's validation metrics at its best epoch, from MLflow."""
    from search.space import SEARCH_METRICS

    out = {}
    for key in (k for k in SEARCH_METRICS if k.startswith("val_")):
        values = [m.value for m in client.get_metric_history(best.run_id, key) if m.step == best.epoch]
        if values:
            out[key] = values[-1]
    return out


def search_timing(client: Any, study: Study) -> dict[str, Any]:
    """Trials by state and how long the search ran (first trial start to last trial end)."""
    runs = child_runs(client, study)
    counts: dict[str, int] = {}
    for run in runs:
        state = run.data.tags.get(STATE_TAG, "unknown")
        counts[state] = counts.get(state, 0) + 1
    starts = [r.info.start_time for r in runs if r.info.start_time]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    wall = (max(ends) - min(starts)) / 1000 if starts and ends else None
    trial_seconds = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs
                        if r.info.start_time and r.info.end_time)
    return {"trials": len(runs), "states": counts, "wall_seconds": wall, "trial_seconds": trial_seconds}


def input_size(spec: InputSpec, stored: tuple[int, int]) -> int:
    """Side ``S`` of the network input for images stored at ``stored`` (as prepare_batch does it)."""
    crop = min(spec.crop_size or min(stored), *stored)
    return spec.input_size or crop


def export_config(space: Any, data: ImageDataset, final: FinalModel, spec: InputSpec, study: Study,
                  best: BestTrial, decision: Decision, tta: str) -> dict[str, Any]:
    """The ``config.json`` of an export: how to rebuild the network and prepare its input."""
    from search.records.tracking import library_versions

    config = final.config
    stored = (int(data.images.shape[1]), int(data.images.shape[2]))
    size = input_size(spec, stored)
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "files": {"weights": WEIGHTS_FILE, "torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, "card": CARD_FILE,
                  "manifest": MANIFEST_FILE},
        "model": {
            "backbone": config.backbone,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "data_channels": data.channels,
            "input": f"float32 (B, {spec.in_chans}, {size}, {size}): images after `preprocess`",
            "output": "torchscript and onnx: class probabilities (B, num_classes), temperature-scaled "
                      "(decision.temperature) and averaged over the ensemble's members and the test-time views "
                      "(tta); each safetensors file: one member's logits of one view, before that scaling",
        },
        "ensemble": {"kind": str(final.ensemble), "members": [
            {"weights": member_weights_file(i), **member.describe()} for i, member in enumerate(final.members)]},
        "preprocess": {
            "stored_size": list(stored),
            "image_size": space.data.image_size,
            "channels": data.channels,
            "crop_size": spec.crop_size,
            "input_size": size,
            "in_chans": spec.in_chans,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "window": list(space.data.window) or None,
            "steps": [
                "decode with Pillow to L (channels 1) or RGB (channels 3); 16-bit images min-max scaled to 8 bit; "
                "DICOM with pydicom: rescale slope/intercept, the window (this `window`, else the file's), "
                "MONOCHROME1 inverted",
                "resize to image_size x image_size (bilinear) when image_size is set; else images must be "
                "stored_size already",
                "centre crop crop_size (null: the largest centred square), resize to input_size "
                "(bilinear, antialiased when shrinking)",
                "scale to [0, 1], average or repeat channels to in_chans, subtract mean, divide by std",
            ],
        },
        "decision": decision.to_dict(),
        "tta": tta,
        "trial_config": config.to_dict(),
        "data": {"source": str((space.raw.get("data") or {}).get("source", data.source)),
                 "data_config": dataclasses.asdict(space.data), "fingerprint": data.fingerprint,
                 "content_digest": data.content_digest,
                 # DataConfig / ImageDataset fields newer than this module: absent means False / 0
                 "group_overlap": int(data.group_overlap)},
        "study": {"name": study.name, "trial_id": best.trial_id, "run_id": best.run_id,
                  "parent_run_id": study.parent_run_id, "tracking_uri": study.tracking_uri,
                  "metric": best.metric, "value": best.value, "best_epoch": best.epoch,
                  "refit": final.checkpoint is None, "epochs": final.epochs,
                  "checkpoint": str(final.checkpoint) if final.checkpoint else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": library_versions(),
    }


def export_decision(study: Study, trials: list[BestTrial], ensemble: EnsembleChoice, space: Any,
                    data: ImageDataset, options: ExportOptions, tta: str, log: Log) -> Decision:
    """Temperature and threshold fitted on the held-out predictions of ``trials`` at their checkpoint epochs.

    One model: the best trial's validation predictions (for fold 0 of a cross-validated
    trial, its own held-out fold). A fold ensemble: the out-of-fold predictions, each image
    scored by the one fold model that never saw it (the ensemble then averages all of
    them, so it is somewhat less confident than the model the threshold was set on).
    Top-K: the mean of every member's predictions on the same validation split. Fitted
    before any refit: a refit model trains on the validation images, so the search
    checkpoints' predictions fit the decision either way. A fixed threshold without
    calibration needs no predictions at all. With test-time views (``tta``), the
    checkpoints score the same held-out images again under every view, so the decision is
    fitted on the probabilities the exported graphs will give.
    """
    from search.evaluation import parse_threshold

    threshold = options.threshold if options.threshold is not None else space.export.threshold
    calibrate = options.calibrate if options.calibrate is not None else space.export.calibrate
    rule = parse_threshold(threshold)
    binary = data.num_classes == 2
    if not calibrate and (rule.kind == "fixed" or not binary):
        return Decision(1.0, rule.value if binary else None, str(rule) if binary else None,
                        data.class_names[1] if binary else None, "a fixed rule: no held-out predictions used", {})
    held_out = []
    for trial in trials:
        try:
            folder, epoch = best_checkpoint(study, trial)
        except StudyError as err:
            raise ExportError(f"{err}. The temperature and threshold are fitted on that checkpoint's held-out "
                              "predictions; without them, export with a fixed rule: --threshold 0.5 --no-calibrate") \
                from None
        held_out.append((trial, epoch, *held_out_predictions(folder)))
    labels, indices = held_out[0][2], held_out[0][4]
    if any(not np.array_equal(h[2], labels) or (h[4] is not None and indices is not None
                                                and not np.array_equal(h[4], indices)) for h in held_out):
        raise ExportError("the top-K members' validation predictions are not on the same images (trials of "
                          "another split or fold count); use --ensemble none")
    member_probs = [h[3] for h in held_out]
    views = ""
    if tta != "none":
        order = indices if indices is not None else data.splits["val"]
        if len(order) != len(labels) or not np.array_equal(data.labels[order], labels):
            raise ExportError(f"trial {trials[0].trial_id}'s held-out predictions are not on images of the data "
                              "loaded now, so they cannot be scored again under test-time views; export with "
                              "--tta none")
        try:
            member_probs = [p for trial in trials for p in held_out_view_probabilities(study, trial, data, order, tta)]
        except StudyError as err:
            raise ExportError(str(err)) from None
        views = f", scored again under the {len(member_probs) // len(trials)} views of --tta {tta}"
    cv = cv_folds_of(trials[0])
    if cv > 1 and ensemble.kind == "none" and not options.refit and indices is not None:
        from trainables.data.folds import held_out_folds

        # fold 0's model is exported: only its own held-out fold is unseen by it
        own = np.isin(indices, held_out_folds(data, cv)[0])
        labels, member_probs = labels[own], [p[own] for p in member_probs]
        kind = "fold 0's held-out predictions"
    elif cv > 1:
        kind = "out-of-fold predictions (each image scored by the one fold model that did not train on it)"
    else:
        kind = "validation predictions"
    fitted_on = (f"{kind} of trial {trials[0].trial_id} at epoch {held_out[0][1]} ({len(labels)} images{views})"
                 if len(held_out) == 1 else
                 f"the mean of the {len(held_out)} members' validation predictions ({len(labels)} images{views})")
    try:
        return fit_decision(labels, member_probs, list(data.class_names), threshold, calibrate, fitted_on)
    except DecisionError as err:
        raise ExportError(str(err)) from None


def describe_decision(decision: Decision, test: dict[str, Any]) -> str:
    """One log line: temperature, threshold and what they give on test."""
    line = (f"decision (fitted on {decision.fitted_on}): temperature {decision.temperature:.3f}; test AUC "
            f"{test['auc']:.4f} (95% CI {test['auc_low']:.4f}-{test['auc_high']:.4f}), ECE {test['ece_before']:.4f} -> "
            f"{test['ece_after']:.4f}, NLL {test['nll_before']:.4f} -> {test['nll_after']:.4f}")
    if decision.threshold is not None:
        line += (f"; threshold {decision.threshold:.4f} ({decision.rule}): test sensitivity "
                 f"{test['sensitivity']:.4f}, specificity {test['specificity']:.4f}")
    return line


def skipped_images(client: Any, study: Study, data: ImageDataset, log: Log) -> dict[str, int]:
    """Images left out of the study's data while loading, by reason (``{"unreadable": 3}``).

    The study's parent run records them in the ``medtune.data_skipped`` tag (JSON); a
    study without that tag gets the counts of the export's own load of the same data
    (same fingerprint, so the same images were left out). Zero counts are dropped.
    """
    text = client.get_run(study.parent_run_id).data.tags.get(DATA_SKIPPED_TAG)
    counts: Any = data.skipped
    if text is not None:
        try:
            counts = json.loads(text)
            if not isinstance(counts, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            log(f"warning: tag {DATA_SKIPPED_TAG} of the study's parent run is not a JSON object of counts "
                f"({err}: {text[:80]!r}); the card uses the counts of this export's own data load instead")
            counts = data.skipped
    return {str(reason): n for reason, n in counts.items() if isinstance(n, int) and not isinstance(n, bool) and n > 0}


def export_best(study: Study, options: ExportOptions, log: Log = print) -> dict[str, Any]:
    """Export the study's best trial to ``options.directory`` and test it once.

    Returns:
        The summary also written to ``metrics.json`` (test and validation metrics, split
        sizes, search timing, format differences), plus ``directory``.

    Raises:
        StudyError: no finished trial, a missing run, checkpoint or data.
        ExportError: the directory exists (without ``force``), or a format check failed.
    """
    from sklearn.metrics import confusion_matrix

    from search.model.card import model_card
    from search.model.publish import count_test_use
    from search.records.tracking import reliability_png, roc_and_confusion_png
    from trainables.trial import input_spec_for

    directory = options.directory.expanduser().resolve()
    check_target(directory, options.force)
    client = study.client()
    best, _ = best_trial(client, study, options.metric)
    space, space_text, data = study_data(client, study, log)
    if len(data.splits["test"]) == 0:
        raise StudyError(f"the data of study {study.name!r} has no test split (data.test_fraction 0), so the "
                         "final model cannot be tested; run the study on data with a held-out test split")
    ensemble = parse_ensemble(options.ensemble) if options.ensemble else default_ensemble(best)
    tta = parse_tta(options.tta if options.tta is not None else space.export.tta)
    trials = member_trials(study, best, ensemble, data, options.refit, log)  # refuses an impossible ensemble
    decision = export_decision(study, trials, ensemble, space, data, options, tta, log)
    final = final_model(study, trials, data, options.refit, ensemble, log)
    model, config = final.network, final.config
    spec = input_spec_for(config, data, model)

    # each (view, member) pair's probabilities on test; the export's are their (temperature-scaled) mean
    networks = [m.network for m in final.members]
    member_probs = view_probabilities(networks, spec, data, data.splits["test"], tta, config.eval_batch("cpu"))
    labels = data.labels[data.splits["test"]]
    probs, calibrated = soft_vote(member_probs), soft_vote(member_probs, decision.temperature)
    test = scores(labels, calibrated, "test_")  # what the exported graphs and `search predict` give
    # at the export's decision (the threshold of a binary model), as `search predict` decides
    decisions = predicted_classes(calibrated, decision.threshold)
    matrix = confusion_matrix(labels, decisions, labels=list(range(data.num_classes))).tolist()
    # The scores are about to be seen: this counts as a use of the test split even if the export fails later.
    test_uses = count_test_use(client, study)
    log("test: " + "  ".join(f"{k[5:]} {v:.4f}" for k, v in test.items()) + f"  ({len(labels)} images; use "
        f"{test_uses} of this study's test split)")
    config_json = export_config(space, data, final, spec, study, best, decision, tta)
    decided = test_report(decision, labels, probs, calibrated)
    if len(networks) > 1:  # each member alone (averaged over its views)
        decided["members_auc"] = [scores(labels, soft_vote(member_probs[i::len(networks)]), "")["auc"]
                                  for i in range(len(networks))]
    if tta != "none":  # the same members without the views
        decided["auc_without_tta"] = scores(labels, soft_vote(member_probs[:len(networks)]), "")["auc"]
    log(describe_decision(decision, decided))
    summary: dict[str, Any] = {
        "test": test, "decision": decision.to_dict(), "tta": tta, "test_decision": decided,
        "test_confusion_matrix": matrix,
        "validation": validation_metrics(client, best), "ensemble": config_json["ensemble"],
        "test_uses": test_uses, "data_skipped": skipped_images(client, study, data, log),
        "split_sizes": data.split_sizes(), "train_images": final.train_images, "refit": options.refit,
        "search": search_timing(client, study), "best": dataclasses.asdict(best),
    }
    sample = prepare_batch(torch.from_numpy(data.images[data.splits["test"][:CHECK_IMAGES]]), spec)
    metadata = [{"format": EXPORT_FORMAT, "backbone": m.config.backbone,
                 "trial_config": json.dumps(m.config.to_dict()), "num_classes": str(data.num_classes),
                 "data_channels": str(data.channels), "class_names": json.dumps(list(data.class_names))}
                for m in final.members]
    point = None if decision.threshold is None else (decision.threshold, decided["sensitivity"],
                                                      decided["specificity"])
    plots = roc_and_confusion_png(labels, calibrated, list(data.class_names), "test split", point)
    plots[RELIABILITY_FILE] = reliability_png(decided["reliability_before"], decided["reliability"], "test split")

    # Everything is written to a staging folder and renamed at the end: a failed export
    # (e.g. an ONNX mismatch) leaves neither a half-written folder nor a damaged old one.
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        summary["format_max_abs_diff"] = write_networks(staging, networks, sample, metadata, decision.temperature, tta)
        log("reloaded formats vs PyTorch, max abs difference in probabilities: " + ", ".join(
            f"{k} {v:.1e}" for k, v in summary["format_max_abs_diff"].items()))
        for name, content in plots.items():
            (staging / name).write_bytes(content)
        (staging / CONFIG_FILE).write_text(json.dumps(config_json, indent=2))
        (staging / METRICS_FILE).write_text(json.dumps(summary, indent=2, default=_plain))
        (staging / CARD_FILE).write_text(model_card(config_json, summary, space_text))
        write_manifest(staging)  # last: it covers every file above
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {directory}: " + ", ".join(sorted(p.name for p in directory.iterdir())))
    log(f"next: search predict {shlex.quote(str(directory))} IMAGES_OR_DATA...    # writes predictions.csv (pred at the threshold, "
        "prob_<class>)")

    from search.model.publish import log_test_results, register

    log_test_results(client, study, directory, summary, plots)
    if options.register:
        version = register(study, directory, options.register, config_json)
        summary["registered"] = {"name": options.register, "version": version}
        log(f"registered {options.register!r} version {version} in {study.tracking_uri}")
    return {**summary, "directory": str(directory)}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


__all__ = ["ExportError", "ExportOptions", "Probabilities", "altered_export", "check_target", "data_content_digest",
           "export_best", "rebuild_model", "reexport_command", "sha256_file", "verify_export", "write_manifest"]
