"""MODEL_CARD.md of an exported model: what it was trained on, how it was chosen, how it scores.

The card is written from the same ``config.json`` and ``metrics.json`` contents that
ship beside it, so its numbers are the export's numbers. It holds counts and metrics
only, never an image. It says in plain words what limits those numbers: images left out
of the data while loading, patients shared across the source's splits, and a test split
used by more than one export (its score then no longer an unbiased estimate).
"""

from __future__ import annotations

import json
from typing import Any

_TEST_ROWS = (("test_auc", "AUC"), ("test_acc", "accuracy"), ("test_balanced_acc", "balanced accuracy"),
              ("test_f1", "F1"), ("test_sensitivity", "sensitivity"), ("test_specificity", "specificity"),
              ("test_loss", "cross-entropy"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _data_warnings(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Card lines on images left out of the data and on patients shared across source splits."""
    lines = []
    skipped = {reason: n for reason, n in (summary.get("data_skipped") or {}).items() if n}
    if skipped:
        lines.append(f"- Left out while loading the data: {sum(skipped.values())} image(s): "
                     + ", ".join(f"{n} {reason}" for reason, n in skipped.items())
                     + "; they are in no split and not counted below")
    data = config["data"]
    if (data.get("data_config") or {}).get("allow_group_overlap"):
        count = data.get("group_overlap") or 0
        who = (f"{count} patient (group) ids have" if count else "patients (groups) may have")
        lines.append(f"- **Warning:** the study ran with `allow_group_overlap: true`: {who} images in more than one "
                     "of the source's own splits, so test images may share patients with training images and the "
                     "test scores may be optimistic")
    return lines


def _test_use_warning(uses: int) -> str | None:
    """The plain-words warning once the test split has been looked at more than once."""
    if uses <= 1:
        return None
    return (f"**The test split of this study has now been used {uses} times** (this export included): its "
            "score is no longer an unbiased estimate of how the model does on new data, because choices made "
            "after seeing earlier test scores fit that split. Report the first export's test score, or test on "
            "new data.")


_CI_METHODS = {"delong": "DeLong", "bootstrap": "stratified bootstrap, 1000 resamples"}


def _ensemble_section(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The members of an ensemble export and each one's test AUC (nothing for one network)."""
    ensemble = config.get("ensemble") or {}
    members = ensemble.get("members") or []
    if len(members) < 2:
        return []
    aucs = (summary.get("test_decision") or {}).get("members_auc") or [None] * len(members)
    kind = ensemble["kind"]
    what = ("the fold models of the best trial, each trained on the other folds of train + validation"
            if kind == "folds" else f"the {len(members)} best trials' checkpoints")
    lines = ["## Ensemble", "",
             f"`--ensemble {kind}`: {what}; their temperature-scaled probabilities are averaged (soft vote), in "
             "`search predict` and inside the TorchScript and ONNX graphs.", "",
             "| member | trial | fold | epoch | validation | training images | test AUC alone | weights |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (member, auc) in enumerate(zip(members, aucs)):
        metric, value = next(iter(member["validation"].items()))
        lines.append(f"| {i} | `{member['trial_id']}` | {'-' if member['fold'] is None else member['fold']} | "
                     f"{member['epoch']} | {metric} {value:.4f} | {member['train_images']} | "
                     f"{'-' if auc is None else f'{auc:.4f}'} | `{member['weights']}` |")
    lines += ["", f"The ensemble's test AUC: {summary['test']['test_auc']:.4f}.", ""]
    return lines


def _decision_section(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The AUC's interval, the operating point and calibration, all on test (exports of format >= 3)."""
    decision, test = config.get("decision"), summary.get("test_decision")
    if not decision or not test:
        return []
    held = decision["held_out"]
    lines = [
        "### Uncertainty, operating point and calibration",
        "",
        f"- Test AUC {test['auc']:.4f}, 95% CI {test['auc_low']:.4f}-{test['auc_high']:.4f} "
        f"({_CI_METHODS.get(test['auc_ci_method'], test['auc_ci_method'])}).",
    ]
    if decision.get("threshold") is not None:
        lines += [
            f"- Operating point: `{decision['rule']}` on {decision['fitted_on']} gives threshold "
            f"{decision['threshold']:.4f} on the probability of `{decision['positive_class']}`"
            + (f" (there: sensitivity {held['sensitivity']:.4f}, specificity {held['specificity']:.4f})."
               if "sensitivity" in held else "."),
            f"- On test at that threshold: sensitivity {test['sensitivity']:.4f}, specificity "
            f"{test['specificity']:.4f}, balanced accuracy {test['balanced_acc']:.4f}. `search predict` writes "
            "this decision as `pred`; the ROC marks the point.",
        ]
    else:
        lines.append("- Decision: the class of largest probability (argmax).")
    if (config.get("ensemble") or {}).get("kind") == "folds":
        lines.append("- The threshold and temperature were set on single fold models' out-of-fold predictions; the "
                     "export averages all fold models, which is somewhat less confident, so the test numbers here "
                     "are the ones to trust for the operating point.")
    tta = config.get("tta", "none")
    if tta != "none":
        views = {"flip": "2 views: the image and its left-right mirror",
                 "dihedral": "8 views: its 4 quarter turns and those of its mirror"}[tta]
        lines.append(f"- Test-time augmentation: {tta} ({views}), averaged inside the graphs; the decision was "
                     f"fitted under the same views. Test AUC without the views: {test['auc_without_tta']:.4f}.")
    scaled = decision["temperature"] != 1.0
    lines += [
        f"- Temperature scaling: T = {decision['temperature']:.4f}, fitted on the same held-out predictions "
        f"(their NLL {held['nll_before']:.4f} -> {held['nll_after']:.4f})" if scaled else
        "- Temperature scaling: off, or it did not lower the validation NLL (T = 1)",
        f"  and folded into the TorchScript and ONNX graphs. On test: ECE {test['ece_before']:.4f} -> "
        f"{test['ece_after']:.4f}, NLL {test['nll_before']:.4f} -> {test['nll_after']:.4f} (15 confidence bins; "
        "reliability.png).",
        "",
    ]
    return lines


def model_card(config: dict[str, Any], summary: dict[str, Any], space_text: str) -> str:
    """Render the model card.

    Args:
        config: the export's ``config.json`` contents.
        summary: the export's ``metrics.json`` contents (``test_uses``: this export's use
            number of the test split; ``data_skipped``: images left out, by reason).
        space_text: the study's space file as it ran.
    """
    study, model, pre = config["study"], config["model"], config["preprocess"]
    best, search, sizes = summary["best"], summary["search"], summary["split_sizes"]
    names = model["class_names"]
    refit = summary["refit"]
    uses = int(summary.get("test_uses", 1))  # exports before the count was kept: the one use of this export
    reuse = _test_use_warning(uses)
    epochs = f"{study['epochs']} epoch" + ("s" if study["epochs"] != 1 else "")
    how = (f"retrained on train + validation ({summary['train_images']} images) for {epochs}, the best "
           "trial's best epoch count" if refit else
           f"the best trial's checkpoint of epoch {study['epochs']}, trained on {summary['train_images']} images")
    lines = [
        f"# {study['name']}: {model['backbone']} for {len(names)}-class classification",
        "",
        f"Exported {config['created']} by medtune (`search best {study['name']} --export DIR"
        + (" --refit" if refit else "") + f"`). Weights: {how}.",
        "",
        "## Data",
        "",
        f"- Source: `{config['data']['source']}` (fingerprint `{config['data']['fingerprint'][:16]}`, covering "
        "the decoded images, their settings and the split)",
        "- Classes: " + ", ".join(f"{i} = {name}" for i, name in enumerate(names)),
        f"- Images stored at {pre['stored_size'][0]}x{pre['stored_size'][1]}, {pre['channels']} channel(s)"
        + (f" (decoded to image_size {pre['image_size']})" if pre["image_size"] else " (native size)"),
        *_data_warnings(config, summary),
        "",
        "| split | images | used for |",
        "|---|---|---|",
        f"| train | {sizes['train']} | training" + (" (with validation, in the refit)" if refit else "") + " |",
        f"| validation | {sizes['val']} | choosing the trial and its epoch" + (" and, in the refit, training"
                                                                              if refit else "") + " |",
        f"| test | {sizes['test']} | "
        + ("this card only, once, after the search |" if uses <= 1 else
           f"this card, after the search: use {uses} of this split |"),
        "",
        f"Training images of the exported weights: {summary['train_images']}.",
        "",
        "## Search",
        "",
        f"- {search['trials']} trials: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in
                                                     sorted(search['states'].items())),
        f"- The search ran {_duration(search['wall_seconds'])} (first trial start to last trial end); "
        f"trials took {_duration(search['trial_seconds'])} in total",
        f"- Selected by validation `{best['metric']}` ({best['mode']}imised); MLflow parent run "
        f"`{study['parent_run_id']}`, best trial run `{study['run_id']}` at `{study['tracking_uri']}`",
        "",
        "Search space (as run):",
        "",
        "```yaml",
        space_text.rstrip(),
        "```",
        "",
        *_ensemble_section(config, summary),
        "## Best trial",
        "",
        f"Trial `{study['trial_id']}` ({best['state'].replace('_', ' ')} after {best['epochs_run']} epochs): "
        f"validation {best['metric']} {best['value']:.4f} at epoch {study['best_epoch']}.",
        "",
        "| searched parameter | value |",
        "|---|---|",
        *[f"| {key} | {json.dumps(config['trial_config'].get(key))} |" for key in best["searched"]],
        "",
        "All settings: `" + json.dumps(config["trial_config"], separators=(",", ":")) + "`",
        "",
        "## Metrics",
        "",
        *([reuse, ""] if reuse else []),
        "| metric | validation (best epoch, search) | test (exported model) |",
        "|---|---|---|",
    ]
    for key, label in _TEST_ROWS:
        val = summary["validation"].get("val_" + key[5:])
        lines.append(f"| {label} | {_number(val) if val is not None else '-'} | {_number(summary['test'][key])} |")
    lines += [
        "",
        f"Binary tasks count class 1, `{names[1]}`, as positive (`data.classes` in the space sets the order): "
        f"sensitivity is its recall, specificity the recall of class 0, `{names[0]}`; the accuracy, F1, "
        "sensitivity and specificity rows are at the argmax (probability 0.5), the operating point below is the "
        "export's own decision."
        if len(names) == 2 else "Sensitivity and specificity are macro averages over the classes (one vs rest).",
        "",
        *_decision_section(config, summary),
        "Test confusion matrix at the export's decision (rows: true class, columns: predicted class):",
        "",
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *[f"| {names[i]} | " + " | ".join(str(n) for n in row) + " |"
          for i, row in enumerate(summary["test_confusion_matrix"])],
        "",
        "![ROC curve on the test split](roc_curve.png) ![Confusion matrix on the test split](confusion_matrix.png) "
        "![Reliability diagram on the test split](reliability.png)",
        "",
        "## Use",
        "",
        f"Input: {model['input']}. Output: {model['output']}.",
        "",
        "Preprocessing (`config.json` → `preprocess`):",
        "",
        *[f"{i}. {step}" for i, step in enumerate(pre["steps"], start=1)],
        "",
        f"crop_size {json.dumps(pre['crop_size'])}, input_size {pre['input_size']}, in_chans {pre['in_chans']}, "
        f"mean {pre['mean']}, std {pre['std']}.",
        "",
        "```bash",
        "search predict EXPORT_DIR images/ --out predictions.csv",
        "```",
        "",
        "Files: " + ", ".join(f"`{name}`" for name in config["files"].values()) + ", `config.json`, "
        "`metrics.json`. Reloaded from these files, the weights, TorchScript and ONNX (onnxruntime) models were "
        "checked against PyTorch on test images: max abs difference in probabilities "
        + ", ".join(f"{k} {v:.1e}" for k, v in summary.get("format_max_abs_diff", {}).items()) + ".",
        "",
        "## Limits",
        "",
        "- The numbers hold for data like the test split: same source, scanner, population and preprocessing.",
        "- The test split was not used to choose anything; testing more models on it would spend it."
        if uses <= 1 else f"- The test split has been used {uses} times: its scores are no longer an unbiased "
        "estimate (see Metrics).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["model_card"]
