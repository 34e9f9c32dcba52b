"""The search end to end on digits: real Optuna storage, real ONNX Runtime measurements, real training."""

from __future__ import annotations

import json

import optuna
import pytest
from _study_fixtures import make_results, space_text, write_configs

import search
from search.study.pareto import front_trials
from search.study.record import (
    BASELINES,
    S_TEACHER,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_FAIL_REASON,
    T_FEASIBLE,
    T_MEASUREMENT,
    T_METRICS,
    T_PLAN,
    T_REFINED_FROM,
    T_STAGE_SECONDS,
    T_TRAINED,
)

pytestmark = pytest.mark.slow  # real search.run studies on digits (minutes)


def _load(result) -> optuna.Study:
    return optuna.load_study(study_name=result.study_name, storage=result.storage_url)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, digits_task):
    folder = make_results(tmp_path_factory.mktemp("study"), digits_task)
    space, profile = write_configs(folder)
    result = search.run("digits", space, profile, trials=6, study="e2e", results=folder, refine=1, seed=3,
                        progress=False)
    return result, folder


def test_baselines_come_first_and_are_marked(study_run):
    st = _load(study_run[0])
    trials = st.get_trials()
    names = [t.user_attrs.get(T_BASELINE) for t in trials[: len(BASELINES)]]
    assert names == list(BASELINES)
    by_name = {t.user_attrs.get(T_BASELINE): t for t in trials[: len(BASELINES)]}
    assert not by_name["teacher-fp32"].user_attrs[T_TRAINED]  # nothing pruned: nothing to distil
    assert by_name["prune50-kd-int8"].user_attrs[T_TRAINED]
    assert set(by_name["prune50-kd-int8"].user_attrs[T_PLAN]["bits"].values()) == {8}
    assert set(by_name["prune50-kd-int8"].user_attrs[T_PLAN]["prune"].values()) == {0.5}


def test_every_front_point_satisfies_every_budget(study_run):
    result, folder = study_run
    st = _load(result)
    profile = search.load_profile(folder / "profile.yaml")
    front = front_trials(st)
    assert front and set(result.front_trials) == {t.number for t in front}
    for t in front:
        m = t.user_attrs[T_METRICS]
        assert m["latency_ms"] <= profile.budgets.latency_ms
        assert m["memory_mb"] <= profile.budgets.memory_mb
        assert m["model_mb"] <= profile.budgets.model_mb
        assert all(v <= 0 for v in t.user_attrs[T_CONSTRAINTS].values())
        assert t.values[0] == m["accuracy"] and t.values[1] == m["latency_ms"]
    # the front can never lose to a baseline: none dominates a front point
    teacher = st.user_attrs[S_TEACHER]
    assert teacher["accuracy"] >= 0.95


def test_trial_records_stages_artifacts_and_measurements(study_run):
    result, folder = study_run
    st = _load(result)
    store = optuna.artifacts.FileSystemArtifactStore(str(folder / "e2e" / "artifacts"))
    complete = st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) >= 6
    from search.measure.accuracy import onnx_accuracy
    from search.tasks.arrays import dataset_arrays

    t = next(t for t in complete if t.user_attrs[T_TRAINED])
    assert {"prune", "export", "quantize", "measure", "distill", "evaluate"} <= set(t.user_attrs[T_STAGE_SECONDS])
    assert t.user_attrs[T_MEASUREMENT]["latency"]["runs"] >= 30
    metas = optuna.artifacts.get_all_artifact_meta(t, storage=st._storage)
    assert {m.filename for m in metas} >= {"model.onnx", "plan.json"}
    onnx_path = folder / "check.onnx"
    optuna.artifacts.download_artifact(artifact_store=store, file_path=str(onnx_path),
                                       artifact_id=t.user_attrs["onnx_artifact_id"])
    x, y = dataset_arrays(search.load_task("digits", results_dir=folder, progress=False).val)
    assert onnx_accuracy(onnx_path, x, y) == t.values[0]  # the score is the stored file's


