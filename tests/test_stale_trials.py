"""A trial whose worker died before its first heartbeat is failed and retried, not waited for forever.

Optuna judges a RUNNING trial only by its heartbeat row; a worker killed between creating a trial and its first
beat (a PostgreSQL outage did this in the outage test, which then hung until its timeout) leaves none."""

from __future__ import annotations

import time

import optuna

from search.study import storage as storage_module
from search.study.storage import fail_stale, open_storage

RUNNING, FAIL, WAITING = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL,
                          optuna.trial.TrialState.WAITING)


def test_a_trial_without_a_heartbeat_is_failed_and_requeued_while_a_live_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module, "GRACE_S", 2)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="stale", storage=storage, directions=["maximize"])
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its worker died: never beats
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its worker beats on
    time.sleep(3)
    storage.record_heartbeat(live._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[orphan.number].state == RUNNING  # Optuna alone would wait for it forever

    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and study.trials[orphan.number].state == RUNNING:
        storage.record_heartbeat(live._trial_id)
        fail_stale(study, storage, seen)
        time.sleep(0.5)
    trials = study.trials
    assert trials[orphan.number].state == FAIL
    assert trials[live.number].state == RUNNING  # a beating worker's trial is left alone
    retry = [t for t in trials if t.state == WAITING]
    assert len(retry) == 1 and retry[0].params == trials[orphan.number].params  # re-queued, same plan
