"""Space-file faults found by a hostile-user review, each refused with the file, the key and the fix.

Every case here was accepted, or reported at the wrong key or value, before the fix:
duplicate YAML keys, a parameter both fixed and searched, misleading suggestions and
attributions, unchecked schedule/device/concurrency settings, and two coercers that
disagreed on whether ``true`` is a number.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.space import (
    ResourceSettings,
    SpaceError,
    TuneSettings,
    build_section,
    load_space,
    parse_overrides,
)
from trainables.config import DataConfig, TrialConfig

HEAD = "name: faults\ndata:\n  source: medmnist/pneumoniamnist.npz\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(tmp_path: Path, text: str, overrides: dict[str, Any] | None = None) -> SpaceError:
    """Load ``text`` as a space file and return the SpaceError it must raise."""
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path, overrides)
    assert str(path) in str(info.value), info.value
    return info.value


# 1. Duplicate keys -------------------------------------------------------------------------

DUPLICATES = [
    # (text, key path, lines)
    (HEAD + "params:\n  lr: 1e-3\n  epochs: 2\n  lr: 5.0\n", "params.lr", (5, 7)),
    (HEAD + "params:\n  epochs: 2\nparams:\n  epochs: 3\n", "params", (4, 6)),
    (HEAD + "search:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  dropout: {uniform: [0, 0.5]}\n"
            "  lr: {loguniform: [1.0e-3, 1.0e-1]}\n", "search.lr", (5, 7)),
    (HEAD + "search:\n  lr:\n    loguniform: [1.0e-4, 1.0e-2]\n    default: 1.0e-3\n    default: 5.0e-3\n",
     "search.lr.default", (7, 8)),
    (HEAD + "  image_size: 64\n  seed: 1\n  image_size: 128\n", "data.image_size", (4, 6)),
    (HEAD + "tune: {num_samples: 4, num_samples: 40}\n", "tune.num_samples", (4, 4)),
]


@pytest.mark.parametrize("text,key,lines", DUPLICATES, ids=[d[1] for d in DUPLICATES])
def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path, text, key, lines):
    err = refused(tmp_path, text)
    where = f"both on line {lines[0]}" if lines[0] == lines[1] else f"lines {lines[0]} and {lines[1]}"
    assert err.key == key and f"is given twice ({where})" in str(err) and "keep one" in str(err), err


def test_duplicate_check_keeps_safe_load_semantics():
    """Merge keys may still be overridden; every shipped space reads exactly as safe_load reads it."""
    from search.space import load_yaml

    merged = "base: &base {lr: 0.1, epochs: 2}\nrun:\n  <<: *base\n  lr: 0.01\n"
    assert load_yaml(merged) == yaml.safe_load(merged) == {"base": {"lr": 0.1, "epochs": 2},
                                                            "run": {"lr": 0.01, "epochs": 2}}
    for path in sorted(Path(__file__).parents[1].joinpath("spaces").glob("*.yaml")):
        assert load_yaml(path.read_text()) == yaml.safe_load(path.read_text()), path
    assert parse_overrides(["lr=1e-3"]) == {"lr": "1e-3"}  # --set values keep plain safe_load


# 2. A key both fixed and searched ---------------------------------------------------------

def test_parameter_in_params_and_search_is_refused(tmp_path):
    err = refused(tmp_path, HEAD + "params:\n  lr: 0.001\nsearch:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert err.key == "search.lr" and "also fixed in params" in str(err) and "keep 'lr' in one section" in str(err)


def test_override_cannot_hide_a_conflict_in_the_file(tmp_path):
    text = HEAD + "params:\n  lr: 0.001\nsearch:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
    assert refused(tmp_path, text, {"lr": 0.01}).key == "search.lr"


def test_override_of_a_searched_parameter_fixes_it(tmp_path):
    """``--set lr=...`` moves a searched key to params: intended, and not a conflict."""
    path = write(tmp_path, HEAD + "params:\n  epochs: 2\nsearch:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
                                  "  dropout: {uniform: [0.0, 0.5]}\n")
    space = load_space(path, parse_overrides(["lr=0.01", "epochs=3", "data.seed=4"]))
    assert "lr" not in space.search and "dropout" in space.search
    config = space.default_config()
    assert config.lr == pytest.approx(0.01) and config.epochs == 3 and space.data.seed == 4


# 3a. Suggestions know common aliases ------------------------------------------------------

ALIASES = [
    ("lerning_rate", "lr"), ("learning_rate", "lr"), ("learningrate", "lr"), ("bs", "batch_size"),
    ("batch", "batch_size"), ("optim", "optimizer"), ("model", "backbone"), ("arch", "backbone"),
    ("architecture", "backbone"), ("num_epochs", "epochs"), ("freeze", "frozen_stages"),
    ("frozen_layers", "frozen_stages"), ("l2_reg", "l2"), ("l1_penalty", "l1"), ("wd", "weight_decay"),
    ("momentun", "momentum"), ("lrr", "lr"),
]


@pytest.mark.parametrize("section", ["params", "search"])
@pytest.mark.parametrize("alias,real", ALIASES, ids=[a for a, _ in ALIASES])
def test_unknown_trial_key_suggests_the_real_name(tmp_path, section, alias, real):
    value = "0.1" if section == "params" else "{choice: [0.1]}"
    err = refused(tmp_path, HEAD + f"{section}:\n  {alias}: {value}\n")
    assert err.key == f"{section}.{alias}" and f"did you mean '{real}'?" in str(err), err


def test_trial_config_suggests_the_real_name():
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        TrialConfig.from_dict({"lerning_rate": 0.1})


# 3b. A bad bound is reported at search.<name> with that bound -----------------------------

@pytest.mark.parametrize("before", ["", "  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"], ids=["alone", "after-lr"])
def test_bad_range_bound_is_reported_at_its_search_key(tmp_path, before):
    err = refused(tmp_path, HEAD + "search:\n" + before + "  epochs: {int: [-2, 3]}\n")
    assert err.key == "search.epochs" and "but got -2" in str(err), err


def test_bad_default_of_a_searched_range_points_at_it(tmp_path):
    """warmup 3 with the epochs range's low end 2 can be sampled: refused at search.epochs."""
    err = refused(tmp_path, HEAD + "params:\n  warmup_epochs: 3\nsearch:\n  epochs: {int: [2, 10]}\n")
    assert err.key == "search.epochs" and "epochs=2" in str(err), err


