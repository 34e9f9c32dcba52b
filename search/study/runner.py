"""The study, step by step: check the inputs, open the study, start the other workers, run the explore
trials, refine the most promising, hand the study back.

`search.run` (search/pipeline.py) calls `run_study` and then scores the front on the held-out split and
writes front.csv and report.html; this package stops at the search.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled

from search.config import SearchSpace, load_profile, load_space
from search.errors import RunStopped, UserError, disk_full
from search.study.record import (
    DIRECTIONS,
    S_ALLOCATION,
    S_ARTIFACTS,
    S_SENSITIVITY,
    T_BASELINE,
    T_BUDGET,
    T_FAIL_REASON,
    T_PREDICTED,
    T_REFINED_FROM,
    T_SEEDED,
)
from search.study.refine import enqueue_promotions, enqueue_refinements
from search.study.settings import RunSettings
from search.study.stops import CtrlC, FailureStreak, check_stop, disk_full_stop
from search.study.storage import fail_stale, make_sampler, open_storage


class StudyRun(NamedTuple):
    study: optuna.Study
    task: object  # the loaded search.Task (the outputs score the front on its test split)


def _explore(t: optuna.trial.FrozenTrial) -> bool:
    return t.user_attrs.get(T_BUDGET) != "refine" and t.user_attrs.get(T_REFINED_FROM) is None


def planned_draws(space: SearchSpace, trials: int, refine: int, n_train: int) -> int:
    """Training samples the study's distillations draw in all: explore, promotion rungs and refinements."""
    d = space.distillation
    draws = trials * d.budget.draws(n_train, d.batch_size) + refine * d.refine.draws(n_train, d.batch_size)
    if d.promote is not None:
        draws += refine * d.promote.candidates * d.promote.budget.draws(n_train, d.batch_size)
    return draws