def test_refinement_retrains_a_front_point_with_the_longer_budget(study_run):
    st = _load(study_run[0])
    refined = [t for t in st.get_trials() if t.user_attrs.get(T_REFINED_FROM) is not None]
    assert len(refined) == 1
    r = refined[0]
    src = st.trials[r.user_attrs[T_REFINED_FROM]]
    assert r.user_attrs[T_BUDGET] == "refine" and r.params == src.params
    assert r.state == optuna.trial.TrialState.COMPLETE and r.user_attrs[T_TRAINED]
    # same structure: the cached measurement (a fresh one has never been re-checked), confirmed by one fresh round
    # (MeasurementCache._recheck). A check round that disagrees past 2 x agree re-measures it, and every such
    # replacement since the source's record shows in the count: a new figure without one would be a cache miss.
    m, before = r.user_attrs[T_MEASUREMENT], src.user_attrs[T_MEASUREMENT]
    assert m["rechecked"] > before["rechecked"]
    assert r.values[1] == pytest.approx(src.values[1]) or m["replaced"] > before["replaced"]


def test_rerun_resumes_without_new_trials(study_run):
    result, folder = study_run
    before = len(_load(result).trials)
    again = search.run("digits", folder / "space.yaml", folder / "profile.yaml", trials=6, study="e2e",
                       results=folder, refine=1, seed=3, progress=False)
    assert len(_load(again).trials) == before


def test_a_short_study_runs_the_teacher_live_instead_of_caching_its_logits(tmp_path, digits_task, study_run):
    """Cached logits cost one teacher pass over the whole training set; a study whose distillations draw fewer
    samples than that in all runs the teacher live and writes no logits file. The longer study above cached."""
    from search.config import load_space
    from search.study.runner import planned_draws

    folder = make_results(tmp_path, digits_task)
    space, profile = write_configs(folder, space_text(budget="{steps: 2}", refine="{steps: 2}"))
    n = len(digits_task.train)
    assert planned_draws(load_space(space), 3, 0, n) == 3 * 2 * 64 < n
    r = search.run("digits", space, profile, trials=3, study="live", results=folder, seed=0, progress=False,
                   seed_plans=False)
    assert any(t.user_attrs.get(T_TRAINED) for t in _load(r).get_trials())
    assert not list((folder / "teachers").glob("logits-*.pt"))
    assert planned_draws(load_space(study_run[1] / "space.yaml"), 6, 1, n) > n
    assert len(list((study_run[1] / "teachers").glob("logits-*.pt"))) == 1


def test_hardware_first_skips_training_and_same_seed_same_plans(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    space, profile = write_configs(folder, latency_ms=0.0001)  # nothing can meet it
    plans = []
    for name in ("tight-a", "tight-b"):
        r = search.run("digits", space, profile, trials=6, study=name, results=folder, seed=7, progress=False)
        st = _load(r)
        trials = st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(trials) == 6 and not r.front_trials
        for t in trials:
            assert t.user_attrs[T_TRAINED] is False and "distill" not in t.user_attrs[T_STAGE_SECONDS]
            assert t.user_attrs[T_FEASIBLE] is False
            assert t.user_attrs[T_CONSTRAINTS]["latency_ms"] > 0
            assert t.user_attrs[T_MEASUREMENT]["latency"]["p50_ms"] > 0  # infeasible trials keep measurements
        plans.append([json.dumps(t.user_attrs[T_PLAN], sort_keys=True) for t in trials])
    assert plans[0] == plans[1]


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, digits_task):
    folder = make_results(tmp_path, digits_task)
    space, profile = write_configs(folder)
    # T = 1e-45 overflows the scaled logits to inf: every distillation hits a NaN loss at step 0
    text = space.read_text().replace("{low: 1.0, high: 8.0, log: true}", "{low: 1.0e-45, high: 1.0e-45}")
    space.write_text(text.replace("[0.0, 0.25, 0.5]", "[0.0, 0.5]"))
    r = search.run("digits", space, profile, trials=5, study="nan", results=folder, seed=1, progress=False)
    st = _load(r)
    failed = st.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed, "a trained trial with a NaN loss must fail"
    assert all("non-finite loss at step" in t.user_attrs[T_FAIL_REASON] for t in failed)
    complete = st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {t.user_attrs.get(T_BASELINE) for t in complete} >= {"teacher-fp32", "teacher-int8"}
    assert len(failed) + len(complete) == 5
