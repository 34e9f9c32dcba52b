"""`search.run`: create or resume a study, run trials (in W processes), refine the best, write the outputs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from search.config import load_profile, load_space
from search.errors import RunStopped, UserError, disk_full
from search.study.record import (
    ACCURACY_CONSTRAINTS,
    BASELINES,
    DIRECTIONS,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_FAIL_REASON,
    T_FEASIBLE,
    T_REFINED_FROM,
    T_TRAINED,
)
from search.study.storage import default_url, make_sampler, open_storage


@dataclass(frozen=True)
class RunResult:
    study_name: str
    storage_url: str
    results_dir: Path
    n_complete: int
    n_failed: int
    front_trials: tuple[int, ...]

    def view(self):
        """The study to inspect: `.front` (DataFrame), `.trials`, `.export(trial, out_dir)`, `.report()`."""
        from search.inspect import load_study

        return load_study(self.storage_url, results=self.results_dir.parent, study_name=self.study_name)


def counted_trials(study: optuna.Study) -> int:
    """Explore trials that count toward N: finished ones and genuine failures (a dead worker's trial is
    retried, so it does not count), plus the ones running now."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(T_BUDGET) == "refine" or t.user_attrs.get(T_REFINED_FROM) is not None:
            continue
        done = t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        if done or (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(T_FAIL_REASON)):
            n += 1
    return n


def _explore(t: optuna.trial.FrozenTrial) -> bool:
    return t.user_attrs.get(T_BUDGET) != "refine" and t.user_attrs.get(T_REFINED_FROM) is None


