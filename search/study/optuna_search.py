"""The study's Optuna searcher, on a real Optuna storage that ``optuna-dashboard`` reads live.

Where the Optuna study lives (:func:`optuna_storage`):

- ``MEDTUNE_OPTUNA_STORAGE`` set: that RDB URL (``postgresql://user@host/optuna``,
  ``sqlite:////shared/optuna.db``), for every study: one dashboard for a team's studies,
  and the only way to watch a study whose folder is a URI (``s3://...``);
- else, a study folder on this machine (or a shared mount): an Optuna journal file,
  ``<study>/optuna.journal`` (``optuna-dashboard <study>/optuna.journal``);
- else (a URI study folder, no RDB given): in memory, as Tune's OptunaSearch keeps it,
  said in one printed line.

The Optuna study is named after the medtune study and carries its MLflow parent run id
(study user attribute ``mlflow_parent_run_id``); each Optuna trial carries its Tune trial
id (``tune_trial_id``, the ``medtune.trial_id`` tag of its MLflow run), and, once ended,
``medtune_state`` and ``last_epoch`` as MLflow's tags say them.

How a trial ends in Optuna (Tune's OptunaSearch tells every trial that returned a value
COMPLETE with its last value, ASHA-stopped ones included, and leaves a NaN one RUNNING):

- COMPLETE with the last epoch's value: it ran the epochs it was configured for (its
  sampled ``epochs``, else the space's fixed ``epochs``, else TrialConfig's default);
- PRUNED: it ended before them, stopped by ASHA (or the time budget). Optuna gives a
  pruned trial its last intermediate value as value;
- FAIL: it errored (Tune saw an exception), or ended with medtune's failure result
  (:data:`search.study.trainable.FAILURE_KEY`, NaN metrics), or ended with no value at all.

Every epoch's metric is an intermediate value at step = epoch, the last one included
(Tune does not pass a searcher the result on which a scheduler stops a trial, nor a
trial's final epoch under ASHA, so they are reported when the trial ends).

What this means to TPE: it splits the trials it learns from into good and bad by
ranking COMPLETE trials by value first, then PRUNED trials by how far they got (the
last step with an intermediate value) and, among those, by their last intermediate
value; a pruned trial only fills good slots that complete trials leave, so an early
stopped trial's early value is not compared as an equal to a finished trial's. FAIL
trials are left out, as Optuna leaves out every failed trial: TPE does not learn to avoid
a region that fails every time (an lr so high the loss overflows), where Tune's
OptunaSearch, leaving such a trial RUNNING, had its constant liar count it as bad.
RUNNING trials count as bad while they run (constant liar, see
:func:`search.space.sampling.sampler_for`). TPE samples at random until
``startup_trials`` trials have ended COMPLETE or PRUNED (FAIL ones do not count).

Resume: Tune pickles the searcher into ``tuner.pkl`` at the study's start (before the
Optuna study exists: the journal file is created at the first trial, after the study
record, so a driver killed before that leaves only Tune's pickle) and into its
experiment snapshots, storage included (Optuna's storages pickle as their file path or
URL and reopen on use). A resumed searcher reopens the same Optuna study and keeps
telling the trials it had asked for; a trial it asked for that Tune's last snapshot
does not know (the driver died in between: Tune starts another instead) is told FAIL
with ``medtune_state: lost``, so the dashboard shows no trial running forever. A study
folder moved elsewhere keeps writing to the journal where it was (the path is pickled).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from search.records.storage import StudyFiles
from search.study.trainable import FAILURE_KEY
from trainables.config import TrialConfig

logger = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"
STORAGE_ENV = "MEDTUNE_OPTUNA_STORAGE"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
TUNE_TRIAL_ATTR = "tune_trial_id"
STATE_ATTR = "medtune_state"
EPOCH_ATTR = "last_epoch"
ERROR_ATTR = "medtune_error"


def _masked(url: str) -> str:
    """An RDB URL without its password (for printing)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: print nothing of it
        return "<" + STORAGE_ENV + ">"


