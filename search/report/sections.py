"""The report's sections: each answers one question from the trial table, or says in
one line that the study did not vary what the question needs.

A section is Markdown lines, the PNG files it drew, and (optionally) one plain sentence
for the summary. Sections never raise for a study that lacks their question: they
return the one-line reason instead, so a report exists for every study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import search.report.analysis as analysis
import search.report.plots as plots
from search.records.tags import DATA_SIZES_TAG, EXPORT_REFIT_TAG, EXPORTED_TAG
from search.report.records import StudyRecords, value_key


@dataclass
class Context:
    """What every section may read.

    Attributes:
        records: the study's trials.
        space: the parsed space the study ran (``None`` when it cannot be read back).
        out: the report folder (PNG files go here).
        top: leaderboard rows and learning curves to show.
        data_shape: lazily loads ``(num_classes, channels, stored side)`` of the study's data.
        best_predictions: lazily loads the best trial's saved validation ``(labels, probs)``.
        trial_predictions: lazily loads one trial's saved held-out ``(labels, probs)`` at its
            selected epoch, by trial id (validation, or out-of-fold under cross-validation);
            None when its checkpoint is gone.
    """

    records: StudyRecords
    space: Any
    out: Path
    top: int
    data_shape: Callable[[], tuple[int, int, int]]
    best_predictions: Callable[[], tuple[np.ndarray, np.ndarray] | None]
    trial_predictions: Callable[[str], tuple[np.ndarray, np.ndarray] | None] = lambda _: None


def paired_claim(ctx: Context, a: str, b: str, what_a: str, what_b: str) -> str | None:
    """The paired test of two trials' AUCs on the same held-out images, as a sentence.

    DeLong for binary tasks, a stratified bootstrap of the difference for more classes;
    None when either trial's predictions are gone or they are not on the same images.
    """
    from search.evaluation import delong_paired

    first, second = ctx.trial_predictions(a), ctx.trial_predictions(b)
    if first is None or second is None or not np.array_equal(first[0], second[0]):
        return None
    try:
        test = delong_paired(first[0], first[1], second[1])
    except ValueError:  # a class with fewer than 2 held-out images: no test
        return None
    verdict = "significant" if test.significant else "not significant"
    return (f"Paired test ({'DeLong' if test.method == 'delong' else 'bootstrap'}) of {what_a} `{a}` vs {what_b} "
            f"`{b}` on the same {len(first[0])} held-out images: AUC {test.auc_a:.4f} vs {test.auc_b:.4f}, "
            f"difference {test.difference:+.4f} (95% CI {test.low:+.4f} to {test.high:+.4f}, p = {test.p_value:.3g}): "
            f"{verdict}.")


@dataclass
class Section:
    """One section of the report."""

    title: str
    lines: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    finding: str | None = None

    def image(self, path: Path, caption: str) -> None:
        self.images.append(path)
        self.lines += ["", f"![{caption}]({path.name})"]


def finished_section(ctx: "Context", title: str, empty: str) -> tuple[Section, Any]:
    """A new section and the study's finished trials, or ``None`` for them (the section
    then says ``empty``) when no trial finished with a score."""
    section, table = Section(title), ctx.records.finished
    if table.empty:
        section.lines.append(empty)
        return section, None
    return section, table


def fmt(value: Any) -> str:
    """A setting or metric for a table cell."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.4f}".rstrip("0").rstrip(".")
    return value_key(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def fmt_int(value: Any) -> str:
    """An epoch count for a cell (``-`` when missing)."""
    return "-" if value is None or pd.isna(value) else str(int(value))


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None or np.isnan(seconds) else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- budget

def budget(ctx: Context) -> Section:
    """What the study ran: data, trials by state, epochs, wall time, the search settings."""
    records, section = ctx.records, Section("Budget and data")
    params, trials = records.parent_params, records.trials
    starts = [r for r in trials["seconds"].dropna()] if not trials.empty else []
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    wall = ((trials["end_ms"].max() - trials["start_ms"].min()) / 1000
            if not trials.empty and trials["end_ms"].notna().any() else None)
    sizes = json.loads(records.parent_tags.get(DATA_SIZES_TAG, "{}") or "{}")
    space = ctx.space
    source = space.data.source if space is not None else "?"
    fractions = sorted({float(v) for v in trials.get("train_fraction", pd.Series(dtype=float)).dropna()})
    data_fraction = space.data.train_fraction if space is not None else 1.0
    image = (f"{space.data.image_size} px stored" if space is not None and space.data.image_size else "native size")
    inputs = sorted({str(v) for v in trials.get("input_size", pd.Series(dtype=object)).dropna()})
    network = f"network input {', '.join(inputs)} px" if inputs else "network input: the crop, else the stored image"
    section.lines += [
        f"- data: `{source}` ({image}; {network}); split sizes "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + (f" (train already subsampled to {data_fraction:.0%} by `data.train_fraction`)" if data_fraction < 1 else ""),
        f"- training fraction per trial: {', '.join(f'{f:g}' for f in fractions) or '1'}",
        f"- search: {params.get('algorithm', '?')}, num_samples {params.get('num_samples', '?')}, "
        f"time budget {params.get('time_budget', 'None')}, scheduler {params.get('scheduler', '?')}, "
        f"at most {params.get('max_epochs', '?')} epochs per trial, sampler seed {params.get('seed', '?')}",
        f"- trials: {len(trials)} (" + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
        + ")",
        f"- wall time: {_minutes(wall)} from the first trial's start "
        f"to the last trial's end; {_minutes(float(np.nansum(starts)))} of trial time in all",
        f"- epochs trained in all: {int(trials['epochs_run'].sum()) if not trials.empty else 0}",
        f"- code: git commit `{records.parent_tags.get('medtune.git_commit', 'unknown')[:12]}`; "
        f"MLflow parent run `{records.study.parent_run_id}`",
    ]
    errored = trials[trials["state"] == "errored"] if not trials.empty else trials
    if not errored.empty:
        reasons = errored["error"].fillna("unknown").value_counts()
        section.lines.append("- errored trials: " + "; ".join(f"{n} x `{r[:160]}`" for r, n in reasons.items()))
    return section


# ------------------------------------------------------------------------ leaderboard

TEST_KEYS = ("test_auc", "test_acc", "test_balanced_acc", "test_sensitivity", "test_specificity", "test_f1")


def leaderboard(ctx: Context) -> Section:
    """Top trials with their searched settings and validation metric; the exported model's test metrics."""
    section, table = finished_section(ctx, "Leaderboard", "No trial finished with a score, so there is no leaderboard.")
    if table is None:
        return section
    records = ctx.records
    shown = table.head(ctx.top)
    header = ["rank", "trial", f"{records.metric}", "epoch", "state", *records.searched]
    rows = [[str(i + 1), f"`{row['trial_id']}`", f"{row['value']:.4f}", fmt_int(row["best_epoch"]),
             row["state"].replace("_", " ") + (f" at {row['epochs_run']}" if row["state"] == "stopped_early" else ""),
             *[row.get(n) if n in row["sampled"] else "-" for n in records.searched]]
            for i, (_, row) in enumerate(shown.iterrows())]
    section.lines.append(f"Top {len(shown)} of {len(table)} finished trials by validation {records.metric} "
                         "(best epoch of each trial; `-`: not sampled for that trial, its condition did not hold):")
    section.lines += [""] + markdown_table(header, rows)
    test = {k: records.parent_metrics[k] for k in TEST_KEYS if k in records.parent_metrics}
    exported = records.parent_tags.get(EXPORTED_TAG)
    if test and exported:
        refit = records.parent_tags.get(EXPORT_REFIT_TAG) == "true"
        section.lines += ["", f"Test split (used once, by `search best --export`) for the exported trial `{exported}`"
                          + (" refitted on train + validation" if refit else "") + ": "
                          + ", ".join(f"{k.removeprefix('test_')} {v:.4f}" for k, v in test.items()) + "."]
        if exported != str(table.iloc[0]["trial_id"]):
            section.lines.append(f"(The exported trial is not the current best, `{table.iloc[0]['trial_id']}`: "
                                 "export again to test the best.)")
    else:
        section.lines += ["", f"No test metrics yet: `search best {records.study.name} --export DIR` tests the best "
                          "trial once on the held-out test split and logs `test_*` to this study's parent run; "
                          "run the report again afterwards."]
    return section


# ------------------------------------------------------------------- scratch vs pretrained

def transfer(ctx: Context) -> Section:
    """Best metric per training fraction for scratch and pretrained networks."""
    records, section = ctx.records, Section("Scratch vs pretrained")
    table = analysis.with_init(records.finished)
    if table.empty or table["init"].nunique() < 2:
        only = table["init"].iloc[0] if not table.empty else "none"
        section.lines.append(f"Not studied: every finished trial used the same initialisation ({only}); "
                             "search `pretrained` (or scratch and pretrained backbones) to compare.")
        return section
    if "train_fraction" not in table.columns:
        table["train_fraction"] = 1.0
    table["train_fraction"] = table["train_fraction"].astype(float)
    best = analysis.best_by(records, table, ["train_fraction", "init"])
    rows, gaps = [], []
    for fraction in sorted(best["train_fraction"].unique()):
        cells = best[best["train_fraction"] == fraction].set_index("init")
        scratch = cells["value"].get("scratch")
        pretrained = cells["value"].drop("scratch", errors="ignore")
        top = pretrained.max() if records.mode == "max" else pretrained.min() if len(pretrained) else None
        gap = (top - scratch) if top is not None and scratch is not None and not np.isnan(top) else None
        if gap is not None:
            gaps.append((fraction, gap if records.mode == "max" else -gap))
        rows.append([f"{fraction:g}", scratch, top, "-" if gap is None else f"{gap:+.4f}",
                     " / ".join(f"{int(n)}" for n in cells["trials"])])
    section.lines += markdown_table(["train fraction", f"best scratch {records.metric}",
                                     f"best pretrained {records.metric}", "pretrained - scratch",
                                     "trials (per init)"], rows)
    if not records.varied("train_fraction", table):
        section.lines += ["", "The training-set fraction was not varied, so whether transfer helps more with less "
                          "data is not answered here."]
    section.image(plots.transfer_plot(table, best, records.metric, ctx.out / "transfer.png"),
                  "validation metric vs training fraction, scratch vs pretrained")
    if gaps:
        wins = [f for f, g in gaps if g > 0]
        text = (f"Pretrained weights {'beat' if wins else 'did not beat'} scratch" if len(gaps) == 1 else
                f"Pretrained weights beat scratch at {len(wins)} of {len(gaps)} training fractions")
        text = (text
                + (f" (gap {gaps[0][1]:+.3f} at {gaps[0][0]:g} vs {gaps[-1][1]:+.3f} at {gaps[-1][0]:g} of the data)"
                   if len(gaps) > 1 else f" (gap {gaps[0][1]:+.3f})") + ".")
        if len(gaps) > 1:
            more = gaps[0][1] > gaps[-1][1]
            text += (" The gap is larger when data is scarce." if more else
                     " The gap is not larger when data is scarce.")
        largest = best[best["train_fraction"] == best["train_fraction"].max()].set_index("init")
        claim = None
        if "scratch" in largest.index and len(largest.index) > 1:
            pretrained = largest.drop("scratch")
            top = pretrained["value"].idxmax() if records.mode == "max" else pretrained["value"].idxmin()
            claim = paired_claim(ctx, str(pretrained.loc[top, "trial_id"]), str(largest.loc["scratch", "trial_id"]),
                                 "the best pretrained trial", "the best scratch trial")
        if claim:
            text += " " + claim.split(":")[-1].strip().capitalize().rstrip(".") + " on a paired test."
        section.finding = text
        section.lines += ["", text + " Each cell is the best of the trials that ran it, so cells with more trials "
                          "had more chances; compare with the trial counts."]
        if claim:
            section.lines += ["", claim]
    return section


# --------------------------------------------------------------------- fine-tuning depth

def depth(ctx: Context) -> Section:
    """Best metric per frozen-stage count, per backbone; fine-tuning vs feature extraction."""
    records, section = ctx.records, Section("How deep to fine-tune (frozen stages)")
    if not records.varied("frozen_stages"):
        section.lines.append("Not studied: `frozen_stages` was not varied (search it, e.g. `frozen_stages: "
                             "{int: [0, 5]}`, to compare fine-tuning depths and feature extraction).")
        return section
    table = analysis.depth_table(records)
    best = analysis.best_by(records, table, ["variant", "frozen_stages"])
    best = best.merge(table[["trial_id", "regime", "kept_stages", "init"]], on="trial_id")
    rows = []
    for variant, group in best.groupby("variant", sort=True):
        group = group.sort_values("frozen_stages")
        cells = " · ".join(f"{int(r.frozen_stages)}: {r.value:.4f}" for r in group.itertuples())
        rows.append([variant, str(int(group["kept_stages"].iloc[0])), cells])
    section.lines += markdown_table(["backbone", "stages", f"best {records.metric} by frozen stages"], rows)
    regimes = analysis.best_by(records, table, ["variant", "init", "regime"])
    section.lines += ["", "Fine-tuning vs pure feature extraction (all stages frozen, only the head trains):", ""]
    regime_rows, findings = [], []
    for (backbone, init), group in regimes.groupby(["variant", "init"], sort=True):
        values = group.set_index("regime")["value"]
        extraction = values.get("feature extraction")
        tuned = values.drop("feature extraction", errors="ignore")
        tuned_best = (tuned.max() if records.mode == "max" else tuned.min()) if len(tuned) else None
        regime_rows.append([backbone, tuned_best, extraction,
                            "-" if extraction is None or tuned_best is None else f"{tuned_best - extraction:+.4f}"])
        if extraction is not None and tuned_best is not None and init != "scratch":
            better = tuned_best > extraction if records.mode == "max" else tuned_best < extraction
            findings.append(f"{backbone}: fine-tuning {'beats' if better else 'does not beat'} feature extraction "
                            f"({tuned_best:.3f} vs {extraction:.3f})")
    section.lines += markdown_table(["backbone", f"best fine-tuned {records.metric}",
                                     f"feature extraction {records.metric}", "difference"], regime_rows)
    section.image(plots.frozen_plot(best, records.metric, ctx.out / "frozen_stages.png"),
                  "best validation metric vs frozen stages")
    overall = records.best_of(table)
    if overall is not None:
        text = (f"The best trial froze {int(overall['frozen_stages'])} of {int(overall['kept_stages'])} stages "
                f"of {overall['variant']}")
        text += ("; " + "; ".join(findings) + ".") if findings else "."
        section.finding = text
        section.lines += ["", text]
    return section


# --------------------------------------------------------------------------- truncation

def truncation(ctx: Context) -> Section:
    """Best metric per truncation depth with the network's size and CPU speed."""
    from search.report.cost import network_cost
    from trainables.config import TrialConfig

    records, section = ctx.records, Section("Truncated vs full backbones")
    table = analysis.depth_table(records)
    column = table["truncate_after"] if "truncate_after" in table.columns else pd.Series(dtype=object)
    if table.empty or column.map(value_key).nunique() < 2:
        section.lines.append("Not studied: `truncate_after` was not varied (search it, with the full network as "
                             "`null` or as a separate study, to ask whether a truncated backbone is as good).")
        return section
    table["depth"] = [int(t) + 1 if t is not None else (analysis.stages_of(b) or 0)  # stages kept
                      for t, b in zip(column, table["backbone"])]
    table["depth_label"] = [f"{int(t)}" if t is not None else "full" for t in column]
    best = analysis.best_by(records, table, ["backbone", "depth_label"]).merge(
        table[["trial_id", "depth"]], on="trial_id")
    settings = [c for c in table.columns if c in TrialConfig.__dataclass_fields__]
    costs, problem = [], None
    try:
        classes, channels, side = ctx.data_shape()
        for row in best.itertuples():
            trial = table[table["trial_id"] == row.trial_id].iloc[0]
            costs.append(network_cost(TrialConfig.from_dict({k: trial[k] for k in settings}), classes, channels, side))
    except Exception as err:  # noqa: BLE001 - the AUC table stands without the cost columns
        costs, problem = [], f"{type(err).__name__}: {err}"
    best["params_m"] = [c.params_m for c in costs] if costs else np.nan
    best["ms_per_image"] = [c.ms_per_image for c in costs] if costs else np.nan
    rows = [[str(r.backbone), r.depth_label, str(r.depth), r.value, fmt(r.params_m), fmt(r.ms_per_image), str(r.trials)]
            for r in best.sort_values(["backbone", "depth", "depth_label"]).itertuples()]
    section.lines += markdown_table(["backbone", "truncate_after", "stages kept", f"best {records.metric}", "params (M)",
                                     "CPU ms/image", "trials"], rows)
    if costs:
        section.lines += ["", f"Parameters and time: each architecture built as its best trial built it, a forward "
                          f"pass on a batch of 16 at {costs[0].input_size} px on one CPU thread (median of 5), "
                          "so rows compare with each other, not with a GPU."]
    else:
        section.lines += ["", f"Parameters and CPU time not measured: {problem}"]
    section.image(plots.truncation_plot(best, records.metric, ctx.out / "truncation.png"),
                  "best validation metric vs truncation depth and parameter count")
    findings = []
    for backbone, group in best.groupby("backbone"):
        full = group[group["depth_label"] == "full"]
        cut = group[group["depth_label"] != "full"]
        top = records.best_of(cut) if not cut.empty else None
        if top is None:
            continue
        if not full.empty:
            f = full.iloc[0]
            findings.append(f"{backbone} truncated after stage {top['depth_label']} scores {top['value']:.3f} with "
                            f"{top['params_m']:.2f}M parameters vs {f['value']:.3f} for the full network "
                            f"({f['params_m']:.2f}M)")
        else:
            smallest = group.sort_values("params_m").iloc[0]
            findings.append(f"{backbone}: best truncation is after stage {top['depth_label']} ({top['value']:.3f}, "
                            f"{top['params_m']:.2f}M parameters); the shallowest, stage {smallest['depth_label']}, "
                            f"scores {smallest['value']:.3f} with {smallest['params_m']:.2f}M (the full network "
                            "was not in this study)")
    if findings:
        section.finding = "; ".join(findings) + "."
        section.lines += ["", section.finding]
    return section


# --------------------------------------------------------------------------- parameters

def parameters(ctx: Context) -> Section:
    """fANOVA importance and the metric against each searched parameter's values."""
    records, section = ctx.records, Section("Effect of each searched parameter")
    names = [n for n in records.searched if records.varied(n, records.sampled(n))]
    if not names:
        section.lines.append("Not studied: no searched parameter took two or more values among finished trials.")
        return section
    importance, note = analysis.importances(records, ctx.space)
    if importance:
        section.lines += markdown_table(["parameter", "importance"], [[n, f"{v:.3f}"] for n, v in importance.items()])
        section.lines += ["", f"{note}. Importance is the share of the variance of {records.metric} that fANOVA "
                          "attributes to the parameter alone; with few trials it is a rough ranking."]
        section.image(plots.importance_plot(importance, ctx.out / "importance.png"), "parameter importance")
        first = next(iter(importance))
        section.finding = f"The most important searched parameter was `{first}` ({importance[first]:.2f} of the variance)."
    else:
        section.lines.append(f"Importance not computed: {note}.")
    kinds = {n: analysis.parameter_kind(records, n, ctx.space) for n in names}
    section.image(plots.parameter_plots(records, names, kinds, ctx.out / "parameters.png"),
                  f"{records.metric} vs each searched parameter")
    section.lines += ["", f"Each dot is a trial's best {records.metric} (hollow: stopped early, so it trained fewer "
                      "epochs); a bar marks each value's best. The table gives each categorical value's best and "
                      "median:", ""]
    rows = []
    for name in names:
        if kinds[name] != "categorical":
            continue
        present = records.sampled(name)
        grouped = present.groupby(present[name].map(value_key))["value"]
        for value, group in grouped:
            best = group.max() if records.mode == "max" else group.min()
            rows.append([name, value, best, float(group.median()), str(len(group))])
    if rows:
        section.lines += markdown_table(["parameter", "value", "best", "median", "trials"], rows)
    return section


# ------------------------------------------------------------------------ learning curves

def curves(ctx: Context) -> Section:
    """Per-epoch curves of the top trials, and where ASHA stopped the others."""
    section, table = finished_section(ctx, "Learning curves and early stopping",
                                      "No finished trial, so no learning curves.")
    if table is None:
        return section
    records = ctx.records
    top = list(table["run_id"].head(min(ctx.top, 5)))
    section.image(plots.curves_plot(records, top, ctx.out / "learning_curves.png"),
                  "per-epoch validation metric of the top trials")
    stops = analysis.asha_stops(records)
    budget_stops = int(((records.trials["state"] == "stopped_early")
                        & (records.trials["stopped_by"] == "time budget")).sum())
    if stops:
        section.lines += ["", "ASHA stopped " + ", ".join(f"{n} at epoch {e}" for e, n in stops.items())
                          + f" (of {len(records.trials)} trials); the red crosses mark them."]
    elif records.parent_params.get("scheduler") == "asha":
        section.lines += ["", "ASHA stopped no trial."]
    else:
        section.lines += ["", "No early-stopping scheduler: every trial ran its epochs (or until the time budget)."]
    if budget_stops:
        section.lines.append(f"The time budget cut off {budget_stops} trial(s) before their last epoch.")
    late = table[table["best_epoch"].notna() & (table["best_epoch"] < table["epochs_run"])]
    section.lines.append(f"{len(late)} of {len(table)} finished trials peaked before their last epoch "
                         "(the best epoch is what `search best` exports).")
    return section


# ------------------------------------------------------------- selection estimate vs test

def estimates(ctx: Context) -> Section:
    """The best trial's single-split or cross-validated estimate beside its export's test score."""
    section, table = finished_section(ctx, "Selection estimate vs test", "No finished trial.")
    if table is None:
        return section
    best, records = table.iloc[0], ctx.records
    raw_folds = best.get("cv_folds", 1)
    folds = 1 if raw_folds is None or analysis._isnan(raw_folds) else int(float(raw_folds))
    what = (f"the mean of its {folds} fold models, each scored on the fold it did not train on" if folds > 1 else
            "one validation split")
    rows = [[f"selection ({what})", fmt(best["value"])]]
    predictions = ctx.best_predictions()
    if predictions is not None and records.metric == "val_auc":
        from search.evaluation import auc_interval

        label = "out-of-fold predictions, pooled" if folds > 1 else "validation predictions"
        try:
            interval = auc_interval(*predictions)
            rows.append([f"{label}: AUC with 95% CI ({interval.method})",
                         f"{interval.auc:.4f} ({interval.low:.4f}-{interval.high:.4f})"])
        except ValueError:  # a class with fewer than 2 held-out images
            pass
    test = records.parent_metrics
    if "test_auc" in test:
        ci = (f" ({test['test_auc_low']:.4f}-{test['test_auc_high']:.4f})"
              if "test_auc_low" in test and "test_auc_high" in test else "")
        rows.append(["test split, the exported model (latest export)", f"{test['test_auc']:.4f}{ci}"])
    section.lines += markdown_table(["estimate", records.metric], rows)
    if "test_auc" in test and records.metric == "val_auc":
        gap = float(best["value"]) - float(test["test_auc"])
        section.finding = f"the selection estimate was {gap:+.3f} from the exported model's test AUC"
        section.lines += ["", f"The selection estimate is {gap:+.4f} from test. The best of many trials on one small "
                          "split is optimistic; cross-validation (`tune.cv_folds`) ranks on more images and an "
                          "ensemble of the fold models usually holds better on new patients."]
    else:
        section.lines += ["", "No test score yet: `search best NAME --export DIR` tests the final model once."]
    return section


# ---------------------------------------------------------------------------- uncertainty

def uncertainty(ctx: Context) -> Section:
    """Bootstrap interval of the best trial's metric, spread of repeats and of the top trials."""
    section, table = finished_section(ctx, "Uncertainty", "No finished trial.")
    if table is None:
        return section
    best, records = table.iloc[0], ctx.records
    predictions = ctx.best_predictions()
    if predictions is not None and records.metric == "val_auc":
        auc, low, high = analysis.bootstrap_auc(*predictions)
        n = len(predictions[0])
        section.lines.append(f"- Best trial `{best['trial_id']}`: validation AUC {auc:.4f}, 95% bootstrap interval "
                             f"[{low:.4f}, {high:.4f}] (2,000 resamples of its {n} validation images, from the "
                             "predictions saved with its best checkpoint). This is the sampling noise of the "
                             "validation set alone; it does not include training noise (seed) or the optimism "
                             f"of picking the best of {len(table)} trials on this same validation set.")
        section.finding = f"[{low:.3f}, {high:.3f}] is the 95% bootstrap interval of the best validation AUC"
    else:
        section.lines.append("- No bootstrap interval: the best trial's saved validation predictions were not found "
                             "(its checkpoint folder is gone) or the study metric is not val_auc.")
    repeats = analysis.same_config(records, best)
    if len(repeats) >= 2:
        section.lines.append(f"- {len(repeats)} finished trials share the best configuration (other seeds or "
                             f"repeats): {records.metric} mean {repeats['value'].mean():.4f}, standard deviation "
                             f"{repeats['value'].std(ddof=1):.4f}, range {repeats['value'].min():.4f}-"
                             f"{repeats['value'].max():.4f}.")
    else:
        section.lines.append("- No other trial repeated the best configuration, so the seed-to-seed spread of this "
                             "configuration was not measured (repeat it with another `seed` to measure it).")
    spread = analysis.seed_spread(records)
    if not spread.empty:
        counts = sorted({int(n) for n in spread["trials"]})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        worst = spread["std"].idxmax()
        worst = ", ".join(f"{k} {v}" for k, v in zip([n for n in records.searched if n != "seed"],
                                                       worst if isinstance(worst, tuple) else (worst,)))
        section.lines.append(f"- Seed spread: {len(spread)} configurations ran with {seeds} seeds each; the standard "
                             f"deviation of {records.metric} across seeds has median {spread['std'].median():.4f} "
                             f"and maximum {spread['std'].max():.4f} ({worst}; range "
                             f"{spread.loc[spread['std'].idxmax(), 'low']:.4f}-"
                             f"{spread.loc[spread['std'].idxmax(), 'high']:.4f}). Differences between "
                             "configurations smaller than about twice the median are within training noise; a "
                             "large maximum means some configuration is unstable (a seed that failed to train).")
        if section.finding:
            section.finding += f"; the seed-to-seed standard deviation is about {spread['std'].median():.3f}"
    head = table.head(min(5, len(table)))
    if len(head) >= 2:
        section.lines.append(f"- The top {len(head)} trials span {head['value'].min():.4f}-{head['value'].max():.4f}: "
                             "differences smaller than the bootstrap interval are not evidence that one "
                             "configuration is better.")
    return section


SECTIONS = (budget, leaderboard, transfer, depth, truncation, parameters, curves, estimates, uncertainty)

__all__ = ["Context", "SECTIONS", "Section", "budget", "curves", "depth", "estimates", "leaderboard", "markdown_table",
           "parameters", "transfer", "truncation", "uncertainty"]