def _waiting(study: optuna.Study) -> bool:
    return any(_explore(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _running(study: optuna.Study) -> bool:
    return any(_explore(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.best_trials if t.user_attrs.get(T_FEASIBLE)]


def _dominates(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
    """a is at least as good on every objective and better on one (accuracy max, the rest min)."""
    sa = (-a.values[0], *a.values[1:])
    sb = (-b.values[0], *b.values[1:])
    return all(x <= y for x, y in zip(sa, sb, strict=True)) and sa != sb


def pick_refine(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The K most promising trained trials not yet refined, fastest first, by their own Pareto layers.

    Promising: within the hardware budgets (the accuracy floor is not applied: a short-budget accuracy is
    what refinement is there to raise), and faster than every training-free feasible model (the teacher,
    its PTQ), since refining a slower one buys accuracy those already have at a better latency; the slower
    ones come last. Fastest first: the short budget costs the most accuracy at high pruning, and the slow
    end of the front is already held by the baselines.
    """
    if k <= 0:
        return []
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = {t.user_attrs.get(T_REFINED_FROM) for t in study.get_trials(deepcopy=False)}
    pool = [t for t in trials if t.user_attrs.get(T_TRAINED) and _within_budgets(t)
            and t.number not in done and t.user_attrs.get(T_REFINED_FROM) is None]
    free = [t.values[1] for t in trials if not t.user_attrs.get(T_TRAINED) and t.user_attrs.get(T_FEASIBLE)]
    fastest_free = min(free, default=float("inf"))
    chosen: list[optuna.trial.FrozenTrial] = []
    for group in ([t for t in pool if t.values[1] < fastest_free], [t for t in pool if t.values[1] >= fastest_free]):
        while group and len(chosen) < k:
            layer = sorted((t for t in group if not any(_dominates(o, t) for o in group)), key=lambda t: t.values[1])
            chosen += layer[: k - len(chosen)]
            group = [t for t in group if t not in layer]
    return chosen


def _within_budgets(t: optuna.trial.FrozenTrial) -> bool:
    constraints = t.user_attrs.get(T_CONSTRAINTS, {})
    return all(v <= 0 for name, v in constraints.items() if name not in ACCURACY_CONSTRAINTS)


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


_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESUME = "every finished trial is kept; rerun the same command to resume"


def _disk_full_stop(full: str) -> RunStopped:
    return RunStopped(f"results disk full: {full}; {_RESUME} after freeing space")


def _check_stop(full: str | None, streak: FailureStreak, max_failures: int) -> None:
    if full:
        raise _disk_full_stop(full)
    if max_failures and streak.count >= max_failures:
        raise RunStopped(f"stopped after {streak.count} failed trials in a row (last {streak.last[:300]}); "
                         f"{_RESUME} once the cause is fixed (--max-failures 0 never stops)")


def _check_folder(flag: str, folder: Path) -> None:
    """Fail fast, without creating anything, when `folder` cannot be created or written."""
    p = folder.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{flag}: {p} is a file, not a folder (cannot hold {folder})")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: no permission to write in {p}")


def _check_existing(storage: optuna.storages.BaseStorage, study: str, task: str, space, profile) -> None:
    from search.study.setup import check_same_setup

    try:
        found = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # no such study yet
        return
    check_same_setup(found, task, space, profile)


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


def _worker_cmd(args: dict, worker_id: int) -> list[str]:
    cmd = [sys.executable, "-m", "search", "run", "--worker-id", str(worker_id), "--no-progress", "--workers", "1"]
    for flag in ("task", "space", "device", "trials", "study", "storage", "artifacts", "sampler", "seed", "timeout",
                 "results", "train_on", "data_dir", "max_failures"):
        v = args.get(flag)
        if v is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(v)]
    return cmd


def run(task: str, space: str | Path, device: str | Path, trials: int, study: str, *, storage: str | None = None,
        artifacts: str | Path | None = None, workers: int = 1, sampler: str = "tpe", seed: int = 0,
        timeout: float | None = None, results: str | Path = "results", refine: int = 0, train_on: str = "auto",
        data_dir: str | Path | None = None, progress: bool = True, worker_id: int = 0,
        write_outputs: bool = True, max_failures: int = 10) -> RunResult:
    """Run (or resume) the study until it has `trials` explore trials, then refine `refine` front points.

    Raises RunStopped (every finished trial kept) when the results disk fills up or `max_failures`
    trials in a row fail (0: never stop for failures), and KeyboardInterrupt after a clean Ctrl-C stop.
    """
    if trials <= 0:
        raise UserError(f"--trials must be a positive number, got {trials}")
    if workers <= 0:
        raise UserError(f"--workers must be a positive number, got {workers}")
    if refine < 0:
        raise UserError(f"--refine must be 0 or more, got {refine}")
    if max_failures < 0:
        raise UserError(f"--max-failures must be 0 or more, got {max_failures}")
    if not _STUDY_NAME.fullmatch(study):
        raise UserError(f"--study {study!r}: use letters, digits, '.', '_' or '-', starting with a letter or "
                        "digit (it names the folder results/<study>/)")
    space_cfg, profile = load_space(space), load_profile(device)
    space_cfg.bits_for(profile, source=str(space))
    study_dir = Path(results) / study
    url = storage or default_url(study_dir)
    artifacts_dir = Path(artifacts) if artifacts else study_dir / "artifacts"
    folders = (("--results", study_dir), ("--artifacts", artifacts_dir))
    for flag, folder in folders:
        _check_folder(flag, folder)
    opened = None
    if storage or Path(url.removeprefix("sqlite:///")).is_file():  # an existing study: same setup?
        opened = open_storage(url)
        _check_existing(opened, study, task, space_cfg, profile)

    from search.tasks import load_task

    # The task before the study is created: a bad --task leaves no empty study behind.
    t = load_task(task, data_dir=data_dir, results_dir=results, train_on=train_on, progress=progress)
    for flag, folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag}: cannot create the folder {folder} ({e.strerror})") from None

    from search.study.objective import Objective
    from search.study.progress import TrialProgress
    from search.study.sampling import baseline_params
    from search.study.setup import build_context, check_same_setup

    # Optuna's own failure warnings carry tracebacks; the progress line reports each failure in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = opened or open_storage(url)
    st = optuna.create_study(study_name=study, storage=storage, directions=list(DIRECTIONS),
                             sampler=make_sampler(sampler, None if seed is None else seed + worker_id, trials),
                             load_if_exists=True)
    TrialProgress.name_objectives(st)  # st.set_metric_names(OBJECTIVES): named axes in optuna-dashboard
    check_same_setup(st, task, space_cfg, profile)
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                  // workers)
    ctx = build_context(st, t, space_cfg, profile, study_dir, seed=seed, train_on=train_on, threads=threads,
                        task_spec=task, space_file=str(space), profile_file=str(device))
    from search.study.record import S_ARTIFACTS

    if worker_id == 0:
        st.set_user_attr(S_ARTIFACTS, str(artifacts_dir.resolve()))
        for name, params in baseline_params(space_cfg, ctx.layers, ctx.bits, profile).items():
            st.enqueue_trial(params, user_attrs={T_BASELINE: name}, skip_if_exists=True)

    store = optuna.artifacts.FileSystemArtifactStore(str(artifacts_dir))
    heartbeats = isinstance(storage, optuna.storages.RDBStorage)  # open_storage gives every RDB heartbeats
    bar = TrialProgress(st, total=trials + refine, enabled=progress)
    ctrl_c = CtrlC()
    objective = Objective(ctx, store, on_stage=bar.stage, checkpoint=ctrl_c.check)
    children: list[subprocess.Popen] = []
    if worker_id == 0 and workers > 1:
        call = dict(task=task, space=space, device=device, trials=trials, study=study, storage=url,
                    artifacts=artifacts_dir, sampler=sampler, seed=seed, timeout=timeout, results=results,
                    train_on=train_on, data_dir=data_dir, max_failures=max_failures)
        children = [subprocess.Popen(_worker_cmd(call, i), stdout=subprocess.DEVNULL) for i in range(1, workers)]
    deadline = time.monotonic() + timeout if timeout else None
    streak = FailureStreak()

    def one_trial() -> None:
        ctrl_c.check()
        st.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[bar.trial_done, streak])
        _check_stop(objective.disk_full, streak, max_failures)

    stop: BaseException | None = None
    try:
        with bar, ctrl_c:
            while deadline is None or time.monotonic() < deadline:
                if counted_trials(st) < trials or _waiting(st):
                    one_trial()
                elif _running(st) and heartbeats:
                    # Another worker's trial: wait for it; if that worker died, its heartbeat goes
                    # stale, the trial is failed and re-queued (WAITING), and we run it.
                    optuna.storages.fail_stale_trials(st)
                    bar.refresh()
                    time.sleep(1.0)
                else:
                    break
            for c in children:
                while c.poll() is None:
                    bar.refresh()
                    time.sleep(0.5)
            if worker_id == 0 and refine:
                already = sum(x.user_attrs.get(T_REFINED_FROM) is not None for x in st.get_trials(deepcopy=False))
                for ft in pick_refine(st, refine - already):  # K in all, also across resumes
                    st.enqueue_trial(ft.params, user_attrs={T_REFINED_FROM: ft.number, T_BUDGET: "refine",
                                                            **({T_BASELINE: ft.user_attrs[T_BASELINE]}
                                                               if T_BASELINE in ft.user_attrs else {})})
                waiting = [x for x in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
                for _ in waiting:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    one_trial()
    except (KeyboardInterrupt, RunStopped) as e:
        stop = e
    except Exception as e:  # a storage write refused on a full disk escapes optimize itself
        if (full := disk_full(e)) is None:
            raise
        stop = _disk_full_stop(full)
    if stop is not None:
        _stop_children(children)
        raise stop
    finished = st.get_trials(deepcopy=False)
    result = RunResult(
        study_name=study, storage_url=url, results_dir=study_dir,
        n_complete=sum(x.state == optuna.trial.TrialState.COMPLETE for x in finished),
        n_failed=sum(x.state == optuna.trial.TrialState.FAIL for x in finished),
        front_trials=tuple(x.number for x in feasible_front(st)),
    )
    if worker_id == 0 and write_outputs:
        from search.inspect import write_outputs as _write_outputs

        _write_outputs(st, study_dir, task=t)  # the held-out scoring: after every decision was taken
    return result


__all__ = ["BASELINES", "CtrlC", "FailureStreak", "RunResult", "counted_trials", "feasible_front", "pick_refine", "run"]