def test_bad_fixed_parameter_is_still_reported_in_params(tmp_path):
    err = refused(tmp_path, HEAD + "params:\n  dropout: 1.5\nsearch:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert err.key == "params" and "'dropout'" in str(err) and "1.5" in str(err), err


# 3c. image_size is bounded before any decoding --------------------------------------------

def test_huge_image_size_is_refused_at_its_key(tmp_path):
    err = refused(tmp_path, HEAD + "  image_size: 100000\n")
    assert err.key == "data.image_size" and "100000" in str(err) and "4096" in str(err), err
    assert load_space(write(tmp_path, HEAD + "  image_size: 4096\n")).data.image_size == 4096
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(source="x.npz", image_size=5000).validate()


# 4. Settings that were never validated ----------------------------------------------------

BAD_TRIAL = [
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"), ({"min_lr_ratio": -0.1}, "min_lr_ratio"),
    ({"step_size": 0}, "step_size"), ({"plateau_patience": -1}, "plateau_patience"),
    ({"warmup_epochs": -1}, "warmup_epochs"), ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs"),
    ({"milestones": [5, 3]}, "milestones"), ({"milestones": [0, 5]}, "milestones"),
    ({"milestones": [5, 5]}, "milestones"),
    ({"device": "gpu"}, "device"), ({"device": "cuda:x"}, "device"), ({"device": "tpu"}, "device"),
]


@pytest.mark.parametrize("values,key", BAD_TRIAL, ids=[f"{k}={list(v.values())[0]}" for v, k in BAD_TRIAL])
def test_unchecked_trial_settings_are_refused(tmp_path, values, key):
    with pytest.raises(ValueError, match=f"'{key}' must be"):
        TrialConfig.from_dict(values)
    err = refused(tmp_path, HEAD + "params:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in values.items()))
    assert err.key == "params" and f"'{key}'" in str(err), err


GOOD_TRIAL = [
    {"momentum": 0.0}, {"momentum": 0.99}, {"gamma": 1.0}, {"min_lr_ratio": 0.0}, {"min_lr_ratio": 1.0},
    {"step_size": 1}, {"plateau_patience": 0}, {"warmup_epochs": 9.5, "epochs": 10},
    {"warmup_epochs": 20, "epochs": 10, "schedule": "onecycle"}, {"milestones": [2, 5]},
    {"device": "auto"}, {"device": "cpu"}, {"device": "cuda"}, {"device": "cuda:1"}, {"device": "mps"},
]


@pytest.mark.parametrize("values", GOOD_TRIAL, ids=[str(v) for v in GOOD_TRIAL])
def test_edge_values_of_those_settings_are_accepted(values):
    config = TrialConfig.from_dict(values)
    assert all(getattr(config, k) == (tuple(v) if isinstance(v, list) else v) for k, v in values.items())


@pytest.mark.parametrize("device,fix", [("gpu", "cuda"), ("GPU:1", "cuda:1"), ("cuda0", "cuda:0"), ("cpuu", "cpu")])
def test_device_typo_suggests_the_torch_name(device, fix):
    with pytest.raises(ValueError, match=f"did you mean '{fix}'"):
        TrialConfig.from_dict({"device": device})


@pytest.mark.parametrize("value", [0, -1])
def test_max_concurrent_below_one_is_refused(tmp_path, value):
    err = refused(tmp_path, HEAD + f"tune: {{max_concurrent: {value}}}\n")
    assert err.key == "tune.max_concurrent" and f"max_concurrent must be >= 1, but got {value}" in str(err)
    assert "null" in str(err)


def test_max_concurrent_null_means_auto_and_one_is_allowed(tmp_path):
    assert load_space(write(tmp_path, HEAD + "tune: {max_concurrent: null}\n")).tune.max_concurrent is None
    assert load_space(write(tmp_path, HEAD + "tune: {max_concurrent: 1}\n")).tune.max_concurrent == 1


@pytest.mark.parametrize("value", ["2", "0", "true", "4"])
def test_data_channels_other_than_1_or_3_are_refused(tmp_path, value):
    err = refused(tmp_path, HEAD + f"  channels: {value}\n")
    assert err.key == "data.channels" and value in str(err).lower(), err
    assert load_space(write(tmp_path, HEAD + "  channels: 3\n")).data.channels == 3


# 5. One coercer: bools are never numbers, numbers never bools -----------------------------

def test_true_for_an_int_and_1_for_a_bool_are_refused_by_both_entry_points(tmp_path):
    for values in ({"epochs": True}, {"seed": False}, {"lr": True}, {"aug_flip": 1}, {"nesterov": 0},
                   {"head_hidden": [True]}):
        with pytest.raises(ValueError, match="expects"):
            TrialConfig.from_dict(values)
    for section in ("tune: {num_samples: true}\n", "resources: {cpus: true}\n", "  blank_filter: 1\n",
                    "params:\n  epochs: true\n", "params:\n  aug_flip: 1\n"):
        err = refused(tmp_path, HEAD + section)
        assert "expects" in str(err), err


SAME_FIELD_TYPES = [
    # (TrialConfig field, space section, its dataclass, field of the same type)
    ("seed", "tune", TuneSettings, "seed"),                  # int
    ("lr", "resources", ResourceSettings, "cpus"),           # float
    ("aug_flip", "data", DataConfig, "blank_filter"),        # bool
]


@pytest.mark.parametrize("value", [True, False, 1, 0, 2.0, 2.5, "3", "1e-3", "true", "abc", None, [1]])
@pytest.mark.parametrize("trial_key,section,cls,key", SAME_FIELD_TYPES, ids=[s[0] for s in SAME_FIELD_TYPES])
def test_trial_and_space_coercion_agree(tmp_path, value, trial_key, section, cls, key):
    """The same value for a field of the same type is accepted (as the same value) or refused by both."""
    try:
        trial: Any = getattr(TrialConfig.from_dict({trial_key: value}), trial_key)
    except ValueError:
        trial = "refused"
    fields = {"source": "x.npz"} if cls is DataConfig else {}
    try:
        other: Any = getattr(build_section(tmp_path / "s.yaml", section, {**fields, key: value}, cls), key)
    except (SpaceError, ValueError):
        other = "refused"
    assert trial == other and type(trial) is type(other), (value, trial, other)


def test_mlflow_string_params_still_rebuild_the_config():
    """Export rebuilds a trial from MLflow's string params ("True", "None", "[64]", "0.001")."""
    config = TrialConfig(backbone="resnet18", pretrained=True, head_hidden=(64, 32), lr=3e-4, truncate_after=None,
                         aug_flip=False, milestones=(2, 4), schedule="multistep", momentum=0.8)
    text = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in config.to_dict().items()}
    assert TrialConfig.from_dict(text) == config
    assert TrialConfig.from_dict({"pretrained": "none"}).pretrained is False
