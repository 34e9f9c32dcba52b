"""Several workers on one study (SQLite, real PostgreSQL) and a worker SIGKILLed mid-trial (on both)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _study_fixtures import make_results, write_configs
from conftest import REPO

from search.study.record import T_FAIL_REASON, T_WORKER
from search.study.storage import open_storage

pytestmark = pytest.mark.slow  # several worker processes running real studies

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


def _cmd(folder: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search", "run", "--task", "digits", "--space", str(folder / "space.yaml"),
            "--device", str(folder / "profile.yaml"), "--trials", str(trials), "--study", study,
            "--results", str(folder), "--no-progress", *extra]


def _assert_distinct_and_complete(st: optuna.Study, n: int) -> set[str]:
    trials = st.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) >= n, [(t.number, t.state.name, t.user_attrs.get(T_FAIL_REASON)) for t in trials]
    return {t.user_attrs[T_WORKER] for t in complete}


def test_two_workers_share_one_sqlite_study(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder, latency_ms=0.0001)  # hardware-infeasible: fast trials, no training
    r = subprocess.run(_cmd(folder, "two", 8, "--workers", "2"), cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="two", storage=f"sqlite:///{folder / 'two' / 'study.db'}")
    workers = _assert_distinct_and_complete(st, 8)
    assert len(workers) == 2, workers


def test_two_workers_on_a_real_postgresql_study(tmp_path, digits_task, postgres):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder, latency_ms=0.0001)
    r = subprocess.run(_cmd(folder, "pg", 8, "--workers", "2", "--storage", postgres), cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="pg", storage=open_storage(postgres))
    workers = _assert_distinct_and_complete(st, 8)
    assert len(workers) == 2, workers


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkilled_worker_loses_nothing_and_the_rerun_completes(tmp_path, digits_task, backend, request):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder)  # feasible: trials train, so one is caught mid-trial
    env = {**os.environ, "HWSEARCH_GRACE_S": "3"}
    if backend == "sqlite":
        url, extra = f"sqlite:///{folder / 'kill' / 'study.db'}", ()
    else:
        url = request.getfixturevalue("postgres")
        extra = ("--storage", url)
    storage = url if backend == "sqlite" else open_storage(url)  # (psycopg2 needs our URL rewrite)
    proc = subprocess.Popen(_cmd(folder, "kill", 6, *extra), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                st = optuna.load_study(study_name="kill", storage=storage)
                states = [t.state for t in st.get_trials()]
            except Exception:  # the study is not created yet
                continue
            if states.count(COMPLETE) >= 2 and RUNNING in states:  # enqueued WAITING trials sit last
                break
        else:
            pytest.fail("the worker never got two trials done")
        time.sleep(1.0)  # well inside the running trial
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    st = optuna.load_study(study_name="kill", storage=storage)
    before = {t.number: t for t in st.get_trials() if t.state == COMPLETE}
    killed = [t.number for t in st.get_trials() if t.state == RUNNING]
    assert len(before) >= 2 and len(killed) == 1

    r = subprocess.run(_cmd(folder, "kill", 6, *extra), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="kill", storage=storage)
    after = {t.number: t for t in st.get_trials()}
    for n, t in before.items():  # nothing completed is lost: records and their artifact files
        assert after[n].state == COMPLETE and after[n].values == t.values
        art = folder / "kill" / "artifacts" / t.user_attrs["onnx_artifact_id"]
        assert art.is_file() and art.stat().st_size > 0
    assert after[killed[0]].state == FAIL  # the stale trial was failed...
    retried = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed[0]]
    assert retried and retried[0].state == COMPLETE  # ...and retried with the same parameters
    assert retried[0].params == after[killed[0]].params
    assert sum(t.state == COMPLETE for t in after.values()) >= 6


_OPEN_AT = """
import sys, time
from search.study.storage import open_storage
url, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
open_storage(url)
"""


def test_workers_opening_a_new_database_at_the_same_moment_all_get_it(tmp_path):
    """Workers started together on a database that does not exist yet race to create Optuna's tables; the
    losers see "table ... already exists" and must open the schema the winner made, not exit."""
    for attempt in range(3):  # three fresh databases: the race is lost at least once without the retry
        url = f"sqlite:///{tmp_path / f'race-{attempt}.db'}"
        at = time.time() + 6  # after every interpreter has imported optuna
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, url, str(at)], cwd=REPO, stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]
        errors = [err for p in procs if (err := p.communicate(timeout=120)[1]) and p.returncode != 0]
        assert not errors, errors[0][-600:]
        assert open_storage(url).get_all_studies() == []
