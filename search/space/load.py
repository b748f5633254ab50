"""Search-space YAML files: parse, validate, and resolve into typed settings.

A space is data, not code. Its sections:

- ``name`` / ``description``;
- ``data``: the :class:`trainables.config.DataConfig` keys (``source`` relative paths
  resolve under ``MEDTUNE_DATA``);
- ``params``: fixed trial parameters (:class:`trainables.config.TrialConfig` keys);
- ``search``: searched trial parameters, each a distribution with an optional
  ``default`` (used by ``search trial``) and an optional ``when`` condition;
- ``tune``: search algorithm, number of trials, time budget, metric, seed;
- ``scheduler``: ASHA early stopping (or none);
- ``resources``: CPUs and GPU fraction per trial;
- ``mlflow``: experiment name and tracking URI;
- ``export``: how the final model decides (decision threshold, temperature scaling).

Every mistake is reported as a :class:`SpaceError` naming the file, the key path, the
value and the fix, before any expensive work starts: a key given twice in one mapping, a
parameter both fixed and searched, an unknown key (with the real name of a common alias
such as ``learning_rate``), a value of the wrong type, or a range whose bound breaks a
rule (reported at ``search.<name>`` with that bound). ``spaces/README.md`` documents every
key; its tables are generated from the settings' declarations by ``search.space.docs``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from search.space.settings import (
    ExportSettings,
    MlflowSettings,
    ResourceSettings,
    SchedulerSettings,
    TuneSettings,
)
from trainables.config import (
    ConfigError,
    DataConfig,
    TrialConfig,
    coerce_value,
    field_types,
    suggest_trial_key,
)
from trainables.data import resolve_data_path

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint", "quniform")


class SpaceError(ValueError):
    """A mistake in a space file: where it is, what it is, and how to fix it."""

    def __init__(self, file: str | Path, key: str, problem: str, fix: str = "") -> None:
        self.file, self.key, self.problem, self.fix = str(file), key, problem, fix
        message = f"{file}: {key}: {problem}"
        super().__init__(message + (f"; {fix}" if fix else ""))


class DuplicateKeyError(ValueError):
    """One mapping of a YAML document gives the same key twice.

    Attributes:
        key: the dotted path of the key (``params.lr``; ``[i]`` for list items).
        lines: the 1-based lines of the first and the second occurrence.
        problem: ``is given twice (lines 7 and 9)``, the message without the key.
    """

    def __init__(self, key: str, lines: tuple[int, int]) -> None:
        self.key, self.lines = key, lines
        where = f"both on line {lines[0]}" if lines[0] == lines[1] else f"lines {lines[0]} and {lines[1]}"
        self.problem = f"is given twice ({where})"
        super().__init__(f"{key}: {self.problem}")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth.

    PyYAML keeps the last of two equal keys, so a space with ``lr: 1e-3`` and, further
    down, ``lr: 5.0`` would silently train at 5.0. Everything else is ``yaml.safe_load``:
    the same tags and types, and keys merged in with ``<<: *anchor`` may still be
    overridden (that is what a merge is for). Each node's dotted path is remembered while
    the document is built top-down, so the error names ``params.lr``, not just ``lr``.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        prefix = self._paths.get(id(node), "")
        for index, child in enumerate(node.value):
            self._paths.setdefault(id(child), f"{prefix}[{index}]")
        return super().construct_sequence(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            prefix = self._paths.get(id(node), "")
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                where = f"{prefix}.{key}" if prefix else str(key)
                if first is not None:
                    raise DuplicateKeyError(where, (first.start_mark.line + 1, key_node.start_mark.line + 1))
                seen[key] = key_node
                self._paths.setdefault(id(value_node), where)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`UniqueKeyLoader`).

    Raises:
        DuplicateKeyError: a mapping gives a key twice.
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One searched parameter: ``choice`` over values, or a numeric range.

    ``int`` and ``logint`` bounds are inclusive (unlike ``tune.randint``); ``quniform``
    rounds to multiples of ``q``.
    """

    kind: Literal["choice", "uniform", "loguniform", "int", "logint", "quniform"]
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    q: float | None = None
    default: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether the ``when`` condition holds for the values sampled so far."""
        return all(sampled.get(key) in values for key, values in self.when)

    def default_value(self) -> Any:
        """The explicit default, else the first choice or the range's (geometric) middle."""
        if self.default is not None:
            return self.default
        if self.kind == "choice":
            return self.values[0]
        low, high = float(self.low), float(self.high)
        if self.kind in ("loguniform", "logint"):
            middle = math.sqrt(low * high)
        else:
            middle = (low + high) / 2
        if self.kind in ("int", "logint"):
            return int(round(middle))
        if self.kind == "quniform":
            return round(middle / self.q) * self.q
        return middle


