"""Shared by the benchmark scripts: the machine they ran on and their section of docs/benchmarks.md.

Every script prints its results and, with ``--write-docs``, replaces its own section of
``docs/benchmarks.md`` (between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers, appended when missing) with a table, the exact command and the machine, so the
document always says what produced each number.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line: CPU model, cores, memory, accelerator and library versions."""
    import torch

    parts = [f"{cpu_model()}, {os.cpu_count()} cores"]
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages * size / 2**30:.0f} GiB RAM")
    except (ValueError, OSError):
        pass
    parts.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    else:
        parts.append("no GPU used")
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("torchvision", "timm", "ray", "optuna", "mlflow"):
        if name in sys.modules:
            versions.append(f"{name} {sys.modules[name].__version__}")
    return "; ".join(parts) + "; " + ", ".join(versions)


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge whether other work competed."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def command_line() -> str:
    """How this script was invoked, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return " ".join(["python", shown, *map(shlex.quote, sys.argv[1:])])


def write_section(name: str, markdown: str, docs: Path = DOCS, command: str | None = None) -> None:
    """Replace (or append) the ``name`` section of ``docs/benchmarks.md`` with ``markdown``.

    ``command``: the measuring command when the section is rebuilt from saved results.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{start}\n{markdown.strip()}\n\n_Written {stamp} by `{command or command_line()}`._\n{end}"
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)
    print(f"wrote the {name!r} section of {docs}")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run_report_args(doc: str, workdir: Path, run_options: Callable[[argparse.ArgumentParser], None] | None,
                    run_help: str = "run the measurements") -> argparse.Namespace:
    """The command line of a benchmark with saved results: ``run`` (its ``run_options``; none
    when it has no ``run``) and ``report [--write-docs]``, both with ``--workdir``.

    ``$MEDTUNE_DATA`` defaults to the shared data beside the checkout.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    subcommands = []
    if run_options is not None:
        run = commands.add_parser("run", help=run_help)
        run_options(run)
        subcommands.append(run)
    report = commands.add_parser("report", help="tables from the saved results")
    report.add_argument("--write-docs", action="store_true", help="also update its section of docs/benchmarks.md")
    for sub in (*subcommands, report):
        sub.add_argument("--workdir", type=Path, default=workdir)
    os.environ.setdefault("MEDTUNE_DATA", str(ROOT.parent / "shared" / "data"))
    return parser.parse_args()


def time_methods(cls: type, names: list[str], record: Callable[[float], None]) -> None:
    """Wrap ``cls.name`` for each name so that each call's wall seconds go to ``record``."""
    for name in names:
        original = getattr(cls, name, None)
        if original is None:
            continue

        @functools.wraps(original)
        def wrapper(*args, __original=original, **kwargs):
            started = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                record(time.perf_counter() - started)

        setattr(cls, name, wrapper)
