"""Turn a space's ``search`` section into an Optuna define-by-run space and sampler.

Define-by-run lets one parameter's range depend on another: ``when`` conditions
(momentum only for sgd/rmsprop) and the stage indices, whose valid range depends on the
backbone sampled before them (resnet18 has 5 feature stages, cnn3 has 3) and on the
truncation depth (frozen stages <= stages kept).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import optuna

from search.space import Distribution, Space, TuneSettings
from trainables.config import TrialConfig

STAGE_PARAMS = ("truncate_after", "frozen_stages")


@lru_cache(maxsize=None)
def _stages(backbone: str) -> int:
    from trainables.models import backbone_stages

    return backbone_stages(backbone)


def stage_limits(values: dict[str, Any]) -> dict[str, int]:
    """Largest valid ``truncate_after`` and ``frozen_stages`` given the backbone so far."""
    stages = _stages(str(values.get("backbone", TrialConfig.backbone)))
    from trainables.models import kept_stages

    return {"truncate_after": stages - 1, "frozen_stages": kept_stages(stages, values.get("truncate_after"))}


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


class DefineByRun:
    """The Optuna define-by-run function of a space (a class: Tune pickles its searcher).

    Returns the stage indices as clipped (Tune's OptunaSearch lets returned values
    override the raw suggestions); fixed params are added by the trainable. Values
    that cannot apply are not sampled: ``when`` conditions, ``pretrained`` for a scratch
    baseline, stage indices beyond what the sampled backbone (and truncation) keeps.
    """

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        from trainables.models.scratch import SCRATCH_MODELS

        values: dict[str, Any] = dict(self.space.params)
        for name in self.space.search_order():
            dist = self.space.search[name]
            if not dist.active(values):
                continue
            if name == "pretrained" and values.get("backbone") in SCRATCH_MODELS:
                continue  # scratch baselines have no ImageNet weights: pretrained stays false
            upper = stage_limits(values)[name] if name in STAGE_PARAMS else None
            values[name] = suggest(trial, name, dist, upper)
        # OptunaSearch overrides the raw suggestions with what is returned: the clipped stages.
        return {name: values[name] for name in STAGE_PARAMS if name in self.space.search and name in values}


def sampler_for(space: Space) -> optuna.samplers.BaseSampler:
    """Seeded TPE (multivariate, grouped, constant liar set explicitly), random or grid."""
    tune: TuneSettings = space.tune
    if tune.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=tune.seed)
    if tune.algorithm == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=tune.seed)
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
    """Number of grid points (the product of the value counts)."""
    return math.prod(len(values) for values in grid(space).values())
