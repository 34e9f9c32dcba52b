"""A refinement that a dead process left RUNNING is owed: the resumed study waits for it to go stale and runs it."""

from __future__ import annotations

import time

import optuna
import pytest
from _study_fixtures import TINY_SPACE, make_results, write_configs

import search
import search.study.storage as storage_mod
from search.study.record import T_BUDGET, T_REFINED_FROM

pytestmark = pytest.mark.slow  # two short real studies on digits


def test_a_refinement_left_running_by_a_dead_process_runs_on_resume(tmp_path, digits_task, monkeypatch):
    monkeypatch.setattr(storage_mod, "GRACE_S", 2)  # a dead trial goes stale within seconds, not 40
    folder = make_results(tmp_path, digits_task)
    space, profile = write_configs(folder, TINY_SPACE.replace("bits: [32, 8]", "bits: [32]"))
    kw = dict(trials=4, study="dead", results=folder, seed=5, progress=False, seed_plans=False,
              write_outputs=False)
    result = search.run("digits", space, profile, refine=1, **kw)
    storage = storage_mod.open_storage(result.storage_url)
    st = optuna.load_study(study_name="dead", storage=storage)
    refined = {t.user_attrs[T_REFINED_FROM] for t in st.get_trials() if t.user_attrs.get(T_BUDGET) == "refine"}
    source = next(t for t in st.get_trials() if t.user_attrs.get("trained") and t.number not in refined
                  and t.user_attrs.get(T_REFINED_FROM) is None)
    # What a process killed mid-refinement leaves: a RUNNING refinement with a heartbeat that stops.
    st.enqueue_trial(source.params, user_attrs={T_REFINED_FROM: source.number, T_BUDGET: "refine"})
    dead = st.ask()
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3)

    search.run("digits", space, profile, refine=2, **kw)  # K=2: the dead one is the second, not a new pick
    trials = st.get_trials()
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    redo = [t for t in trials if t.number > dead.number and t.user_attrs.get(T_REFINED_FROM) == source.number]
    assert len(redo) == 1 and redo[0].state == optuna.trial.TrialState.COMPLETE
    assert redo[0].user_attrs[T_BUDGET] == "refine"
    complete = [t for t in trials if t.user_attrs.get(T_BUDGET) == "refine" and t.state.name == "COMPLETE"]
    assert len(complete) == 2  # nothing lost, nothing run twice
