"""Why a study stopped: its time budget (one clock across driver runs) or a Ctrl-C.

Tune's own ``time_budget_s`` restarts (or half-restarts, from a pickled copy) when a study
is resumed, and nothing tells the driver afterwards whether ``fit()`` returned because
the study was done, the budget ran out, or the user pressed Ctrl-C. medtune needs to
know, to close each trial's MLflow run with the right state and to exit with the right
code, so it keeps the budget itself (:class:`BudgetStopper`, fed by a :class:`StudyClock`
that the study record persists) and watches for the interrupt (:class:`InterruptWatch`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from ray.tune.stopper import Stopper

# The clocks of the studies this driver process runs, by study folder URI. Tune pickles
# its stopper and callbacks into the study and ``Tuner.restore`` hands back copies, so the
# copies find the live clock here rather than carrying one.
_CLOCKS: dict[str, "StudyClock"] = {}


class StudyClock:
    """The wall-clock budget of one study, summed over every driver run of it.

    Args:
        budget_s: the study's budget in seconds, or None for no budget.
        spent_before_s: what earlier driver runs of the study used (from the record).
        persist: called with the seconds spent so far, at most every ``persist_every_s``
            (the driver writes them to the study record, so a killed driver loses at
            most that much of the account).
    """

    def __init__(self, budget_s: float | None, spent_before_s: float = 0.0,
                 persist: Callable[[float], None] | None = None, persist_every_s: float = 30.0) -> None:
        self.budget_s = budget_s
        self.spent_before_s = spent_before_s
        self._persist = persist
        self._persist_every_s = persist_every_s
        self._started: float | None = None
        self._persisted_at = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._persisted_at = self._started

    def spent_s(self) -> float:
        """Seconds of budget used, this driver run included."""
        running = time.monotonic() - self._started if self._started is not None else 0.0
        return self.spent_before_s + running

    def left_s(self) -> float | None:
        return None if self.budget_s is None else max(0.0, self.budget_s - self.spent_s())

    def exhausted(self) -> bool:
        return self.budget_s is not None and self.spent_s() >= self.budget_s

    def tick(self) -> None:
        """Persist the spent time when ``persist_every_s`` passed since the last time
        (only for a study with a budget: without one, the account is written at the end)."""
        now = time.monotonic()
        if self.budget_s is not None and self._persist is not None \
                and now - self._persisted_at >= self._persist_every_s:
            self._persisted_at = now
            self._persist(self.spent_s())


def register_clock(key: str, clock: StudyClock) -> None:
    _CLOCKS[key] = clock


def clock_for(key: str) -> StudyClock | None:
    return _CLOCKS.get(key)


class BudgetStopper(Stopper):
    """Stops the whole study when its :class:`StudyClock` runs out.

    Tune then stops every running trial (they end TERMINATED, with no completion event),
    and the MLflow logger closes them as stopped early by the time budget.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        clock = clock_for(self.key)
        if clock is None:
            return False
        clock.tick()
        return clock.exhausted()


class InterruptWatch:
    """Tells whether Tune's ``fit()`` returned because of a Ctrl-C (SIGINT).

    Tune installs its own SIGINT handler during ``fit()``: the first Ctrl-C makes it save
    the experiment and return normally, and it re-installs the handler that was there
    before, so that a second Ctrl-C stops at once (``search.study.ray_compat.SIGINT_CONTRACT``). This watch installs that "before"
    handler itself (it raises ``KeyboardInterrupt``, like Python's default), so after
    ``fit()`` it being installed again means a Ctrl-C came. Outside the main thread
    (where signals cannot be handled) it reports no interrupt.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._active = False

    @staticmethod
    def _second_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> "InterruptWatch":
        global _WATCH
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._second_interrupt)
            self._active = True
            _WATCH = self
        return self

    def interrupted(self) -> bool:
        """Whether Tune handed the SIGINT handler back (only it does, and only on a signal)."""
        tune_handles_it = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0")
        return self._active and tune_handles_it and signal.getsignal(signal.SIGINT) is self._second_interrupt

    def __exit__(self, *exc: Any) -> None:
        global _WATCH
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            _WATCH = None


_WATCH: InterruptWatch | None = None


def interrupted() -> bool:
    """Whether the study this driver runs now was interrupted by a Ctrl-C.

    Tune stops every trial as it shuts down after a Ctrl-C, so at ``on_experiment_end``
    they look ended; callbacks ask here before closing their runs (the study's last
    snapshot, taken before, still lists them as running, and ``--resume`` continues them).
    """
    return _WATCH is not None and _WATCH.interrupted()


__all__ = ["BudgetStopper", "InterruptWatch", "StudyClock", "clock_for", "interrupted", "register_clock"]
