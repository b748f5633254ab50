"""Space files: defaults for `search trial`, and every kind of mistake reported before Ray starts.

Each bad space must fail in ``prepare`` (no Ray, no data decoding) with the file, the
key path and a fix in the message.
"""

import textwrap
from pathlib import Path

import pytest

from search.space import SpaceError, load_space, parse_duration, parse_overrides
from search.study import StudyOptions, prepare

GOOD = """
name: tiny
data:
  source: medmnist/pneumoniamnist.npz
params:
  epochs: 3
search:
  backbone: {choice: [cnn3, resnet18]}
  optimizer: {choice: [adam, sgd, rmsprop]}
  momentum: {uniform: [0.5, 0.99], when: {optimizer: [sgd, rmsprop]}}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  frozen_stages: {int: [0, 5]}
  head_hidden: {choice: [[], [64]]}
tune: {num_samples: 4, metric: val_auc}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_space_defaults_and_overrides(tmp_path, data_root):
    space = load_space(write(tmp_path, GOOD), parse_overrides(["epochs=2", "data.seed=3"]))
    config = space.default_config()
    assert config.backbone == "cnn3" and config.optimizer == "adam" and config.epochs == 2
    assert config.lr == pytest.approx(1e-3)  # geometric middle of the range
    assert config.head_hidden == () and config.frozen_stages == 2
    assert space.data.seed == 3 and Path(space.data.source) == data_root / "medmnist" / "pneumoniamnist.npz"
    assert space.max_epochs == 2 and space.scheduler.reduction_factor == 2
    assert space.search["momentum"].active({"optimizer": "sgd"}) and not space.search["momentum"].active({"optimizer": "adam"})
    prepare(write(tmp_path, GOOD), StudyOptions(storage=str(tmp_path / "studies")))


BAD = [
    ("params:\n  lrr: 0.1\n", "params.lrr", "did you mean 'lr'"),
    ("search:\n  backbone: {choice: [resnet_18]}\n", "search.backbone", "close matches: resnet18"),
    ("search:\n  lr: {loguniform: [1.0e-2, 1.0e-4]}\n", "search.lr", "`low <= high` must hold"),
    ("search:\n  lr: {loguniform: [0, 1]}\n", "search.lr", "needs low > 0"),
    ("search:\n  lr: {logunifrom: [1.0e-4, 1.0e-2]}\n", "search.lr", "did you mean 'loguniform'"),
    ("search:\n  momentum: {uniform: [0.5, 0.9], when: {optimizer: [sgd]}}\n", "search.momentum.when.optimizer", "not searched"),
    ("tune: {metric: test_auc}\n", "tune.metric", "selecting on the test split"),
    ("tune: {metric: val_aucc}\n", "tune.metric", "did you mean 'val_auc'"),
    ("tune: {time_budget: soon}\n", "tune.time_budget", "write e.g. 90m"),
    ("tune: {num_samples: 0}\n", "tune.num_samples", "num_samples must be >= 1"),
    ("scheduler: {reduction_factor: 1}\n", "scheduler.reduction_factor", "reduction_factor must be > 1"),
    ("tune: {algorithm: bayes}\n", "tune.algorithm", "must be one of tpe, random, grid"),
    ("resources: {cpu: 1}\n", "resources.cpu", "did you mean 'cpus'"),
    ("params:\n  frozen_stages: 9\n  backbone: resnet18\n", "params.frozen_stages", "0..5"),
    ("params:\n  dropout: 1.5\n", "params", "dropout"),
    ("params:\n  pretrained: /nowhere/weights.safetensors\n", "params.pretrained", "does not exist"),
    ("tune: {algorithm: grid}\nsearch:\n  lr: {uniform: [0.1, 0.2]}\n", "tune.algorithm", "grid search needs choice"),
    ("search:\n  dropout: {uniform: [0.0, 1.5]}\n", "search.dropout", "dropout"),
    ("search:\n  optimizer: {choice: [adam, adamm]}\n", "search.optimizer", "did you mean 'adam'"),
    ("params:\n  class_weighting: balnced\n", "params", "did you mean 'balanced'"),
    ("params:\n  backbone: cnn3\n  pretrained: true\n", "params.pretrained", "from-scratch baseline"),
]


@pytest.mark.parametrize("extra,key,fix", BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_space_is_refused_before_ray(tmp_path, extra, key, fix):
    text = "name: bad\ndata:\n  source: medmnist/pneumoniamnist.npz\n" + extra
    with pytest.raises(SpaceError) as err:
        prepare(write(tmp_path, text), StudyOptions(storage=str(tmp_path / "studies")))
    message = str(err.value)
    assert str(tmp_path / "space.yaml") in message and err.value.key == key and fix in message, message


def test_missing_data_file_names_the_path_and_env(tmp_path):
    path = write(tmp_path, "data:\n  source: nowhere/images.csv\n")
    with pytest.raises(SpaceError) as err:
        prepare(path, StudyOptions(storage=str(tmp_path / "studies")))
    assert err.value.key == "data.source" and "MEDTUNE_DATA" in str(err.value)


def test_existing_study_needs_resume_and_missing_study_cannot_resume(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(SpaceError, match="no study to resume"):
        prepare(path, StudyOptions(storage=str(tmp_path / "studies"), resume=True))
    (tmp_path / "studies" / "tiny").mkdir(parents=True)
    (tmp_path / "studies" / "tiny" / "medtune_study.json").write_text("{}")
    with pytest.raises(SpaceError, match="pass --resume"):
        prepare(path, StudyOptions(storage=str(tmp_path / "studies")))


def test_durations_and_overrides():
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("120") == 120
    assert parse_overrides(["head_hidden=[256, 64]", "lr=1e-3"]) == {"head_hidden": [256, 64], "lr": "1e-3"}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])


def test_shipped_spaces_are_valid(tmp_path):
    for path in sorted(Path(__file__).parents[1].joinpath("spaces").glob("*.yaml")):
        space, _ = prepare(path, StudyOptions(storage=str(tmp_path / "studies")))
        assert space.default_config() is not None, path


def test_gpus_per_trial_follow_the_cluster(capsys):
    from search.study import trial_gpus

    assert trial_gpus(None, 0) == 0 and trial_gpus(None, 4) == 1
    assert trial_gpus(0.25, 1) == 0.25
    assert trial_gpus(0.5, 0) == 0 and "has no GPU" in capsys.readouterr().out


def test_loss_metrics_are_minimised_by_default(tmp_path):
    space = load_space(write(tmp_path, GOOD + "\n"), {})
    assert space.tune.mode == "max"
    path = write(tmp_path, GOOD.replace("metric: val_auc", "metric: val_loss"))
    assert load_space(path).tune.mode == "min"


def test_shipped_spaces_only_propose_valid_trials(tmp_path):
    """Sample every shipped space as a study would and check each config like a trial does.

    Catches combinations that can only fail: a scratch CNN with ImageNet weights, frozen
    stages beyond a truncated backbone, a grid value outside the sampled backbone's stages.
    """
    import optuna

    from search.space.sampling import DefineByRun, grid_size, sampler_for
    from trainables.config import TrialConfig
    from trainables.models import check_model_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for path in sorted(Path(__file__).parents[1].joinpath("spaces").glob("*.yaml")):
        space = load_space(path)
        grid = space.tune.algorithm == "grid"
        sampler = sampler_for(space) if grid else optuna.samplers.RandomSampler(seed=0)
        study = optuna.create_study(sampler=sampler)
        define = DefineByRun(space)
        checked, seen = 0, set()
        for _ in range(grid_size(space) if grid else 40):
            trial = study.ask()
            clipped = define(trial)
            config = TrialConfig.from_dict({**space.params, **trial.params, **clipped})  # as OptunaSearch merges them
            check_model_config(config)  # raises ModelError for a combination that cannot run
            checked += 1
            seen.add(repr(sorted(config.to_dict().items())))
            if not grid:
                study.tell(trial, 0.5)
            elif checked < grid_size(space):  # GridSampler stops the study after its last point
                study.tell(trial, 0.5)
        assert checked == (grid_size(space) if grid else 40), path
        if grid:
            assert len(seen) == checked, path  # no grid trial repeats another


def test_stage_choices_are_clipped_to_the_sampled_backbone(tmp_path):
    """``truncate_after`` / ``frozen_stages`` listed as choices beyond cnn3's 3 stages run as its deepest stage."""
    import optuna

    from search.space.sampling import DefineByRun
    from trainables.config import TrialConfig
    from trainables.models import check_model_config

    text = GOOD.replace("frozen_stages: {int: [0, 5]}",
                        "truncate_after: {choice: [null, 2, 4]}\n  frozen_stages: {choice: [0, 3, 5]}")
    text = text.replace("head_hidden:", "pretrained: {choice: [true]}\n  head_hidden:")  # frozen: pretrained only
    space = load_space(write(tmp_path, text))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        clipped = DefineByRun(space)(trial)
        config = TrialConfig.from_dict({**space.params, **trial.params, **clipped})
        check_model_config(config)
        seen.add((config.backbone, config.truncate_after, config.frozen_stages))
        study.tell(trial, 0.5)
    assert ("resnet18", 2, 3) in seen  # truncated after stage 2: 3 stages kept, frozen 5 -> 3
    assert any(b == "resnet18" and t == 4 for b, t, _ in seen)  # resnet18 keeps 4
    assert all(t is None or t <= 2 for b, t, _ in seen if b == "cnn3")  # cnn3's last stage is 2
    assert all(f == 0 for b, _, f in seen if b == "cnn3")  # a scratch CNN never freezes random layers


