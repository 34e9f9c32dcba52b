"""How a run stops: Ctrl-C (kept until the next stage boundary), a full results disk, failures in a row.

Every stop keeps what finished: the study is stored trial by trial, and rerunning the same command resumes.
"""

from __future__ import annotations

import signal
import sys
import threading

import optuna

from search.errors import RunStopped
from search.study.record import T_FAIL_REASON


class CtrlC:
    """SIGINT as KeyboardInterrupt, remembered: Python drops an exception raised inside a finaliser or a GC
    callback (it only prints "Exception ignored in ..."), so a Ctrl-C landing there would be lost and the run
    would go on. `check()` raises it again at the next stage or trial boundary."""

    def __init__(self) -> None:
        self.hit = False
        self._previous = None
        self._hook = sys.unraisablehook

    def __enter__(self) -> CtrlC:
        # Only where Ctrl-C would interrupt anyway: not in a thread, not where SIGINT is ignored on purpose.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            sys.unraisablehook = self._hook

    def _unraisable(self, info) -> None:  # noqa: ANN001 - sys.UnraisableHookArgs
        if not (self.hit and isinstance(info.exc_value, KeyboardInterrupt)):  # ours: check() raises it again
            self._hook(info)

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


class FailureStreak:
    """Optuna callback: failed trials in a row as this worker finished them (a Ctrl-C'd one does not count)."""

    def __init__(self) -> None:
        self.count, self.last = 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL and T_FAIL_REASON in trial.user_attrs:
            self.count += 1
            self.last = f"trial {trial.number}: {trial.user_attrs[T_FAIL_REASON]}"
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            self.count = 0


_RESUME = "every finished trial is kept; rerun the same command to resume"


def disk_full_stop(full: str) -> RunStopped:
    return RunStopped(f"results disk full: {full}; {_RESUME} after freeing space")


def check_stop(full: str | None, streak: FailureStreak, max_failures: int) -> None:
    if full:
        raise disk_full_stop(full)
    if max_failures and streak.count >= max_failures:
        raise RunStopped(f"stopped after {streak.count} failed trials in a row (last {streak.last[:300]}); "
                         f"{_RESUME} once the cause is fixed (--max-failures 0 never stops)")
