"""The key tables of ``spaces/README.md``, generated from the settings' declarations.

Every setting is declared once, with :func:`trainables.config.setting`: its type, its
default, its rules and its one-line doc. This module prints them as one Markdown table
per space section (``key | default | allowed | meaning``) and keeps the README's tables
in step: each table sits between two marker comments,

    <!-- settings:trial -->
    | key | default | allowed | meaning |
    ...
    <!-- /settings:trial -->

and ``python -m search.space.docs --write`` rewrites what lies between them, leaving
the hand-written prose around them as it is (``--check`` only reports a stale table;
without either flag, the tables are printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from search.space import (
    ExportSettings,
    MlflowSettings,
    ResourceSettings,
    SchedulerSettings,
    TuneSettings,
)
from trainables.config import (
    DataConfig,
    TrialConfig,
    field_doc,
    field_rules,
    field_types,
)

# Section name in the README markers -> the settings dataclass it documents.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "trial": TrialConfig,
    "tune": TuneSettings,
    "scheduler": SchedulerSettings,
    "resources": ResourceSettings,
    "mlflow": MlflowSettings,
    "export": ExportSettings,
}

README = Path(__file__).resolve().parents[2] / "spaces" / "README.md"
WRITE_COMMAND = "python -m search.space.docs --write"

_BLOCK = re.compile(r"(<!-- settings:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /settings:(?P=name) -->)",
                    re.DOTALL)


def _yaml(value: Any) -> str:
    """A default as it is written in a space file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value) if isinstance(value, str) else repr(value)


def _kind(hint: Any) -> str:
    """A field type in words: ``int``, ``list of int``, ``one of `a`, `b```, ``bool or string``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        literals = [v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)]
        others = [_kind(m) for m in members if typing.get_origin(m) is not Literal]
        words = ([f"one of {', '.join(f'`{_yaml(v)}`' for v in literals)}"] if literals else []) + others
        return " or ".join(words)
    if origin is Literal:
        return f"one of {', '.join(f'`{_yaml(v)}`' for v in typing.get_args(hint))}"
    if origin is tuple:
        args = typing.get_args(hint)
        return f"list of {_kind(args[0])}" if args else "list"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(hint, getattr(hint, "__name__", str(hint)))


def allowed(cls: type, name: str) -> str:
    """What a field accepts: ``int >= 1``, ``null or float in [0, 1)``, ``one of `a`, `b```."""
    hint = field_types(cls)[name]
    optional = type(None) in typing.get_args(hint)
    text = _kind(hint)  # a union's words leave out None: "null or" leads instead
    rules = [rule.text for rule in field_rules(cls, name)]
    if rules:
        joiner = " " if re.match(r"[<>=]|in [\[(]", rules[0]) else ": "
        text += joiner + ", ".join(rules)
    return f"null or {text}" if optional else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(section: str) -> str:
    """The Markdown table of one section's settings (``data``, ``trial``, ``tune``, ...).

    Raises:
        KeyError: ``section`` is not one of :data:`SECTIONS`.
    """
    cls = SECTIONS[section]
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = "required" if f.default is dataclasses.MISSING else f"`{_yaml(f.default)}`"
        lines.append(f"| `{f.name}` | {_cell(default)} | {_cell(allowed(cls, f.name))} | "
                     f"{_cell(field_doc(cls, f.name))} |")
    return "\n".join(lines) + "\n"


def update(text: str) -> str:
    """``text`` with every marked block replaced by its section's :func:`render`.

    Raises:
        ValueError: a marker names an unknown section, or a section has no marked block.
    """
    seen = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise ValueError(f"unknown settings section '{name}' in a marker; known: {', '.join(SECTIONS)}")
        seen.add(name)
        return match[1] + render(name) + match[4]

    out = _BLOCK.sub(replace, text)
    missing = [name for name in SECTIONS if name not in seen]
    if missing:
        raise ValueError(f"no marked block for {', '.join(missing)}: add `<!-- settings:NAME -->` and "
                         f"`<!-- /settings:NAME -->` lines where each table belongs, then run {WRITE_COMMAND}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.space.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the marked tables of the README in place")
    parser.add_argument("--check", action="store_true", help="exit 1 when a marked table is out of date")
    parser.add_argument("--readme", type=Path, default=README, help=f"the file to update (default: {README})")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name in SECTIONS:
            print(f"<!-- settings:{name} -->\n{render(name)}<!-- /settings:{name} -->\n")
        return 0
    text = args.readme.read_text()
    fresh = update(text)
    if args.write:
        if fresh != text:
            args.readme.write_text(fresh)
            print(f"updated {args.readme}")
        return 0
    if fresh != text:
        print(f"{args.readme} is out of date with the settings' declarations; run {WRITE_COMMAND}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
