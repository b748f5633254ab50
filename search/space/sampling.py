"""Turn a space's ``search`` section into an Optuna define-by-run space and sampler.

Define-by-run lets one parameter's range depend on another: ``when`` conditions
(momentum only for sgd/rmsprop) and the stage indices, whose valid range depends on the
backbone sampled before them (resnet18 has 5 feature stages, cnn3 has 3) and on the
truncation depth (frozen stages <= stages kept).

A grid applies the same rules to each point it lists (:func:`grid_points`), so points that
become the same trial (``frozen_stages`` 4 and 5 once truncation keeps 4 stages, any
``frozen_stages`` in a scratch trial) run once: the grid sampler walks the distinct points.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import optuna

from search.space import Distribution, Space, TuneSettings
from trainables.config import TrialConfig

STAGE_PARAMS = ("truncate_after", "frozen_stages")
# What only a pretrained backbone gives meaning to: freezing random layers or slowing their
# learning rate is not a configuration anyone means.
PRETRAINED_ONLY = ("frozen_stages", "lr_ratio")


def wants_weights(pretrained: Any) -> bool:
    """Whether a ``pretrained`` value asks for weights (``false`` and ``none`` do not)."""
    return pretrained is not False and str(pretrained).lower() not in ("false", "none")


def is_pretrained(values: dict[str, Any]) -> bool:
    """Whether the trial sampled so far starts from pretrained weights (a scratch CNN never does)."""
    from trainables.models.scratch import SCRATCH_MODELS

    if values.get("backbone", TrialConfig.backbone) in SCRATCH_MODELS:
        return False
    return wants_weights(values.get("pretrained", TrialConfig.pretrained))


def skipped_for_scratch(space: Space) -> list[str]:
    """The searched settings every algorithm (grids too) leaves at their defaults in scratch trials."""
    return [name for name in PRETRAINED_ONLY if name in space.search]


@lru_cache(maxsize=None)
def _stages(backbone: str) -> int:
    from trainables.models import backbone_stages

    return backbone_stages(backbone)


def stage_limits(values: dict[str, Any]) -> dict[str, int]:
    """Largest valid ``truncate_after`` and ``frozen_stages`` given the backbone so far."""
    stages = _stages(str(values.get("backbone", TrialConfig.backbone)))
    from trainables.models import kept_stages

    return {"truncate_after": stages - 1, "frozen_stages": kept_stages(stages, values.get("truncate_after"))}


def scratch_note(space: Space) -> str | None:
    """The line a study prints when it leaves a searched ``frozen_stages``/``lr_ratio`` out of scratch trials."""
    from trainables.models.scratch import SCRATCH_MODELS

    names = skipped_for_scratch(space)
    backbones = space.search["backbone"].values if "backbone" in space.search and space.search["backbone"].kind \
        == "choice" else (space.params.get("backbone", TrialConfig.backbone),)
    pretrained = space.search["pretrained"].values if "pretrained" in space.search else \
        (space.params.get("pretrained", TrialConfig.pretrained),)
    if not names or (not any(b in SCRATCH_MODELS for b in backbones) and all(wants_weights(p) for p in pretrained)):
        return None
    kept = " and ".join(f"{name} {getattr(TrialConfig, name)}" for name in names)
    return (f"{' and '.join(names)}: sampled only in pretrained trials; a scratch trial keeps {kept} (freezing "
            "random layers is not a configuration to search)")


def grid_note(space: Space) -> str | None:
    """The line a grid study prints when some of the points it lists are the same trial (None if none are).

    ``grid: 24 points listed, 18 distinct after clipping frozen_stages to the stages each
    truncation keeps (6 duplicates run once)``.
    """
    if space.tune.algorithm != "grid":
        return None
    points = grid_points(space)
    if not points.collapsed:
        return None
    why = list(points.reasons)
    reasons = why[0] if len(why) == 1 else ", ".join(why[:-1]) + " and " + why[-1]
    return (f"grid: {points.listed} points listed, {len(points.points)} distinct after {reasons} "
            f"({points.collapsed} duplicate{'s' if points.collapsed != 1 else ''} run once)")


def suggest(trial: optuna.Trial, name: str, dist: Distribution, upper: int | None = None) -> Any:
    """Ask Optuna for one value of ``dist``; ``upper`` caps an integer value (range or choice).

    A stage index beyond what the sampled backbone has (``truncate_after: {choice: [2, 5]}``
    or ``{int: [0, 5]}`` with cnn3's 3 stages) becomes its deepest valid stage; null stays null.
    """
    value = _suggest(trial, name, dist, upper)
    if upper is not None and isinstance(value, int) and not isinstance(value, bool):
        return min(value, upper)  # GridSampler returns its grid value even outside the range asked for
    return value


def _suggest(trial: optuna.Trial, name: str, dist: Distribution, upper: int | None) -> Any:
    if dist.kind == "choice":
        # Optuna's categorical values must be None/bool/int/float/str: index lists (head widths).
        if any(isinstance(v, tuple) for v in dist.values):
            labels = [str(list(v)) if isinstance(v, tuple) else str(v) for v in dist.values]
            return dist.values[labels.index(trial.suggest_categorical(name, labels))]
        return trial.suggest_categorical(name, list(dist.values))
    low, high = dist.low, dist.high
    if dist.kind in ("int", "logint"):
        high_i = int(high) if upper is None else min(int(high), upper)
        return trial.suggest_int(name, int(low), max(int(low), high_i), log=dist.kind == "logint")
    if dist.kind == "quniform":
        return trial.suggest_float(name, low, high, step=dist.q)
    return trial.suggest_float(name, low, high, log=dist.kind == "loguniform")


# Why a searched value of a trial is not the one listed (see _walk): the rule that changed it.
WHEN, SCRATCH_BACKBONE, NOT_PRETRAINED = "when", "scratch backbone", "not pretrained"


def _walk(space: Space, pick: Callable[[str, Distribution, int | None], Any], pretrained_only: Any = (),
          skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """The searched values of one trial, ``pick(name, dist, upper)`` asked in sampling order
    for each value that applies (the rules :class:`DefineByRun` lists); ``skipped`` collects
    the names left out, with the rule (``WHEN``, ``SCRATCH_BACKBONE``, ``NOT_PRETRAINED``)."""
    from trainables.models.scratch import SCRATCH_MODELS

    values: dict[str, Any] = dict(space.params)
    searched: dict[str, Any] = {}
    for name in space.search_order():
        dist = space.search[name]
        why = None
        if not dist.active(values):
            why = WHEN
        elif name == "pretrained" and values.get("backbone") in SCRATCH_MODELS:
            why = SCRATCH_BACKBONE  # scratch baselines have no ImageNet weights: pretrained stays false
        elif name in pretrained_only and not is_pretrained(values):
            why = NOT_PRETRAINED  # nothing pretrained to freeze or to fine-tune slowly: TrialConfig's defaults
        if why is not None:
            if skipped is not None:
                skipped[name] = why
            continue
        upper = stage_limits(values)[name] if name in STAGE_PARAMS else None
        values[name] = searched[name] = pick(name, dist, upper)
    return searched


class DefineByRun:
    """The Optuna define-by-run function of a space (a class: Tune pickles its searcher).

    Returns the stage indices as clipped (Tune's OptunaSearch lets returned values
    override the raw suggestions); fixed params are added by the trainable. Values
    that cannot apply are not sampled: ``when`` conditions, ``pretrained`` for a scratch
    baseline, stage indices beyond what the sampled backbone (and truncation) keeps, and
    ``frozen_stages`` and ``lr_ratio`` for a trial that is not pretrained. A grid applies
    the same rules: its sampler (:class:`DistinctGridSampler`) answers each suggestion
    from one of the distinct points :func:`grid_points` enumerates with them, so the
    Optuna trial holds the real parameter names and values.
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        self.pretrained_only = set(skipped_for_scratch(space))

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        # (a searcher pickled before a rule existed has no `pretrained_only`, or an empty one
        # for a grid: its study keeps sampling frozen_stages/lr_ratio in scratch trials)
        values = _walk(self.space, lambda name, dist, upper: suggest(trial, name, dist, upper),
                       getattr(self, "pretrained_only", ()))
        # OptunaSearch overrides the raw suggestions with what is returned: the clipped stages.
        return {name: values[name] for name in STAGE_PARAMS if name in values}


@dataclass(frozen=True)
class GridPoints:
    """The distinct trials of a grid.

    Attributes:
        points: each distinct trial's searched values (name -> value, in sampling order,
            only the names that apply), in the order their first listed point comes.
        listed: how many points the grid lists (the product of the value counts).
        repeats: ``(listed point, the distinct point it is)`` for each listed point that
            repeats an earlier one (a listed point holds every searched name, as listed).
        reasons: what made them repeats, as :func:`grid_note` says it.
    """

    points: list[dict[str, Any]]
    listed: int
    repeats: list[tuple[dict[str, Any], dict[str, Any]]]
    reasons: tuple[str, ...]

    @property
    def collapsed(self) -> int:
        """How many listed points repeat an earlier one (run once, as that one)."""
        return len(self.repeats)


def _key(point: dict[str, Any]) -> tuple:
    # the type too: 1, 1.0 and True are equal (and hash alike) in Python, not as settings
    return tuple((name, type(value).__name__, value) for name, value in sorted(point.items()))


def grid_points(space: Space) -> GridPoints:
    """Every point the grid lists, as the trial :class:`DefineByRun` makes of it, once.

    The listed points are the Cartesian product of the search section's values (each
    parameter in the file's order, the first varying slowest); each becomes its trial's
    values by the sampling rules: a ``when`` that does not hold and ``pretrained`` for a
    scratch backbone leave the name out, ``frozen_stages``/``lr_ratio`` are left out
    (TrialConfig's 0 and 1.0) in a trial that is not pretrained, and stage indices are
    clipped to the stages the backbone has and the truncation keeps. A point equal to an
    earlier one is dropped.

    Raises:
        ValueError: a parameter that is neither ``choice`` nor ``int`` (see :func:`grid`).
    """
    grid(space)  # the same refusal for a range that cannot be gridded
    names = list(space.search)
    listed = [dist.values if dist.kind == "choice" else tuple(range(int(dist.low), int(dist.high) + 1))
              for dist in space.search.values()]
    pretrained_only = set(skipped_for_scratch(space))
    first: dict[tuple, dict[str, Any]] = {}  # trial key -> its first listed point
    first_clipped: dict[tuple, dict[str, str]] = {}  # and what clipped it
    points: list[dict[str, Any]] = []
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = []
    reasons: dict[str, None] = {}
    count = 0
    for combo in itertools.product(*listed):
        count += 1
        raw = dict(zip(names, combo))
        skipped: dict[str, str] = {}
        clipped: dict[str, str] = {}

        def pick(name: str, dist: Distribution, upper: int | None, raw: dict = raw, clipped: dict = clipped) -> Any:
            value = raw[name]
            if upper is not None and isinstance(value, int) and not isinstance(value, bool) and value > upper:
                backbone = raw.get("backbone", space.params.get("backbone", TrialConfig.backbone))
                clipped[name] = "truncation" if name == "frozen_stages" and upper < _stages(str(backbone)) \
                    else "backbone"
                return upper
            return value

        point = _walk(space, pick, pretrained_only, skipped)
        key = _key(point)
        if key not in first:
            first[key], first_clipped[key] = raw, clipped
            points.append(point)
            continue
        earlier = first[key]
        repeats.append((raw, point))
        for name in names:  # what made this point the earlier one: the rules that changed a listed value
            if raw[name] == earlier[name] and type(raw[name]) is type(earlier[name]):
                continue
            reasons[_reason(name, skipped.get(name) or clipped.get(name) or first_clipped[key].get(name))] = None
    return GridPoints(points, count, repeats, tuple(reasons))


def _reason(name: str, why: str | None) -> str:
    """How a collapse happened, as :func:`grid_note` says it."""
    if why == WHEN:
        return f"leaving out {name} where its `when` does not hold"
    if why == SCRATCH_BACKBONE:
        return "leaving pretrained false for scratch backbones"
    if why == NOT_PRETRAINED:
        return f"keeping {name} {getattr(TrialConfig, name)} in scratch trials"
    if why == "truncation":
        return f"clipping {name} to the stages each truncation keeps"
    return f"clipping {name} to the stages each backbone has"


# The key of GridSampler's one-dimensional grid (the index of a distinct point); no parameter.
GRID_INDEX = "grid_point"


class DistinctGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the distinct points of a grid (:func:`grid_points`).

    Its grid is one index per point (kept as the trial's ``grid_id`` system attribute, as
    GridSampler keeps it; it is no parameter): each suggestion DefineByRun makes is
    answered with that point's value, so the Optuna trial's params (and the dashboard,
    and Tune's config) hold the real names and values, and nothing else.
    """

    def __init__(self, points: list[dict[str, Any]], seed: int | None = None) -> None:
        super().__init__({GRID_INDEX: list(range(len(points)))}, seed=seed)
        # Optuna's categorical values must be None/bool/int/float/str: index lists as their labels (see _suggest)
        self._points = [{name: str(list(v)) if isinstance(v, tuple) else v for name, v in point.items()}
                        for point in points]

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        if "grid_id" not in trial.system_attrs:
            return super().sample_independent(study, trial, param_name, param_distribution)  # its error
        # the grid is the one parameter GRID_INDEX over 0..n-1 in order, so grid id i is point i
        point = self._points[trial.system_attrs["grid_id"]]
        if param_name not in point:
            raise ValueError(f"grid point {point} has no {param_name}: the space changed since the grid was made")
        return point[param_name]


def sampler_for(space: Space) -> optuna.samplers.BaseSampler:
    """Seeded TPE (multivariate, grouped, constant liar set explicitly), random or grid."""
    tune: TuneSettings = space.tune
    if tune.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    if tune.algorithm == "grid":
        return DistinctGridSampler(grid_points(space).points, seed=tune.seed)
    return optuna.samplers.TPESampler(
        seed=tune.seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=tune.startup_trials,
    )


def grid(space: Space) -> dict[str, list[Any]]:
    """Grid values per parameter; only ``choice`` and ``int`` parameters can be gridded."""
    values: dict[str, list[Any]] = {}
    for name, dist in space.search.items():
        if dist.kind == "choice":
            values[name] = [str(list(v)) if isinstance(v, tuple) else v for v in dist.values]
        elif dist.kind == "int":
            values[name] = list(range(int(dist.low), int(dist.high) + 1))
        else:
            raise ValueError(f"search.{name}: a grid search needs choice or int parameters, but got {dist.kind}; "
                             f"list the values with `choice: [...]` or use algorithm: tpe/random")
    return values


def grid_size(space: Space) -> int:
    """Number of distinct grid points: the trials of one repeat (``num_samples``) of the grid."""
    return len(grid_points(space).points)
