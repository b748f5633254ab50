"""The study-level sections of a space: ``tune``, ``scheduler``, ``resources``, ``mlflow``, ``export``.

Each setting is declared once with its default, rule and one-line doc (the same
:func:`trainables.config.setting` as the trial and data settings), checked when built;
spaces/README.md's tables are generated from these declarations (:mod:`search.space.docs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Literal

from search.records.tags import SEARCH_METRICS
from trainables.config import Rule, check_settings, setting


def _metric_fix(metric: str) -> str:
    """Why a metric cannot be searched on, and the closest one that can."""
    if metric.startswith("test_"):
        return "selecting on the test split leaks it; use a validation metric such as val_auc"
    close = difflib.get_close_matches(metric, SEARCH_METRICS, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """How trials are proposed and judged: the ``tune`` section of a space.

    Each field's meaning, default and rule are declared with it
    (:func:`trainables.config.setting`) and printed in ``spaces/README.md``; construction
    checks them all, and fills in ``mode`` from the metric when it is ``None``.
    """

    algorithm: Literal["tpe", "random", "grid"] = setting(
        "tpe", doc="`tpe` (Optuna TPE: seeded, multivariate, constant liar), `random`, or `grid` (every "
                   "combination of the `choice` and `int` parameters; combinations that make the same trial "
                   "run once)")
    num_samples: int = setting(10, doc="number of trials (`grid`: repeats of the grid)", rule=">= 1")
    time_budget: str | None = setting(
        None, doc="wall time of the whole study, summed over every `--resume` of it; trials running when it "
                  "is spent end as stopped early by the time budget; null: no limit",
        rule=Rule("a duration such as 45m, 2h or 1h30m", _is_duration, "write e.g. 90m, 2h or 1h30m"))
    metric: str = setting(
        "val_auc", doc="what the search optimises: a validation metric (or train_loss), never a test one",
        rule=Rule(f"one of {', '.join(SEARCH_METRICS)}", lambda m: m in SEARCH_METRICS, _metric_fix))
    mode: Literal["max", "min"] | None = setting(
        None, doc="whether the metric is maximised or minimised; null: `min` for a metric ending in `loss`, else `max`")
    seed: int = setting(0, doc="seeds the sampler (the data split has its own seed in `data`)",
                        rule="0 <= x <= 4294967295")
    max_concurrent: int | None = setting(None, doc="cap on trials running at once; null: as many as resources allow",
                                         rule=">= 1", fix="use null to run as many trials as resources allow")
    max_failures: int = setting(1, doc="retries of a crashed trial (a lost node, a killed worker) from its last "
                                       "checkpoint; failures a retry would repeat (non-finite loss, a setting the "
                                       "backbone or data cannot take) are not retried", rule=">= 0")
    cv_folds: int | str = setting(
        1, doc="cross-validation: each trial trains K fold models on train + val (stratified, grouped by "
               "`group_column`; test never joins) and is ranked by the fold mean; `auto`: 5 folds when train + val "
               "hold at most 4000 images, else 1; 1: the single train/val split (`search run --cv K`)",
        rule=Rule("auto or an integer >= 1", lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
                  "e.g. 5 or auto"))
    startup_trials: int = setting(5, doc="random trials before TPE starts modelling", rule=">= 0")

    def __post_init__(self) -> None:
        # 0 for max_concurrent used to fall through `max_concurrent or ...` and mean "as resources allow".
        check_settings(self)
        if self.mode is None:
            object.__setattr__(self, "mode", "min" if self.metric.endswith("loss") else "max")

    @property
    def time_budget_s(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """Early stopping of weak trials on the epoch axis: the ``scheduler`` section of a space.

    ``asha``: a trial reaching epoch ``grace_period * reduction_factor**k`` continues only
    if its metric is in the top ``1/reduction_factor`` of trials that reached that rung;
    the last rung is the largest ``epochs`` a trial can have. The fields are documented
    where they are declared.
    """

    type: Literal["asha", "none"] = setting("asha", doc="`asha` stops weak trials early; `none` runs every trial "
                                                        "to the end")
    grace_period: int | str = setting(
        "auto", doc="epochs every trial runs before ASHA may stop it; `auto`: 2 when the validation split (train + "
                    "val under cross-validation) holds fewer than 1000 images, where one epoch ranks trials on "
                    "noise, else 1",
        rule=Rule("auto or an integer >= 1", lambda v: v == "auto" or (
            isinstance(v, int) and not isinstance(v, bool) and v >= 1), "e.g. auto, 1 or 2"))
    reduction_factor: float = setting(3.0, doc="ASHA keeps the top 1/`reduction_factor` of trials at each rung",
                                      rule="> 1")
    noise_margin: float | str = setting(
        0.0, doc="ASHA stops a trial at a rung only when its metric is more than this below the rung's cutoff; "
                 "`auto`: one standard error of the metric on the validation split (train + val under "
                 "cross-validation), e.g. 0.047 AUC on 78 images, 0.018 on 524; 0: Ray's rule",
        rule=Rule("auto or a number >= 0", lambda v: v == "auto" or (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0),
            "e.g. auto, 0 or 0.02"))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class ResourceSettings:
    """Per-trial resources: the ``resources`` section of a space (fields documented where declared)."""

    cpus: float = setting(1.0, doc="CPUs per trial", rule="> 0")
    gpus: float | None = setting(
        None, doc="GPUs per trial; a fraction such as 0.25 packs four trials on one GPU; null: one GPU when the "
                  "cluster has GPUs, else none (asking for GPUs on a cluster without any runs on CPUs, with a "
                  "message)", rule=">= 0")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class MlflowSettings:
    """Where trials are logged: the ``mlflow`` section of a space (fields documented where declared)."""

    experiment: str | None = setting(None, doc="MLflow experiment; null: the space name")
    tracking_uri: str | None = setting(
        None, doc="where trials are logged; `search run --tracking-uri`, then `$MLFLOW_TRACKING_URI`, take "
                  "precedence; null: `sqlite:///mlflow.db` in the working directory")

    def __post_init__(self) -> None:
        check_settings(self)


def _is_threshold(text: str) -> bool:
    from search.evaluation.threshold import parse_threshold

    try:
        parse_threshold(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """How the final model decides: the ``export`` section of a space (fields documented where declared).

    The threshold and the temperature are fitted on held-out predictions of the chosen
    trial (its validation split at the selected epoch), never on the test split;
    ``search best --export`` can override them with ``--threshold``, ``--no-calibrate`` and ``--tta``.
    """

    threshold: str = setting(
        "youden", doc="binary models: the decision threshold on the positive class's probability, chosen on "
                      "validation: `youden` (max sensitivity + specificity), `sensitivity:0.95` (the best "
                      "specificity at that sensitivity), `specificity:0.95`, or a fixed probability such as 0.5; "
                      "multi-class models use the argmax",
        rule=Rule("youden, sensitivity:S, specificity:S (S in (0, 1)) or a probability in (0, 1)",
                  lambda value: _is_threshold(value), "e.g. youden or sensitivity:0.95"))
    calibrate: bool = setting(True, doc="fit temperature scaling on validation and fold it into the exported "
                                        "graphs (AUC and argmax unchanged; probabilities calibrated)")
    tta: Literal["none", "flip", "dihedral"] = setting(
        "none", doc="test-time augmentation: the exported graphs average each member over `flip` (the image and "
                    "its left-right mirror) or `dihedral` (its 8 rotations and mirrors, for images with no "
                    "natural orientation such as histology patches); each view is one more forward pass")

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", str(self.threshold))
        check_settings(self)


def parse_duration(text: str) -> float:
    """``"90s"``, ``"45m"``, ``"2h"``, ``"1h30m"`` or a number of seconds -> seconds."""
    import re

    value = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"time budget {text!r} is not a duration; write e.g. 90m, 2h or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
