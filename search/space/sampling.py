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
    """The searched settings TPE and random search leave at their defaults in scratch trials."""
    return [name for name in PRETRAINED_ONLY if name in space.search] if space.tune.algorithm != "grid" else []


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
    baseline, stage indices beyond what the sampled backbone (and truncation) keeps, and
    (TPE and random search) ``frozen_stages`` and ``lr_ratio`` for a trial that is not
    pretrained. A grid keeps every point it lists.
    """

    def __init__(self, space: Space) -> None:
        self.space = space
        self.pretrained_only = set(skipped_for_scratch(space))

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        from trainables.models.scratch import SCRATCH_MODELS

        values: dict[str, Any] = dict(self.space.params)
        for name in self.space.search_order():
            dist = self.space.search[name]
            if not dist.active(values):
                continue
            if name == "pretrained" and values.get("backbone") in SCRATCH_MODELS:
                continue  # scratch baselines have no ImageNet weights: pretrained stays false
            # (a searcher pickled before this rule existed has no `pretrained_only`: its study keeps sampling them)
            if name in getattr(self, "pretrained_only", ()) and not is_pretrained(values):
                continue  # nothing pretrained to freeze or to fine-tune slowly: TrialConfig's defaults
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
