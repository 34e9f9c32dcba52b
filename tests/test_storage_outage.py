"""A study that survives its database restarting: a real PostgreSQL stopped and started mid-study."""

from __future__ import annotations

import os
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

COMPLETE = optuna.trial.TrialState.COMPLETE
TRIALS = 8


def _cmd(folder: Path, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search", "run", "--task", "digits", "--space", str(folder / "space.yaml"),
            "--device", str(folder / "profile.yaml"), "--trials", str(TRIALS), "--study", study,
            "--results", str(folder), "--no-progress", *extra]


def _wait_complete(url: str, study: str, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    storage = open_storage(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            done = sum(t.state == COMPLETE for t in optuna.load_study(study_name=study, storage=storage).get_trials())
        except KeyError:  # not created yet
            done = 0
        if done >= n:
            return
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{study}: {n} trials did not complete in {timeout} s")


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()


@pytest.mark.slow  # real worker processes against a real server
def test_two_workers_ride_out_a_postgresql_restart_and_every_trial_completes_once(tmp_path, digits_task, pg_server):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder, latency_ms=0.0001)  # hardware-infeasible: quick trials, no training
    proc = subprocess.Popen(_cmd(folder, "outage", "--workers", "2", "--storage", pg_server.url), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_complete(pg_server.url, "outage", 3, proc)
    pg_server.stop()  # what a failover or a restart does to the workers' connections
    time.sleep(8)
    pg_server.start()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "unreachable" in err and "back after" in err, err  # the workers noticed, and said so
    assert "Traceback" not in err, err
    trials = _trials(pg_server.url, "outage")
    assert len({t.number for t in trials}) == len(trials)
    # None failed or left behind; each plan once (two workers may both start the last trial: N or N + 1).
    assert all(t.state == COMPLETE for t in trials), [(t.number, t.state.name, t.user_attrs.get(T_FAIL_REASON))
                                                      for t in trials]
    assert TRIALS <= len(trials) <= TRIALS + 1
    assert len({t.user_attrs[T_WORKER] for t in trials}) == 2


@pytest.mark.slow
def test_past_the_retry_bound_one_line_exit_1_and_the_rerun_completes(tmp_path, digits_task, pg_server):
    folder = make_results(tmp_path, digits_task)
    write_configs(folder, latency_ms=0.0001)
    env = {**os.environ, "HWSEARCH_GRACE_S": "3"}  # the trial left running is failed and retried soon on rerun
    cmd = _cmd(folder, "down", "--storage", pg_server.url, "--storage-retry-s", "5")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_complete(pg_server.url, "down", 2, proc)
    pg_server.stop()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        pg_server.start()
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "retrying for up to" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "unreachable for" in lines[0] and "127.0.0.1" in lines[0] and "rerun the same command" in lines[0]

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    trials = _trials(pg_server.url, "down")
    assert sum(t.state == COMPLETE for t in trials) >= TRIALS
    # At most the one trial in flight when the storage went away is failed (then retried), none other.
    assert sum(t.state != COMPLETE for t in trials) <= 1, [(t.number, t.state.name) for t in trials]


def test_what_counts_as_an_outage():
    import sqlalchemy
    import sqlalchemy.exc
    from conftest import free_port

    from search.study.retry import transient

    # A real refused connection (nothing listens on the port), as psycopg2 and SQLAlchemy raise it.
    engine = sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        engine.connect()
    assert transient(refused.value)
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = refused.value  # how Optuna's RDBStorage hands it on
    assert transient(wrapped)
    # A query the database rejects, and a full disk, are not waited out.
    sqlite = sqlalchemy.create_engine("sqlite://")
    with pytest.raises(sqlalchemy.exc.OperationalError) as bad, sqlite.connect() as c:
        c.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert not transient(bad.value)
    assert not transient(OSError(28, "No space left on device"))
    assert transient(sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked")))
