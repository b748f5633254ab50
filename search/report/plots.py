"""The report's figures, one function per question, each written as a PNG file.

Matplotlib with the Agg backend (no display needed: clusters, CI, SSH). Each function
takes the tables :mod:`search.report.analysis` computed and a path, and draws only what
the table holds, so an empty or one-valued question never reaches here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.report.records import StudyRecords, value_key


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 100 dpi) and close it."""
    plt = _plt()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend a one-axes figure, then :func:`save` it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def transfer_plot(table: pd.DataFrame, best: pd.DataFrame, metric: str, path: Path) -> Path:
    """Study metric vs training fraction for scratch and pretrained trials (all trials faint, best as lines)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for init, colour in (("scratch", "tab:orange"), ("ImageNet", "tab:blue"), ("weights file", "tab:green")):
        trials = table[table["init"] == init]
        if trials.empty:
            continue
        ax.scatter(trials["train_fraction"].astype(float), trials["value"], color=colour, alpha=0.3, s=15)
        line = best[best["init"] == init].sort_values("train_fraction")
        ax.plot(line["train_fraction"].astype(float), line["value"], "o-", color=colour, label=f"{init} (best)")
    ax.set_xscale("log")
    fractions = sorted(table["train_fraction"].astype(float).unique())
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    return finish(fig, ax, path, "training-set fraction", f"{metric} (validation)", "scratch vs pretrained")


def frozen_plot(best: pd.DataFrame, metric: str, path: Path) -> Path:
    """Best study metric vs frozen stages, one line per variant (backbone, init, truncation, fraction; scratch dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, line in best.groupby("variant", sort=True):
        line = line.sort_values("frozen_stages")
        style = "o--" if "(scratch" in str(variant) else "o-"
        handle = ax.plot(line["frozen_stages"].astype(int), line["value"], style, label=str(variant))[0]
        extraction = line[line["regime"] == "feature extraction"]
        ax.scatter(extraction["frozen_stages"].astype(int), extraction["value"], s=120, facecolors="none",
                   edgecolors=handle.get_color())
    return finish(fig, ax, path, "frozen stages (0 = fine-tune all; circled = feature extraction)",
                  f"best {metric} (validation)", "how deep to fine-tune")


def truncation_plot(best: pd.DataFrame, metric: str, path: Path) -> Path:
    """Best study metric vs truncation depth, and vs parameter count (with CPU time in the labels)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for backbone, line in best.groupby("backbone", sort=True):
        line = line.sort_values(["depth", "depth_label"], key=lambda c: c.map(lambda v: v == "full") if c.name ==
                                "depth_label" else c)
        colour = left.plot(line["depth"], line["value"], "o-", label=str(backbone))[0].get_color()
        full = line[line["depth_label"] == "full"]
        left.scatter(full["depth"], full["value"], marker="s", s=80, color=colour, zorder=3)
        if line["params_m"].isna().all():
            continue
        right.plot(line["params_m"], line["value"], "o", color=colour, label=str(backbone))
        for _, row in line.iterrows():
            right.annotate(f"{row['depth_label']}, {row['ms_per_image']:.2f} ms", (row["params_m"], row["value"]),
                           fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set_xticks(sorted(best["depth"].unique()))
    left.set_xlabel("stages kept (square = full network, no truncation)")
    left.set_ylabel(f"best {metric} (validation)")
    right.set_xscale("log")
    right.set_xlabel("parameters (millions; label: truncate_after, CPU ms/image)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("truncated vs full backbone")
    return save(fig, path)


def importance_plot(importance: dict[str, float], path: Path) -> Path:
    """Horizontal bars of fANOVA importance, most important on top."""
    plt = _plt()
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(names) + 1.2))
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, share of variance)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    return save(fig, path)


def parameter_plots(records: StudyRecords, names: list[str], kinds: dict[str, str], path: Path) -> Path:
    """Study metric vs each searched parameter's value (one panel each): completed trials
    filled, trials stopped early hollow; a categorical panel also marks each value's best."""
    plt = _plt()
    columns = min(3, len(names))
    rows = int(np.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        present = records.sampled(name)
        present = present[present[name].notna()] if kinds[name] != "categorical" else present
        done = present["state"] == "completed"
        if kinds[name] == "categorical":
            labels = sorted(present[name].map(value_key).unique(), key=_natural)
            position = {label: i for i, label in enumerate(labels)}
            x = present[name].map(value_key).map(position).astype(float)
            jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(x))
            x = x + jitter
            best = present.groupby(present[name].map(value_key))["value"]
            best = best.max() if records.mode == "max" else best.min()
            ax.scatter([position[k] for k in best.index], best.values, marker="_", s=400, color="black", zorder=3)
            ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0, fontsize=8)
        else:
            x = present[name].astype(float)
            if kinds[name] == "log":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.scatter(x[done], present["value"][done], color="tab:blue", s=18, label="completed")
        ax.scatter(x[~done], present["value"][~done], facecolors="none", edgecolors="tab:gray", s=18,
                   label="stopped early")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].set_ylabel(f"best {records.metric}")
    axes.ravel()[0].legend(fontsize=7)
    return save(fig, path)


def curves_plot(records: StudyRecords, top: list[str], path: Path) -> Path:
    """Per-epoch study metric: the top trials in colour, the others grey; x where ASHA stopped a trial."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    table = records.trials.set_index("run_id")
    stopped_label = False
    for run_id, curve in records.curves.items():
        series = curve[records.metric].dropna() if records.metric in curve else pd.Series(dtype=float)
        if series.empty or run_id in top:
            continue
        ax.plot(series.index, series.values, color="0.75", linewidth=0.8, zorder=1)
        row = table.loc[run_id]
        if row["state"] == "stopped_early" and row["stopped_by"] == "asha":
            ax.scatter([series.index[-1]], [series.values[-1]], marker="x", color="tab:red", s=25, zorder=2,
                       label=None if stopped_label else "stopped by ASHA")
            stopped_label = True
    for run_id in top:
        series = records.curves[run_id][records.metric].dropna()
        row = table.loc[run_id]
        ax.plot(series.index, series.values, "o-", markersize=3, linewidth=1.5, zorder=3,
                label=f"{row['trial_id']} ({row['value']:.4f})")
    return finish(fig, ax, path, "epoch", f"{records.metric} (validation)",
                  "learning curves: top trials in colour, others grey")


def _natural(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


__all__ = ["curves_plot", "frozen_plot", "importance_plot", "parameter_plots", "save", "transfer_plot",
           "truncation_plot"]