def counted_trials(study: optuna.Study) -> int:
    """Explore trials that count toward N: finished ones and genuine failures (a dead worker's trial is
    retried, so it does not count), plus the ones running now."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if not _explore(t):
            continue
        done = t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        if done or (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(T_FAIL_REASON)):
            n += 1
    return n


def _any_explore(study: optuna.Study, state: optuna.trial.TrialState) -> bool:
    return any(_explore(t) for t in study.get_trials(deepcopy=False, states=(state,)))


def _check_folder(flag: str, folder: Path) -> None:
    """Fail fast, without creating anything, when `folder` cannot be created or written."""
    p = folder.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{flag}: {p} is a file, not a folder (cannot hold {folder})")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: no permission to write in {p}")


def _stop_children(children: list[subprocess.Popen]) -> None:
    """Ctrl-C the other workers (each re-queues its running trial) and wait for them."""
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGINT)
    for c in children:
        try:
            c.wait(timeout=60)
        except subprocess.TimeoutExpired:
            c.kill()


def _threads_per_worker(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


class _Run:
    """One process's part of a run; the steps share the opened study and the trial machinery."""

    def __init__(self, settings: RunSettings) -> None:
        self.s = settings
        self.children: list[subprocess.Popen] = []
        self.streak = FailureStreak()
        self.ctrl_c = CtrlC()
        self.deadline: float | None = None
        self.beaten: set[int] = set()  # RUNNING trials given one heartbeat on their worker's behalf (fail_stale)

    def check_inputs(self) -> None:
        """Bad files, folders or a study created with another setup: an error before anything is written."""
        s = self.s
        self.space, self.profile = load_space(s.space), load_profile(s.device)
        self.space.bits_for(self.profile, source=str(s.space))
        self.folders = (("--results", s.study_dir), ("--artifacts", s.artifacts_dir))
        for flag, folder in self.folders:
            _check_folder(flag, folder)
        self.storage = None
        if s.storage or Path(s.storage_url.removeprefix("sqlite:///")).is_file():  # an existing study
            from search.study.setup import check_same_setup

            self.storage = open_storage(s.storage_url, s.storage_retry_s)
            try:
                found = optuna.load_study(study_name=s.study, storage=self.storage)
            except KeyError:  # no such study yet
                pass
            else:
                check_same_setup(found, s.task, self.space, self.profile)

    def open(self) -> None:
        """Load the task, create (or join) the study, build this process's trial context."""
        from search.study.objective import Objective, teacher_over_budget
        from search.study.progress import TrialProgress
        from search.study.sampling import baseline_params
        from search.study.setup import build_context, check_same_setup
        from search.tasks import load_task

        s = self.s
        # The task before the study is created: a bad --task leaves no empty study behind.
        self.task = load_task(s.task, data_dir=s.data_dir, results_dir=s.results, train_on=s.train_on,
                              progress=s.progress)
        for flag, folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"{flag}: cannot create the folder {folder} ({e.strerror})") from None
        # Optuna's own failure warnings carry tracebacks; the progress line reports each failure in one line.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.storage = self.storage or open_storage(s.storage_url, s.storage_retry_s)
        st = self.study = optuna.create_study(
            study_name=s.study, storage=self.storage, directions=list(DIRECTIONS), load_if_exists=True,
            sampler=make_sampler(s.sampler, s.sampler_seed, s.trials))
        TrialProgress.name_objectives(st)  # st.set_metric_names(OBJECTIVES): named axes in optuna-dashboard
        check_same_setup(st, s.task, self.space, self.profile)
        ctx = build_context(st, self.task, self.space, self.profile, s.study_dir, seed=s.seed, train_on=s.train_on,
                            threads=_threads_per_worker(s.workers), task_spec=s.task, space_file=str(s.space),
                            profile_file=str(s.device))
        ctx.planned_draws = planned_draws(self.space, s.trials, s.refine, len(self.task.train))
        if s.worker_id == 0:
            if s.progress:  # with the progress lines (--no-progress: errors only)
                print(ctx.layers.summary(self.space.pruning.granularity, self.space.quantization.granularity),
                      file=sys.stderr, flush=True)
                if (over := teacher_over_budget(ctx.teacher_metrics, self.profile.budgets)) is not None:
                    print(over, file=sys.stderr, flush=True)
            st.set_user_attr(S_ARTIFACTS, str(s.artifacts_dir.resolve()))
            baselines = baseline_params(self.space, ctx.layers, ctx.bits, self.profile, uniform_curve=s.uniform_plans)
            for name, params in baselines.items():
                st.enqueue_trial(params, user_attrs={T_BASELINE: name}, skip_if_exists=True)
            if s.seeds_plans:
                self._enqueue_seeded(ctx, baselines)
        store = optuna.artifacts.FileSystemArtifactStore(str(s.artifacts_dir))
        self.bar = TrialProgress(st, total=s.trials + s.refine, enabled=s.progress)
        self.objective = Objective(ctx, store, on_stage=self.bar.stage, checkpoint=self.ctrl_c.check)

    def _enqueue_seeded(self, ctx, baselines: dict[str, dict]) -> None:
        """Sensitivity first (cached per task, profile, space and seed under results/sensitivity/, so a resumed
        or repeated study does not pay again), then one plan per latency target, after the baselines. A plan
        equal to a baseline is that baseline's trial: it is named in the allocation record, not run twice."""
        from search.seeding.allocate import seeded_trials, span_targets
        from search.seeding.sensitivity import PlanMeter, measure_sensitivity

        if any(T_SEEDED in t.user_attrs for t in self.study.get_trials(deepcopy=False)):
            return  # seeded when it began: a resume must not add plans from a table measured anew
        sens = measure_sensitivity(ctx, cache_dir=Path(self.s.results) / "sensitivity", progress=self.s.progress)
        work = ctx.study_dir / "tmp" / "allocation"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        meter = PlanMeter(ctx, work, progress=self.s.progress)
        try:  # each plan measured untrained and solved again while it misses its target (allocate.calibrate)
            targets = span_targets(sens, budget_ms=self.profile.budgets.latency_ms)
            plans = seeded_trials(sens, targets, max_model_mb=self.profile.budgets.model_mb, measure=meter)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.perf_counter() - t0
        as_baseline = {str(p["target"]): name for params, p in plans.values()
                       for name, b in baselines.items() if b == params}
        self.study.set_user_attr(S_ALLOCATION, {"sensitivity_s": sens.seconds, "sensitivity_cached": sens.cached,
                                                "allocation_s": round(seconds, 3), "plans_measured": meter.calls,
                                                "seeded": len(plans), "as_baseline": as_baseline})
        self.study.set_user_attr(S_SENSITIVITY, [  # the report's chart and load_study(...).sensitivity
            {"unit": r.unit, "kind": r.kind, "value": r.value, "accuracy_drop": r.accuracy_drop,
             "latency_saved_frac": r.latency_saved_frac} for r in sens.rows])
        if self.s.progress:
            within = sum(p.get("allocated_within", False) for _, p in plans.values())
            print(f"sensitivity: {len(sens.rows)} one-change variants ({sens.seconds:.0f} s, {sens.measurements} "
                  f"measurements); {len(plans)} seeded plans from {meter.calls} measured ({seconds:.0f} s), {within} "
                  "within their latency target"
                  + (f" ({len(as_baseline)} equal to a baseline: {', '.join(sorted(set(as_baseline.values())))})"
                     if as_baseline else ""),
                  file=sys.stderr, flush=True)
        for params, predicted in plans.values():
            if str(predicted["target"]) in as_baseline:
                continue
            self.study.enqueue_trial(params, user_attrs={T_SEEDED: predicted["target"], T_PREDICTED: predicted},
                                     skip_if_exists=True)

    def spawn_workers(self) -> None:
        if self.s.worker_id == 0 and self.s.workers > 1:
            self.children = [subprocess.Popen(self.s.worker_command(i), stdout=subprocess.DEVNULL)
                             for i in range(1, self.s.workers)]

    def run_trials(self) -> None:
        """Explore, wait for the other workers, refine; a stop ends the workers and is raised again."""
        self.deadline = time.monotonic() + self.s.timeout if self.s.timeout else None
        stop: BaseException | None = None
        try:
            with self.bar, self.ctrl_c:
                self._explore()
                self._wait_for_workers()
                if self.s.worker_id == 0 and self.s.refine:
                    self._refine()
        except (KeyboardInterrupt, RunStopped) as e:
            stop = e
        except Exception as e:  # a storage write refused on a full disk escapes optimize itself
            if (full := disk_full(e)) is not None:
                stop = disk_full_stop(full)
            elif (gone := getattr(self.storage, "gave_up", None)) is not None:
                stop = gone  # past --storage-retry-s (Optuna's tell may mask it with an error of its own)
            else:
                raise
        if stop is not None:
            _stop_children(self.children)
            raise stop

    def _in_time(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    def _one_trial(self) -> None:
        self.ctrl_c.check()
        self.study.optimize(self.objective, n_trials=1, catch=(Exception,),
                            callbacks=[self.bar.trial_done, self.streak])
        check_stop(self.objective.disk_full, self.streak, self.s.max_failures)

    def _explore(self) -> None:
        st = self.study
        heartbeats = is_heartbeat_enabled(self.storage)  # open_storage gives every RDB them
        while self._in_time():
            if counted_trials(st) < self.s.trials or _any_explore(st, optuna.trial.TrialState.WAITING):
                self._one_trial()
            elif heartbeats and _any_explore(st, optuna.trial.TrialState.RUNNING):
                # Another worker's trial: wait for it; if that worker died, its heartbeat goes
                # stale, the trial is failed and re-queued (WAITING), and we run it.
                fail_stale(st, self.storage, self.beaten)
                self.bar.refresh()
                time.sleep(1.0)
            else:
                return

    def _wait_for_workers(self) -> None:
        for c in self.children:
            while c.poll() is None:
                self.bar.refresh()
                time.sleep(0.5)

    def _queue_owed(self, enqueue, promote) -> int:
        """Trials waiting once `enqueue` has queued what is owed. A promotion or refinement still RUNNING here
        was left by a dead process (refinement runs on worker 0 after the others): wait until its heartbeat
        goes stale and it comes back WAITING, since it is owed like the rest (queueing again is idempotent)."""
        running = optuna.trial.TrialState.RUNNING
        while is_heartbeat_enabled(self.storage) and self._in_time() and any(
                not _explore(t) for t in self.study.get_trials(deepcopy=False, states=(running,))):
            fail_stale(self.study, self.storage, self.beaten)
            self.bar.refresh()
            time.sleep(1.0)
        return enqueue(self.study, self.s.refine, promote)

    def _refine(self) -> None:
        promote = self.space.distillation.promote
        for enqueue in (enqueue_promotions, enqueue_refinements):  # promotions first: they decide the bands' picks
            while self._queue_owed(enqueue, promote):  # re-counted after every trial
                if not self._in_time():
                    return
                self._one_trial()


def run_study(settings: RunSettings) -> StudyRun:
    """Run (or resume) the study of `settings` until it has its explore trials, then refine.

    Raises RunStopped (every finished trial kept) when the results disk fills up or `max_failures`
    trials in a row fail (0: never stop for failures), and KeyboardInterrupt after a clean Ctrl-C stop.
    """
    run = _Run(settings)
    run.check_inputs()
    run.open()
    run.spawn_workers()
    run.run_trials()
    return StudyRun(run.study, run.task)


__all__ = ["StudyRun", "counted_trials", "run_study"]