@dataclass(frozen=True)
class OptunaStorage:
    """Where a study's Optuna study is kept: ``kind`` is ``journal`` (``location`` a file),
    ``rdb`` (``location`` a SQLAlchemy URL) or ``memory``."""

    kind: str
    location: str | None = None

    def open(self) -> optuna.storages.BaseStorage | None:
        """The Optuna storage (the journal file is created here), or None for in-memory."""
        if self.kind == "journal":
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            return JournalStorage(JournalFileBackend(str(self.location)))
        if self.kind == "rdb":
            return optuna.storages.RDBStorage(str(self.location))
        return None

    def dashboard_command(self) -> str | None:
        """The ``optuna-dashboard`` command that shows the study, or None (in memory)."""
        if self.kind == "journal":
            return f"optuna-dashboard {shlex.quote(str(self.location))}"
        if self.kind == "rdb":
            return f"optuna-dashboard {shlex.quote(_masked(str(self.location)))}"
        return None

    def describe(self, directory: StudyFiles) -> str:
        """One line for the driver's output: where the Optuna study is and how to watch it."""
        command = self.dashboard_command()
        if command is not None:
            return f"study {directory.name}: Optuna study {directory.name!r}, watch it live with: {command}"
        return (f"study {directory.name}: Optuna study kept in memory ({directory.uri} is not on this machine); "
                f"set {STORAGE_ENV} to an RDB URL (postgresql://..., sqlite:////shared/optuna.db) to watch it "
                "in optuna-dashboard")


def optuna_storage(directory: StudyFiles, space_path: str | Path = "space") -> OptunaStorage:
    """The Optuna storage of a new study (see the module); an RDB URL is checked here.

    Raises:
        SpaceError: ``MEDTUNE_OPTUNA_STORAGE`` is set to something Optuna cannot open.
    """
    url = os.environ.get(STORAGE_ENV, "").strip()
    if url:
        storage = OptunaStorage("rdb", url)
        try:
            storage.open()
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors alike
            from search.space import SpaceError

            raise SpaceError(space_path, STORAGE_ENV, f"Optuna cannot open {_masked(url)} "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                             "give an RDB URL Optuna opens (postgresql://USER@HOST/DB, "
                             "sqlite:////shared/optuna.db), or unset it") from None
        return storage
    if directory.is_local:
        return OptunaStorage("journal", str(Path(directory.uri) / JOURNAL_FILE))
    return OptunaStorage("memory")