@dataclasses.dataclass(frozen=True)
class Space:
    """A parsed space file."""

    path: Path
    name: str
    description: str
    data: DataConfig
    params: dict[str, Any]
    search: dict[str, Distribution]
    raw: dict[str, Any]
    tune: TuneSettings = TuneSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    resources: ResourceSettings = ResourceSettings()
    mlflow: MlflowSettings = MlflowSettings()
    export: ExportSettings = ExportSettings()

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial may run (ASHA's ``max_t``)."""
        epochs = self.search.get("epochs")
        if epochs is not None:
            return int(max(epochs.values) if epochs.kind == "choice" else epochs.high)
        return int(self.params.get("epochs", TrialConfig.epochs))

    def search_order(self) -> list[str]:
        """Searched names in sampling order: the backbone, ``pretrained`` and the truncation
        depth first (other ranges depend on them), then the file's order."""
        first = [n for n in ("backbone", "pretrained", "truncate_after") if n in self.search
                 and not self.search[n].when]
        return first + [n for n in self.search if n not in first]

    @property
    def text(self) -> str:
        """The space file as the user wrote it (logged with the study)."""
        return self.path.read_text()

    def default_params(self) -> dict[str, Any]:
        """Fixed parameters plus every searched parameter's default."""
        return {**{k: d.default_value() for k, d in self.search.items()}, **self.params}

    def default_config(self) -> TrialConfig:
        """The trial config ``search trial`` runs."""
        return TrialConfig.from_dict(self.default_params())


def load_space(path: str | Path, overrides: dict[str, Any] | None = None) -> Space:
    """Read and validate a space file, applying ``key=value`` overrides.

    Overrides of trial parameters (``lr``) become fixed values; ``data.<key>`` overrides
    the data section.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(path, "<file>", "the space file does not exist", "pass the path of a YAML file, e.g. spaces/quickstart.yaml")
    try:
        raw = load_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise SpaceError(path, err.key, err.problem,
                         "keep one of them: YAML would silently use the last") from None
    except yaml.YAMLError as err:
        raise SpaceError(path, "<file>", f"is not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise SpaceError(path, "<file>", "must be a mapping with data/params/search sections")
    raw = dict(raw)
    _check_trial_sections(path, raw)  # the file as written: an override must not hide a conflict
    for key, value in (overrides or {}).items():
        if key.startswith("data."):
            raw.setdefault("data", {})
            raw["data"] = {**raw["data"], key[5:]: value}
        else:
            raw["params"] = {**(raw.get("params") or {}), key: value}
            raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k != key}
    return parse_space(path, raw)


TOP_LEVEL = ("name", "description", "data", "params", "search", "tune", "scheduler", "resources", "mlflow", "export")


def parse_space(path: Path, raw: dict[str, Any]) -> Space:
    """Validate the parsed YAML of a space (see the module docstring for the sections)."""
    _check_keys(path, "", raw, TOP_LEVEL)
    if "data" not in raw:
        raise SpaceError(path, "data", "is missing", "add a data section with at least `source: <file>`")
    data = _parse_data(path, raw["data"])
    _check_trial_sections(path, raw)
    params = dict(raw.get("params") or {})
    trial_keys = [f.name for f in dataclasses.fields(TrialConfig)]
    _check_keys(path, "params.", params, trial_keys, suggest=suggest_trial_key)
    search = {}
    for key, spec in (raw.get("search") or {}).items():
        _check_keys(path, "search.", {key: None}, trial_keys, suggest=suggest_trial_key)
        search[key] = _parse_distribution(path, f"search.{key}", spec)
    for section in ("params", "search"):
        if "cv_folds" in (params if section == "params" else search):
            raise SpaceError(path, f"{section}.cv_folds", "is a study setting (every trial of a study must be "
                             "scored on the same folds)", "set `tune: {cv_folds: 5}` (or auto), or pass --cv 5")
    _absolute_weights_paths(params, search)
    space = Space(
        path=path,
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        data=data,
        params=params,
        search=search,
        raw=raw,
        tune=build_section(path, "tune", raw.get("tune"), TuneSettings),
        scheduler=build_section(path, "scheduler", raw.get("scheduler"), SchedulerSettings),
        resources=build_section(path, "resources", raw.get("resources"), ResourceSettings),
        mlflow=build_section(path, "mlflow", raw.get("mlflow"), MlflowSettings),
        export=build_section(path, "export", raw.get("export"), ExportSettings),
    )
    _check_conditions(path, space)
    _check_candidates(path, space)
    return space


def _check_trial_sections(path: Path, raw: dict[str, Any]) -> None:
    """``params`` and ``search`` are mappings and never name the same parameter.

    A parameter in both would be run with its fixed value by ``search trial`` and searched
    by a study, so the two would silently disagree. ``--set`` overrides move a searched
    key to ``params`` on purpose; :func:`load_space` checks the file before applying them.
    """
    for section in ("params", "search"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise SpaceError(path, section, f"must be a mapping of parameter names, but got {raw[section]!r}",
                             "write one `name: value` per line under it")
    params, search = raw.get("params") or {}, raw.get("search") or {}
    for key in search:
        if key in params:
            raise SpaceError(path, f"search.{key}", f"is also fixed in params ({key}: {params[key]!r}), so "
                             "`search trial` would run the fixed value and a study would search it",
                             f"keep '{key}' in one section: params to fix it, search to search it")


def _absolute_weights_paths(params: dict[str, Any], search: dict[str, Distribution]) -> None:
    """Make ``pretrained`` weights-file paths absolute (from the working directory).

    Ray Tune runs each trial in its own folder, so a relative path that the checks before
    Ray found would be missing inside every trial.
    """
    from trainables.models.backbone import pretrained_mode

    def absolute(value: Any) -> Any:
        mode = pretrained_mode(value) if isinstance(value, str) else None
        return str(mode.resolve()) if isinstance(mode, Path) else value

    if "pretrained" in params:
        params["pretrained"] = absolute(params["pretrained"])
    dist = search.get("pretrained")
    if dist is not None and dist.kind == "choice":
        search["pretrained"] = dataclasses.replace(dist, values=tuple(absolute(v) for v in dist.values),
                                                   default=absolute(dist.default))


def candidates(dist: Distribution) -> list[Any]:
    """The values a distribution can produce at its edges: every choice, both bounds."""
    if dist.kind == "choice":
        return list(dist.values)
    if dist.kind in ("int", "logint"):
        return [int(dist.low), int(dist.high)]
    return [dist.low, dist.high]


def _check_candidates(path: Path, space: Space) -> None:
    """Every choice and both ends of every range make a valid trial config, and so do the defaults.

    Catches a searched ``dropout: {uniform: [0, 1.5]}`` or ``optimizer: {choice: [adamm]}``
    before Ray starts instead of as failed trials. The searched values are checked first,
    each with the other parameters at their defaults, and an error is reported there only
    when it concerns that parameter: ``epochs: {int: [-2, 3]}`` is reported at
    ``search.epochs`` with -2, not as its midpoint 0 in ``params``, and an error caused by
    another parameter's default is left for that parameter's own turn. The defaults
    together (what ``search trial`` runs) are checked last; their error points at the
    searched parameter involved, else at ``params``.
    """
    base = space.default_params()
    for name, dist in space.search.items():
        for value in candidates(dist):
            try:
                TrialConfig.from_dict({**base, name: list(value) if isinstance(value, tuple) else value})
            except ConfigError as err:
                if name in err.keys:
                    raise SpaceError(path, f"search.{name}", str(err)) from None
            except ValueError as err:  # a check that names no key: the value under test broke it
                raise SpaceError(path, f"search.{name}", str(err)) from None
    try:
        space.default_config()
    except ConfigError as err:
        searched = [key for key in err.keys if key in space.search]
        raise SpaceError(path, f"search.{searched[0]}" if searched else "params", str(err)) from None
    except ValueError as err:
        raise SpaceError(path, "params", str(err)) from None


def _parse_data(path: Path, section: Any) -> DataConfig:
    if not isinstance(section, dict) or "source" not in section:
        raise SpaceError(path, "data", "must be a mapping with a `source` key", "e.g. `source: medmnist/pneumoniamnist.npz`")
    values = {**section, "source": str(resolve_data_path(str(section["source"])))}
    return build_section(path, "data", values, DataConfig)  # construction checks every data-free rule


def build_section(path: Path, name: str, section: Any, cls: type) -> Any:
    """Build the dataclass ``cls`` from a YAML mapping, coercing scalars by field type.

    Unknown keys are refused with the closest valid key; values of the wrong kind or
    outside a ``Literal`` field's choices are refused with the key path, the value and the
    expected type. Coercion is :func:`trainables.config.coerce_value`, the one that
    ``TrialConfig.from_dict`` uses, so ``true`` is never read as 1 nor 1 as true. The
    schema's rules are checked by constructing ``cls``; a broken one is reported at
    ``<name>.<key>`` of the setting it belongs to (the first one, for a rule between two).
    """
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise SpaceError(path, name, f"must be a mapping, but got {section!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = field_types(cls)
    _check_keys(path, f"{name}.", section, fields)
    values = {}
    for key, value in section.items():
        kind = str(fields[key].type)
        try:
            values[key] = coerce_value(value, hints[key])
        except (TypeError, ValueError):
            raise SpaceError(path, f"{name}.{key}", f"expects {kind}, but got {value!r}") from None
    try:
        return cls(**values)  # checks every rule of the schema (``__post_init__``)
    except ConfigError as err:
        raise SpaceError(path, f"{name}.{err.keys[0]}", str(err)) from None
    except ValueError as err:
        raise SpaceError(path, name, str(err)) from None


def _parse_distribution(path: Path, key: str, spec: Any) -> Distribution:
    """``{choice: [..]}``, ``{loguniform: [low, high]}``, ``{quniform: [low, high, q]}``..."""
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise SpaceError(path, key, f"must be a distribution, but got {spec!r}",
                         "write e.g. `{loguniform: [1e-4, 1e-2]}` or `{choice: [adam, sgd]}`, or move it to params")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS and k not in ("default", "when")]
    when = _parse_when(path, f"{key}.when", spec.get("when"))
    if unknown or len(kinds) != 1:
        bad = unknown[0] if unknown else ", ".join(kinds) or "(none)"
        close = difflib.get_close_matches(bad, DISTRIBUTIONS, n=1)
        raise SpaceError(path, key, f"needs exactly one distribution of {', '.join(DISTRIBUTIONS)}, but got {bad!r}",
                         f"did you mean '{close[0]}'?" if close else "")
    kind = kinds[0]
    args = spec[kind]
    default = spec.get("default")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(path, key, f"choice needs a non-empty list, but got {args!r}")
        if default is not None and default not in args:
            raise SpaceError(path, f"{key}.default", f"{default!r} is not one of the choices {args}")
        return Distribution("choice", values=tuple(_hashable(v) for v in args), default=_hashable(default), when=when)
    expected = 3 if kind == "quniform" else 2
    if not isinstance(args, list) or len(args) != expected:
        shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
        raise SpaceError(path, key, f"{kind} needs {shape}, but got {args!r}")
    try:
        numbers = [float(a) for a in args]
    except (TypeError, ValueError):
        raise SpaceError(path, key, f"{kind} bounds must be numbers, but got {args!r}") from None
    low, high = numbers[0], numbers[1]
    if not low <= high:
        raise SpaceError(path, key, f"`low <= high` must hold, but got (low={args[0]}, high={args[1]})", "swap the bounds")
    if kind in ("loguniform", "logint") and low <= 0:
        raise SpaceError(path, key, f"{kind} needs low > 0, but got low={args[0]}", "use uniform/int for ranges that include 0")
    if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise SpaceError(path, key, f"int bounds must be integers, but got {args!r}")
    q = numbers[2] if kind == "quniform" else None
    if q is not None and q <= 0:
        raise SpaceError(path, key, f"quniform needs q > 0, but got q={args[2]}")
    if default is not None:
        try:
            default_num = float(default)
        except (TypeError, ValueError):
            raise SpaceError(path, f"{key}.default", f"must be a number, but got {default!r}") from None
        if not low <= default_num <= high:
            raise SpaceError(path, f"{key}.default", f"{default!r} lies outside [{args[0]}, {args[1]}]")
        default = int(default_num) if kind in ("int", "logint") else default_num
    return Distribution(kind, low=low, high=high, q=q, default=default, when=when)


def _parse_when(path: Path, key: str, spec: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``when: {optimizer: [sgd, rmsprop]}`` -> ``(("optimizer", ("sgd", "rmsprop")),)``."""
    if spec is None:
        return ()
    if not isinstance(spec, dict) or not spec:
        raise SpaceError(path, key, f"must map parameters to allowed values, but got {spec!r}",
                         "e.g. `when: {optimizer: [sgd, rmsprop]}`")
    return tuple((str(k), tuple(_hashable(x) for x in (v if isinstance(v, list) else [v]))) for k, v in spec.items())


def _check_conditions(path: Path, space: Space) -> None:
    """A condition may only name a parameter searched before it (define-by-run order)."""
    seen: list[str] = []
    for name in space.search_order():
        dist = space.search[name]
        for key, _ in dist.when:
            if key not in seen:
                where = "is searched after it" if key in space.search else "is not searched"
                raise SpaceError(path, f"search.{name}.when.{key}", f"'{key}' {where}",
                                 "conditions may only name parameters listed earlier in `search`")
        seen.append(name)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_keys(path: Path, prefix: str, section: dict[str, Any], valid: Any,
                suggest: Callable[[str], str | None] | None = None) -> None:
    """Refuse a key that is not in ``valid``, suggesting the closest valid one.

    ``suggest`` replaces plain spelling distance (trial parameters use
    :func:`trainables.config.suggest_trial_key`, which knows aliases such as
    ``learning_rate``).
    """
    for key in section:
        if key not in valid:
            close = suggest(key) if suggest else next(iter(difflib.get_close_matches(str(key), list(valid), n=1)), None)
            fix = f"did you mean '{close}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
            raise SpaceError(path, f"{prefix}{key}", "is not a known key", fix)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "head_hidden=[256]"]`` -> ``{"lr": "1e-3", "head_hidden": [256]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, but got {pair!r}; e.g. --set epochs=2")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out
