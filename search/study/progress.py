"""The study's progress: trials done with ETA, the current trial's stage, the front size.

On a terminal, a live rich bar. In a log (a file, a pipe, CI), one plain line per finished trial (this
worker's and, as it notices them, other workers') and a heartbeat naming the running stage whenever a
minute passed without a line:

    trial 7 complete: accuracy 97.50%, speedup 2.31x (0.190 ms), feasible, front 3 | prune 0.1s, ... | 8/30 trials
    trial 8: distill (1m00s, trial 1m04s)
"""

from __future__ import annotations

import sys
import time
import warnings

import optuna

from search.metrics import show
from search.study.pareto import front_trials, is_feasible
from search.study.record import (
    OBJECTIVES,
    S_TEACHER,
    T_CONSTRAINTS,
    T_FAIL_REASON,
    T_STAGE_SECONDS,
    TrialRecord,
    metric_percent,
)
from search.utils.progress import PlainLog, fmt_duration, live_terminal, make_progress

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


def _seconds(s: float) -> str:
    """Stage times: tenths below 10 s (most stages of a small model take under one), else 3m07s."""
    return f"{s:.1f}s" if s < 10 else fmt_duration(s)


class TrialProgress:
    def __init__(self, study: optuna.Study, total: int, enabled: bool = True) -> None:
        self.study, self.total, self.enabled = study, total, enabled
        self._progress = None
        self._task = None
        self._log: PlainLog | None = None
        self._stage = ""
        self._front = 0
        self._done_n = 0
        self._reported: set[int] = set()
        self._t0 = time.monotonic()
        self._n0 = 0  # trials already finished when this run started (a resumed study): not in the ETA
        self._current: tuple[int, str, float, float] | None = None  # trial, stage, stage start, trial start
        self._waiting = False

    def __enter__(self) -> TrialProgress:
        if not self.enabled:
            return self
        finished = self.study.get_trials(deepcopy=False, states=FINISHED)
        self._done_n = self._n0 = len(finished)
        if live_terminal():
            self._progress = make_progress("[bold]trials")
            self._progress.__enter__()
            self._task = self._progress.add_task("trials", total=self.total, completed=self._done_n, status="")
        else:
            self._reported = {t.number for t in finished}  # a resumed study: report only what is new
            self._log = PlainLog(self._heartbeat).__enter__()
            self._log.emit(f"study {self.study.study_name}: {self._done_n}/{self.total} trials done; "
                           "one line per finished trial")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self.refresh()
            self._progress.__exit__(*exc)
        if self._log is not None:
            if exc[0] is None:
                self._report_new()
            self._log.__exit__(*exc)

    @staticmethod
    def name_objectives(study: optuna.Study) -> None:
        """Name the objectives in the storage, so every display of the study (these lines, optuna-dashboard's
        axes and tables) says accuracy / latency_ms / memory_mb instead of values 0, 1, 2."""
        if study.metric_names != list(OBJECTIVES):
            with warnings.catch_warnings():  # experimental in Optuna 5: a warning on every run says nothing
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(OBJECTIVES))

    def _done(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def _info(self) -> str:
        return f"{self._stage} | front {self._front}"

    def stage(self, trial_number: int, stage: str) -> None:
        self._stage = f"trial {trial_number}: {stage}"
        now = time.monotonic()
        started = self._current[3] if self._current and self._current[0] == trial_number else now
        self._current, self._waiting = (trial_number, stage, now, started), False
        if self._progress is not None:
            self._progress.update(self._task, status=self._info())

    def trial_done(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._current = None
        if self._log is not None:
            self._report_new()  # this trial's line, and any other worker's finished since the last one
            return
        try:
            self._front = len(front_trials(study))
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
        """Bring the display up to date: the runner calls it while it waits for other workers' trials."""
        if self._progress is not None:
            self._progress.update(self._task, completed=min(self._done(), self.total), status=self._info())
        if self._log is not None:
            self._waiting = self._current is None
            self._report_new()

    def _report_new(self) -> None:
        """A line for each trial finished since the last call, by this worker or another."""
        assert self._log is not None
        finished = self.study.get_trials(deepcopy=False, states=FINISHED)
        self._done_n = len(finished)
        new = sorted((t for t in finished if t.number not in self._reported), key=lambda t: t.number)
        if not new:
            return
        try:
            self._front = len(front_trials(self.study))
        except Exception:
            self._front = 0
        for t in new:
            self._reported.add(t.number)
            self._log.emit(self.trial_line(t))

    def trial_line(self, t: optuna.trial.FrozenTrial) -> str:
        """One finished trial: outcome, stage times, where the study stands."""
        ua = t.user_attrs
        if t.state == optuna.trial.TrialState.FAIL:
            head = f"trial {t.number} failed: {ua.get(T_FAIL_REASON) or 'interrupted or its worker died'}"
        else:
            head = f"trial {t.number} complete: {self._outcome(t)}, front {self._front}"
        stages = ua.get(T_STAGE_SECONDS) or {}
        parts = [head]
        if stages:
            parts.append(", ".join(f"{k} {_seconds(v)}" for k, v in stages.items())
                         + f" ({_seconds(sum(stages.values()))})")
        parts.append(self._where())
        return " | ".join(parts)

    def _outcome(self, t: optuna.trial.FrozenTrial) -> str:
        if not t.values:
            return "no objective values"
        accuracy, latency = t.values[0], t.values[1]
        teacher_ms = (self.study.user_attrs.get(S_TEACHER) or {}).get("latency_ms")
        speed = f"speedup {teacher_ms / latency:.2f}x" if teacher_ms and latency > 0 else "speedup ?"
        out = f"accuracy {show(accuracy, metric_percent(self.study.user_attrs))}, {speed} ({latency:.3f} ms), "
        if is_feasible(TrialRecord.from_trial(t)):
            return out + "feasible"
        broken = [k for k, v in (t.user_attrs.get(T_CONSTRAINTS) or {}).items() if v > 0]
        return out + f"infeasible (breaks {', '.join(broken)})" if broken else out + "infeasible"

    def _where(self) -> str:
        """n/total trials, elapsed and, once this run finished one, the ETA."""
        done = min(self._done_n, self.total)
        elapsed = time.monotonic() - self._t0
        out = f"{done}/{self.total} trials, elapsed {fmt_duration(elapsed)}"
        ran = self._done_n - self._n0
        if ran > 0 and done < self.total:
            out += f", eta {fmt_duration(elapsed / ran * (self.total - done))}"
        return out

    def _heartbeat(self) -> str:
        """The line for a silent minute (written from the heartbeat thread: reads attributes, no storage)."""
        cur, now = self._current, time.monotonic()
        if cur is not None:
            number, stage, stage_t0, trial_t0 = cur
            return f"trial {number}: {stage} ({fmt_duration(now - stage_t0)}, trial {fmt_duration(now - trial_t0)})"
        what = "waiting for other workers' trials" if self._waiting else "between trials"
        return f"{what} | front {self._front} | {self._where()}"