class StudySearch(OptunaSearch):
    """Tune's OptunaSearch on the study's Optuna storage, telling Optuna how trials ended.

    See the module for the storage, the states (COMPLETE / PRUNED / FAIL), what TPE makes
    of them, and resume.

    Args:
        space: the define-by-run function (:class:`search.space.sampling.DefineByRun`).
        sampler: the seeded sampler (:func:`search.space.sampling.sampler_for`).
        metric, mode: the study's objective.
        storage: where the Optuna study lives (:func:`optuna_storage`).
        study_name: the medtune study's name, the Optuna study's (a study of that name
            from another medtune study in a shared RDB gets ``-<run id>`` appended).
        fixed: the space's fixed params (their ``epochs``).
        parent_run_id: the study's MLflow parent run, which tells its Optuna study from
            another's of the same name.
    """

    def __init__(self, space: Any, sampler: optuna.samplers.BaseSampler, metric: str, mode: str, *,
                 storage: OptunaStorage, study_name: str, fixed: dict[str, Any], parent_run_id: str) -> None:
        self._medtune_storage = storage
        self._medtune_study = study_name
        self._fixed_epochs = int(fixed.get("epochs", TrialConfig.epochs))
        self._parent_run_id = parent_run_id
        self._direction = mode
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler, study_name=study_name)

    # -- the Optuna study, opened at the first trial ---------------------------------------------

    def _setup_study(self, mode: str | list) -> None:
        """Deferred to the first trial (:meth:`_ensure_study`): the journal file must not
        appear in the study folder before the study record (see the module)."""
        self._direction = mode

    def _ensure_study(self) -> None:
        if self._ot_study is not None:
            return
        if self._storage is None:
            self._storage = self._medtune_storage.open()
        direction = "minimize" if self._direction == "min" else "maximize"
        if self._storage is None:
            self._ot_study = optuna.create_study(sampler=self._sampler, pruner=optuna.pruners.NopPruner(),
                                                 study_name=self._study_name, direction=direction)
            return
        for name in (self._medtune_study, f"{self._medtune_study}-{self._parent_run_id[:8]}"):
            try:
                existing = self._storage.get_study_id_from_name(name)
            except KeyError:
                existing = None
            if existing is not None and \
                    self._storage.get_study_user_attrs(existing).get(PARENT_RUN_ATTR) != self._parent_run_id:
                continue  # another medtune study's, in a shared RDB
            study = optuna.create_study(storage=self._storage, sampler=self._sampler,
                                        pruner=optuna.pruners.NopPruner(), study_name=name, direction=direction,
                                        load_if_exists=True)
            if existing is None:
                study.set_user_attr(PARENT_RUN_ATTR, self._parent_run_id)
                study.set_user_attr("medtune_study", self._medtune_study)
                with warnings.catch_warnings():  # experimental since Optuna 3.2, still
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([str(self.metric)])  # the dashboard's axis label
                if name != self._medtune_study:
                    print(f"study {self._medtune_study}: {self._medtune_storage.dashboard_command()} holds another "
                          f"study named {self._medtune_study!r}: this one's Optuna study is {name!r}", flush=True)
            self._study_name = name
            self._ot_study = study
            self._fail_orphans()  # a study reopened from tuner.pkl alone (no searcher snapshot)
            return
        raise RuntimeError(f"the Optuna storage {self._medtune_storage.dashboard_command()} holds other studies "
                           f"named {self._medtune_study!r} and {name!r}")

    def _fail_orphans(self) -> None:
        """Tell FAIL the trials this searcher asked for but Tune does not know any more."""
        known = {trial._trial_id for trial in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id in known:
                continue
            try:
                self._ot_study._storage.set_trial_user_attr(frozen._trial_id, STATE_ATTR, "lost")
                self._ot_study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as exc:  # noqa: BLE001 - a trial another process ended meanwhile
                logger.warning("could not close Optuna trial %s: %s", frozen.number, exc)

    # -- Tune's searcher hooks -------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        self._ensure_study()
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_study._storage.set_trial_user_attr(self._ot_trials[trial_id]._trial_id, TUNE_TRIAL_ATTR,
                                                        trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials[trial_id]
        storage = self._ot_study._storage
        try:
            if storage.get_trial(ot_trial._trial_id).state.is_finished():
                return  # told before a driver restart: Tune ran it again only to end it
            if result and not error and FAILURE_KEY not in result:
                self._report(trial_id, result)  # the epoch a scheduler stopped it at, or its last
            state, value, label, epoch = self._outcome(ot_trial, result or {}, error)
            storage.set_trial_user_attr(ot_trial._trial_id, STATE_ATTR, label)
            storage.set_trial_user_attr(ot_trial._trial_id, EPOCH_ATTR, epoch)
            if result and FAILURE_KEY in result:
                lines = str(result[FAILURE_KEY]).strip().splitlines()
                storage.set_trial_user_attr(ot_trial._trial_id, ERROR_ATTR, (lines[-1] if lines else "")[:300])
            self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - Optuna's bookkeeping must not stop the study
            # GridSampler calls Study.stop() after the last grid point, which raises outside
            # Study.optimize once the state is stored: only a trial left unfinished is worth a word.
            if not storage.get_trial(ot_trial._trial_id).state.is_finished():
                logger.warning("could not tell Optuna how trial %s ended: %s", trial_id, exc)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._ot_study is not None:
            self._fail_orphans()

    # -- helpers ---------------------------------------------------------------------------------

    def _report(self, trial_id: str, result: dict) -> None:
        """The result's metric as the trial's intermediate value at step = epoch, once."""
        ot_trial = self._ot_trials.get(trial_id)
        value, step = result.get(self.metric), result.get("epoch", result.get(TRAINING_ITERATION))
        if ot_trial is None or FAILURE_KEY in result or value is None or step is None:
            return
        try:
            value, step = float(value), int(step)
        except (TypeError, ValueError):
            return
        if not math.isfinite(value) or step < 0:
            return
        storage = self._ot_study._storage
        frozen = storage.get_trial(ot_trial._trial_id)
        if frozen.state.is_finished() or step in frozen.intermediate_values:
            return  # a resumed trial re-reports an epoch, or Tune repeats the last result
        storage.set_trial_intermediate_value(ot_trial._trial_id, step, value)
        ot_trial._cached_frozen_trial.intermediate_values[step] = value

    def _configured_epochs(self, ot_trial: optuna.Trial) -> int:
        sampled = self._ot_study._storage.get_trial(ot_trial._trial_id).params.get("epochs")
        return int(sampled) if sampled is not None else self._fixed_epochs

    def _outcome(self, ot_trial: optuna.Trial, result: dict,
                 error: bool) -> tuple[TrialState, float | None, str, int]:
        """``(state, value, medtune state, last epoch)`` of a trial Tune ended."""
        epoch = int(result.get("epoch", result.get(TRAINING_ITERATION, 0)) or 0)
        if error or FAILURE_KEY in result:
            return TrialState.FAIL, None, "errored", epoch
        value = result.get(self.metric)
        try:
            value = float(value) if value is not None else None
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value):
            reported = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
            if reported:
                return TrialState.PRUNED, None, "stopped_early", epoch
            return TrialState.FAIL, None, "no result", epoch
        if epoch >= self._configured_epochs(ot_trial):
            return TrialState.COMPLETE, value, "completed", epoch
        return TrialState.PRUNED, None, "stopped_early", epoch


__all__ = ["JOURNAL_FILE", "STORAGE_ENV", "OptunaStorage", "StudySearch", "optuna_storage"]
