"""Write a space as commented YAML: each value in flow style with its rule's reason beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

SECTIONS = ("data", "params", "search", "tune", "scheduler", "resources")


@dataclass(frozen=True)
class Entry:
    """One setting: ``section.key``, its value, and the reason (``""``: no comment)."""

    key: str
    value: Any
    reason: str = ""

    @property
    def shown(self) -> str:
        """The value as it is written in the YAML (flow style, one line)."""
        return flow(self.value)


def flow(value: Any) -> str:
    """``value`` as one line of YAML: ``64``, ``null``, ``{choice: [cnn3, cnn9]}``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("...") else text


def render_space(name: str, description: str, header: list[str], entries: list[Entry]) -> str:
    """The space file: a header comment, ``name``/``description``, then each section's entries in order."""
    lines = ["# Written by `search init`. The data as it was read:"]
    lines += [f"#   {line}" for line in header]
    lines += ["# Each value carries the rule that chose it. Edit freely; `search trial THIS.yaml --set epochs=1`",
              "# checks the space in a minute, `search run THIS.yaml` runs the study.",
              f"name: {flow(name)}", f"description: {flow(description)}"]
    for section in SECTIONS:
        members = [e for e in entries if e.key.split(".", 1)[0] == section]
        if not members:
            continue
        lines.append(f"{section}:")
        for entry in members:
            line = f"  {entry.key.split('.', 1)[1]}: {entry.shown}"
            lines.append(f"{line}    # {entry.reason}" if entry.reason else line)
    return "\n".join(lines) + "\n"


__all__ = ["Entry", "flow", "render_space"]
