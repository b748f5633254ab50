"""Search spaces: a YAML file in, typed and checked settings out.

- :mod:`~search.space.load`: parse and validate a space file (:func:`load_space`);
- :mod:`~search.space.settings`: the ``tune``/``scheduler``/``resources``/``mlflow`` sections;
- :mod:`~search.space.preflight`: checks that need more than the YAML, before Ray starts;
- :mod:`~search.space.sampling`: define-by-run sampling for Optuna, grids, stage clipping;
- :mod:`~search.space.docs`: spaces/README.md's key tables, generated from the settings.
"""

from search.space.load import (
    DISTRIBUTIONS,
    Distribution,
    DuplicateKeyError,
    Space,
    SpaceError,
    build_section,
    candidates,
    load_space,
    load_yaml,
    parse_overrides,
    parse_space,
)
from search.space.settings import (
    SEARCH_METRICS,
    ExportSettings,
    MlflowSettings,
    ResourceSettings,
    SchedulerSettings,
    TuneSettings,
    parse_duration,
)

__all__ = ["DISTRIBUTIONS", "SEARCH_METRICS", "Distribution", "DuplicateKeyError", "ExportSettings", "MlflowSettings",
           "ResourceSettings", "SchedulerSettings", "Space", "SpaceError", "TuneSettings", "build_section",
           "candidates", "load_space", "load_yaml", "parse_duration", "parse_overrides", "parse_space"]
