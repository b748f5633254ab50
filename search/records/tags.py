"""Every MLflow tag and metric name medtune writes, named once.

A study is one parent run (``ROLE_TAG = "study"``) with one child run per trial. The
driver writes all of them; ``search list/best/report/--export`` and ``--resume`` read
them back, so a name changed here changes everywhere.
"""

from __future__ import annotations

# Parent run (the study).
STUDY_TAG = "medtune.study"
ROLE_TAG = "medtune.role"
STATUS_TAG = "medtune.status"            # running | interrupted | finished | no_trial_finished | failed
SPACE_TAG = "medtune.space"
SPACE_TAG_LIMIT = 7900  # characters of the space file the tag keeps (MLflow caps tag values at 8000)
GIT_COMMIT_TAG = "medtune.git_commit"
VERSIONS_TAG = "medtune.versions"
DATA_FINGERPRINT_TAG = "medtune.data_fingerprint"
DATA_SIZES_TAG = "medtune.data_sizes"
DATA_SKIPPED_TAG = "medtune.data_skipped"  # {"unreadable": n, "blank": m}
BEST_TRIAL_TAG = "medtune.best_trial_id"
BEST_RUN_TAG = "medtune.best_run_id"
BEST_LINK_TAG = "medtune.best_run_link"  # the best run's page in the MLflow UI (relative URL)
RESUME_TAG = "medtune.resume_command"
TRIAL_COUNT_PREFIX = "medtune.trials_"   # + state: how many trials are in it
DATA_GROUP_OVERLAP_TAG = "medtune.data_group_overlap"  # groups the source's own splits share (accepted)
TEST_USES_TAG = "medtune.test_uses"      # how many exports have evaluated on the test split
EXPORTED_TAG = "medtune.export.trial_id"  # the trial last exported (set by every export)
EXPORT_REFIT_TAG = "medtune.export.refit"  # whether that export was refit on train + val
EXPORT_TRAIN_IMAGES_TAG = "medtune.export.train_images"
TEST_CONFUSION_TAG = "medtune.test_confusion_matrix"

# Child runs (one per trial).
TRIAL_TAG = "medtune.trial_id"
CONFIG_TAG = "medtune.config"            # every setting at full precision (params are rounded for display)
STATE_TAG = "medtune.state"              # running | completed | stopped_early | errored | lost
SEARCHED_TAG = "medtune.searched"
LAST_EPOCH_TAG = "medtune.last_epoch"
BEST_EPOCH_TAG = "medtune.best_epoch"
STOPPED_BY_TAG = "medtune.stopped_by"    # asha | time budget
ERROR_TAG = "medtune.error"
NODE_TAG = "medtune.node_id"             # the Ray node a trial's latest epoch ran on
NODES_TAG = "medtune.nodes"              # every node it ran on, in order (more than one after a lost node)
NODE_IP_TAG = "medtune.node_ip"

# Trial states, in the order tables list them.
TRIAL_STATES = ("running", "completed", "stopped_early", "errored", "lost")
FINISHED_STATES = ("completed", "stopped_early")


def best_metric_tag(metric: str) -> str:
    """The child-run tag holding a trial's best value of ``metric`` (6 decimals)."""
    return f"medtune.best_{metric}"


# Metrics. Each epoch's report carries these (Tune adds its own bookkeeping keys, which
# are not logged); a trial's run holds each per epoch as ``epoch/<name>`` (step = epoch).
VALIDATION_METRICS = ("val_auc", "val_acc", "val_balanced_acc", "val_f1", "val_sensitivity", "val_specificity",
                      "val_loss")
SEARCH_METRICS = (*VALIDATION_METRICS, "train_loss")  # what a study may rank trials by
EPOCH_METRICS = (*SEARCH_METRICS, "lr", "trainable_params", "trainable_fraction", "epoch_seconds",
                 "images_per_second")
# A cross-validated trial also reports, per epoch, each fold's value and the spread of
# every validation metric (``val_auc_fold0``.., ``val_auc_std``) and the metrics of its
# pooled out-of-fold predictions (``oof_auc``...); its ``val_*`` are the fold means.
CV_SUFFIXES = ("_std",)
OOF_PREFIX = "oof_"


def cv_metric_keys(result: dict) -> list[str]:
    """The cross-validation keys of one report (none for a single-split trial), in report order."""
    return [key for key in result
            if isinstance(key, str) and (key.startswith(OOF_PREFIX) or any(
                key.startswith(metric + "_fold") or key == metric + "_std" for metric in VALIDATION_METRICS))]
CURVE_PREFIX = "epoch/"
# Logged under their own names for the selected (best) epoch only, so that the MLflow
# column ``val_auc`` is the value medtune ranks by, and its neighbours are that epoch's.
SELECTED_METRICS = (*SEARCH_METRICS, "trainable_params", "trainable_fraction")
# The parent run's summary metrics are prefixed, so sorting trials by val_auc never
# mixes the study's parent in among them.
STUDY_METRIC_PREFIX = "study_best_"


def curve(metric: str) -> str:
    """The per-epoch metric name of ``metric`` (``epoch/val_auc``)."""
    return CURVE_PREFIX + metric