def test_scratch_trials_never_sample_frozen_stages_or_lr_ratio(tmp_path):
    """Frozen random layers and a slowed-down random backbone are not configurations anyone means."""
    import optuna

    from search.space.sampling import DefineByRun, scratch_note

    text = GOOD.replace("frozen_stages: {int: [0, 5]}", "frozen_stages: {int: [0, 5]}\n  lr_ratio: "
                        "{loguniform: [0.01, 1.0]}\n  pretrained: {choice: [true, false]}")
    space = load_space(write(tmp_path, text))
    assert "frozen_stages and lr_ratio: sampled only in pretrained trials; a scratch trial keeps frozen_stages 0 " \
           "and lr_ratio 1.0" in scratch_note(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    kinds = {True: 0, False: 0}
    for _ in range(60):
        trial = study.ask()
        DefineByRun(space)(trial)
        pretrained = trial.params.get("pretrained", False) and trial.params["backbone"] != "cnn3"
        kinds[pretrained] += 1
        assert pretrained == ("frozen_stages" in trial.params) == ("lr_ratio" in trial.params), trial.params
        study.tell(trial, 0.5)
    assert kinds[True] and kinds[False]
    # nothing to say when every trial is pretrained; a grid follows the rule too (and says so)
    only_pretrained = text.replace("backbone: {choice: [cnn3, resnet18]}", "backbone: {choice: [resnet18]}") \
        .replace("pretrained: {choice: [true, false]}", "pretrained: {choice: [true]}")
    assert scratch_note(load_space(write(tmp_path, only_pretrained))) is None
    grid = GOOD.replace("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {choice: [1.0e-3]}") \
        .replace("momentum: {uniform: [0.5, 0.99], when: {optimizer: [sgd, rmsprop]}}", "") \
        .replace("tune: {num_samples: 4", "tune: {algorithm: grid, num_samples: 1")
    assert scratch_note(load_space(write(tmp_path, grid))).startswith("frozen_stages: sampled only in pretrained")


TRUNCATED = Path(__file__).parents[1] / "spaces" / "truncated.yaml"

SCRATCH_GRID = """
name: scratchgrid
data:
  source: medmnist/pneumoniamnist.npz
params:
  epochs: 1
search:
  backbone: {choice: [cnn3, tf_efficientnet_lite0]}
  pretrained: {choice: [true, false]}
  frozen_stages: {choice: [0, 2]}
tune: {algorithm: grid, num_samples: 1}
"""


def test_grid_points_that_clipping_makes_identical_run_once():
    """spaces/truncated.yaml: frozen_stages is clipped to the stages each truncation keeps,
    so 6 of its 24 points repeat another, and the study runs the 18 distinct ones once."""
    from search.space.sampling import grid_note, grid_points, grid_size
    from trainables.models import backbone_stages, kept_stages

    space = load_space(TRUNCATED)
    points = grid_points(space)
    assert (points.listed, len(points.points), points.collapsed, grid_size(space)) == (24, 18, 6, 18)
    stages = backbone_stages(space.params["backbone"])
    # the repeats are exactly the listed points whose frozen depth is beyond what their truncation keeps
    beyond = [{"truncate_after": t, "frozen_stages": f} for t in range(1, 5) for f in range(6)
              if f > kept_stages(stages, t)]
    assert [raw for raw, _ in points.repeats] == beyond
    assert all(point == {**raw, "frozen_stages": kept_stages(stages, raw["truncate_after"])}
               for raw, point in points.repeats)
    # the distinct points: listing order, first occurrences, each depth up to what is kept
    assert points.points == [{"truncate_after": t, "frozen_stages": f} for t in range(1, 5)
                             for f in range(kept_stages(stages, t) + 1)]
    assert grid_note(space) == ("grid: 24 points listed, 18 distinct after clipping frozen_stages to the stages "
                                "each truncation keeps (6 duplicates run once)")


def test_grid_points_of_scratch_backbones_and_scratch_trials_collapse(tmp_path):
    """cnn3 is never pretrained and never frozen; lite0 from scratch is never frozen either."""
    from search.space.sampling import grid_note, grid_points, scratch_note

    space = load_space(write(tmp_path, SCRATCH_GRID))
    points = grid_points(space)
    assert points.points == [
        {"backbone": "cnn3"},
        {"backbone": "tf_efficientnet_lite0", "pretrained": True, "frozen_stages": 0},
        {"backbone": "tf_efficientnet_lite0", "pretrained": True, "frozen_stages": 2},
        {"backbone": "tf_efficientnet_lite0", "pretrained": False},
    ]
    assert (points.listed, points.collapsed) == (8, 4)
    assert [point for _, point in points.repeats] == [{"backbone": "cnn3"}] * 3 + \
        [{"backbone": "tf_efficientnet_lite0", "pretrained": False}]
    assert grid_note(space) == ("grid: 8 points listed, 4 distinct after keeping frozen_stages 0 in scratch trials "
                                "and leaving pretrained false for scratch backbones (4 duplicates run once)")
    assert scratch_note(space) is not None
    # nothing to say for a grid without repeats, or for TPE
    assert grid_note(load_space(write(tmp_path, SCRATCH_GRID.replace("cnn3, ", "").replace("true, false", "true")))) \
        is None
    assert grid_note(load_space(write(tmp_path, SCRATCH_GRID.replace("algorithm: grid", "algorithm: tpe")))) is None


def test_grid_searcher_asks_each_distinct_point_once_under_its_real_names(tmp_path):
    """Through Tune's OptunaSearch as the study builds it: the configs Tune gets (and the
    MLflow params are made from) and the Optuna trials (the dashboard's) hold the real
    parameter names and values, nothing else, once per distinct point; a pickled sampler
    (Tune pickles the searcher) walks the same points in the same order."""
    import optuna
    import ray.cloudpickle

    from search.records.storage import StudyFiles
    from search.space.sampling import DefineByRun, grid_points, sampler_for
    from search.study.optuna_search import StudySearch, optuna_storage
    from trainables.config import TrialConfig

    space = load_space(write(tmp_path, SCRATCH_GRID))
    files = StudyFiles(str(tmp_path / "studies"), "scratchgrid")
    storage = optuna_storage(files, space.path)
    searcher = StudySearch(DefineByRun(space), sampler_for(space), "val_auc", "max", storage=storage,
                           study_name="scratchgrid", fixed=dict(space.params), parent_run_id="a" * 32)
    Path(files.uri).mkdir(parents=True)
    configs = []
    for i in range(4):
        configs.append(searcher.suggest(f"t{i}"))
        TrialConfig.from_dict({**space.params, **configs[-1]})  # no key a trial does not know
        searcher.on_trial_complete(f"t{i}", {"val_auc": 0.5 + i / 10, "epoch": 1})
    distinct = grid_points(space).points
    assert sorted(configs, key=repr) == sorted(distinct, key=repr)
    study = optuna.load_study(study_name="scratchgrid", storage=storage.open())
    assert sorted((t.params for t in study.trials), key=repr) == sorted(distinct, key=repr)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {type(t.distributions.get("frozen_stages")).__name__ for t in study.trials} == \
        {"CategoricalDistribution", "NoneType"}  # the space's own distribution, as TPE would record it
    # a pickled sampler (Tune pickles the searcher) walks the same points in the same order
    sampler = ray.cloudpickle.loads(ray.cloudpickle.dumps(sampler_for(space)))
    memory = optuna.create_study(sampler=sampler)
    for i in range(4):
        trial = memory.ask()
        DefineByRun(space)(trial)
        if i < 3:  # GridSampler stops the study after its last point (raising outside optimize)
            memory.tell(trial, 0.5)
    assert [t.params for t in memory.trials] == [t.params for t in sorted(study.trials, key=lambda t: t.number)]


def test_seeds_and_retries_outside_what_numpy_optuna_and_ray_take_are_refused():
    """A negative seed used to pass the space and fail inside a trial (numpy) or the sampler (Optuna)."""
    from search.space import TuneSettings
    from trainables.config import ConfigError, TrialConfig

    with pytest.raises(ConfigError, match="'seed' must be in"):
        TrialConfig(seed=-1)
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967295\]"):
        TuneSettings(seed=2**32)
    with pytest.raises(ConfigError, match="max_failures must be >= 0"):
        TuneSettings(max_failures=-1)
