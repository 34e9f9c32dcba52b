"""The study's progress line: trials done with ETA, the current trial's stage, the front size."""

from __future__ import annotations

import sys

import optuna

from search.study.record import T_FAIL_REASON, T_FEASIBLE


class TrialProgress:
    def __init__(self, study: optuna.Study, total: int, enabled: bool = True) -> None:
        self.study, self.total, self.enabled = study, total, enabled
        self._progress = None
        self._task = None
        self._stage = ""
        self._front = 0

    def __enter__(self) -> TrialProgress:
        if self.enabled:
            from search.utils.progress import make_progress

            self._progress = make_progress("[bold]trials")
            self._progress.__enter__()
            self._task = self._progress.add_task("trials", total=self.total, completed=self._done(), status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self.refresh()
            self._progress.__exit__(*exc)

    def _done(self) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def _info(self) -> str:
        return f"{self._stage} | front {self._front}"

    def stage(self, trial_number: int, stage: str) -> None:
        self._stage = f"trial {trial_number}: {stage}"
        if self._progress is not None:
            self._progress.update(self._task, status=self._info())

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            self._front = sum(1 for t in study.best_trials if t.user_attrs.get(T_FEASIBLE))
        except Exception:  # best_trials of an empty study
            self._front = 0
        self._stage = f"trial {trial.number}: {trial.state.name.lower()}"
        reason = trial.user_attrs.get(T_FAIL_REASON)
        if trial.state == optuna.trial.TrialState.FAIL and reason:
            line = f"trial {trial.number} failed: {reason}"
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=sys.stderr)
        self.refresh()

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=min(self._done(), self.total), status=self._info())
