"""`search.run`: the whole run a user asks for: the search (search.study), then, once every decision is
taken, the front scored on the held-out split, front.csv and report.html (search.inspect).

The orchestration lives here, above both stages, so that the study never imports the inspection code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.inspect.api import StudyView
    from search.study.settings import RunSettings


@dataclass(frozen=True)
class RunResult:
    study_name: str
    storage_url: str
    results_dir: Path
    n_complete: int
    n_failed: int
    front_trials: tuple[int, ...]

    def view(self) -> StudyView:
        """The study to inspect: `.front` (DataFrame), `.trials`, `.export(trial, out_dir)`, `.report()`."""
        from search.inspect import load_study

        return load_study(self.storage_url, results=self.results_dir.parent, study_name=self.study_name)


def run(task: str, space: str | Path, device: str | Path, trials: int, study: str, **options) -> RunResult:
    """Run (or resume) a study and write its outputs; `options` are the other fields of
    `search.study.settings.RunSettings` (storage, artifacts, workers, sampler, seed, timeout, results, refine,
    train_on, data_dir, progress, worker_id, write_outputs, max_failures, seed_plans, uniform_curve,
    storage_retry_s), as
    `hwsearch run`'s flags.

    Raises RunStopped (every finished trial kept) when the results disk fills up or `max_failures` trials in
    a row fail, and KeyboardInterrupt after a clean Ctrl-C stop.
    """
    from search.study.settings import RunSettings

    return run_settings(RunSettings(task, space, device, trials, study, **options))


def run_settings(settings: RunSettings) -> RunResult:
    import optuna

    from search.study.pareto import front_numbers
    from search.study.runner import run_study

    st, task = run_study(settings)
    finished = st.get_trials(deepcopy=False)
    result = RunResult(
        study_name=settings.study, storage_url=settings.storage_url, results_dir=settings.study_dir,
        n_complete=sum(t.state == optuna.trial.TrialState.COMPLETE for t in finished),
        n_failed=sum(t.state == optuna.trial.TrialState.FAIL for t in finished),
        front_trials=tuple(sorted(front_numbers(st))),
    )
    if settings.worker_id == 0 and settings.write_outputs:
        from search.inspect import write_outputs

        write_outputs(st, settings.study_dir, task=task)  # the held-out scoring: after every decision was taken
    return result
