"""Search-space YAML files: parse, validate, and resolve into typed settings.

A space is data, not code. Its sections:

- ``name`` / ``description``;
- ``data``: the :class:`trainables.config.DataConfig` keys (``source`` relative paths
  resolve under ``MEDTUNE_DATA``);
- ``params``: fixed trial parameters (:class:`trainables.config.TrialConfig` keys);
- ``search``: searched trial parameters, each a distribution with an optional
  ``default`` (used by ``search trial``).

Every mistake is reported as a :class:`SpaceError` naming the file, the key path, the
value and the fix, before any expensive work starts. ``spaces/README.md`` documents every
key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml

from trainables.config import DataConfig, TrialConfig
from trainables.data import resolve_data_path

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint", "quniform")


class SpaceError(ValueError):
    """A mistake in a space file: where it is, what it is, and how to fix it."""

    def __init__(self, file: str | Path, key: str, problem: str, fix: str = "") -> None:
        self.file, self.key, self.problem, self.fix = str(file), key, problem, fix
        message = f"{file}: {key}: {problem}"
        super().__init__(message + (f"; {fix}" if fix else ""))


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
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpaceError(path, "<file>", f"is not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise SpaceError(path, "<file>", "must be a mapping with data/params/search sections")
    raw = dict(raw)
    for key, value in (overrides or {}).items():
        if key.startswith("data."):
            raw.setdefault("data", {})
            raw["data"] = {**raw["data"], key[5:]: value}
        else:
            raw["params"] = {**(raw.get("params") or {}), key: value}
            raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k != key}
    return parse_space(path, raw)


TOP_LEVEL = ("name", "description", "data", "params", "search")


def parse_space(path: Path, raw: dict[str, Any], extra_sections: tuple[str, ...] = ()) -> Space:
    """Validate the parsed YAML of a space (see the module docstring for the sections)."""
    _check_keys(path, "", raw, TOP_LEVEL + extra_sections)
    if "data" not in raw:
        raise SpaceError(path, "data", "is missing", "add a data section with at least `source: <file>`")
    data = _parse_data(path, raw["data"])
    params = dict(raw.get("params") or {})
    trial_keys = [f.name for f in dataclasses.fields(TrialConfig)]
    for key in params:
        _check_keys(path, "params.", {key: None}, trial_keys)
    search = {}
    for key, spec in (raw.get("search") or {}).items():
        _check_keys(path, "search.", {key: None}, trial_keys)
        search[key] = _parse_distribution(path, f"search.{key}", spec)
    space = Space(
        path=path,
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        data=data,
        params=params,
        search=search,
        raw=raw,
    )
    try:
        space.default_config()
    except ValueError as err:
        raise SpaceError(path, "params", str(err)) from None
    return space


def _parse_data(path: Path, section: Any) -> DataConfig:
    if not isinstance(section, dict) or "source" not in section:
        raise SpaceError(path, "data", "must be a mapping with a `source` key", "e.g. `source: medmnist/pneumoniamnist.npz`")
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    _check_keys(path, "data.", section, fields)
    values = dict(section)
    values["source"] = str(resolve_data_path(str(section["source"])))
    for key, value in values.items():
        kind = str(fields[key].type)
        try:
            if value is None:
                continue
            if kind.startswith("float"):
                values[key] = float(value)
            elif kind.startswith("int") or kind.startswith("Literal[1, 3]"):
                values[key] = int(value)
            elif kind == "bool" and not isinstance(value, bool):
                raise ValueError
        except (TypeError, ValueError):
            raise SpaceError(path, f"data.{key}", f"expects {kind}, but got {value!r}") from None
    return DataConfig(**values)


def _parse_distribution(path: Path, key: str, spec: Any) -> Distribution:
    """``{choice: [..]}``, ``{loguniform: [low, high]}``, ``{quniform: [low, high, q]}``..."""
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise SpaceError(path, key, f"must be a distribution, but got {spec!r}",
                         "write e.g. `{loguniform: [1e-4, 1e-2]}` or `{choice: [adam, sgd]}`, or move it to params")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS and k != "default"]
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
        return Distribution("choice", values=tuple(_hashable(v) for v in args), default=_hashable(default))
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
    return Distribution(kind, low=low, high=high, q=q, default=default)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_keys(path: Path, prefix: str, section: dict[str, Any], valid: Any) -> None:
    for key in section:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
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
