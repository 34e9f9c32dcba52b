"""The front: exactly Optuna's best trials that the search recorded feasible, one value for every view."""

from __future__ import annotations

import io
import json

import optuna
import pandas as pd
import pytest
from _inspect_fixtures import cli_args, real_study_once
from conftest import run_cli

import search
from search.inspect import compute_front, load_study
from search.inspect.front import FRONT_COLUMNS, Reference, hypervolume, hypervolume_history
from search.plan import Plan
from search.study.pareto import nearest_front, pareto_ranks
from search.study.record import (
    OBJECTIVES,
    ORIGINS,
    S_TEACHER,
    T_BASELINE,
    T_CONSTRAINTS,
    T_FEASIBLE,
    T_METRICS,
    T_PLAN,
    T_PRECISION,
    T_PRUNED,
    T_TRAINED,
    TrialRecord,
)


@pytest.fixture(scope="module")
def real_study():
    return real_study_once()


def _expected(study: optuna.Study) -> dict[int, tuple[float, ...]]:
    """Written out independently of front.py: best trials, flagged feasible, every constraint <= 0."""
    return {t.number: tuple(t.values) for t in study.best_trials
            if t.user_attrs[T_FEASIBLE] and all(v <= 0 for v in t.user_attrs[T_CONSTRAINTS].values())}


@pytest.mark.slow  # the real study
def test_front_is_the_feasible_best_trials(real_study):
    view = load_study(real_study.name, results=real_study.results)
    expected = _expected(view.study)
    assert expected, "the test study should have a feasible front"
    front = view.front
    assert list(front.columns) == list(FRONT_COLUMNS)
    assert sorted(front.trial) == sorted(expected)
    for row in front.itertuples():
        assert tuple(getattr(row, o) for o in OBJECTIVES) == expected[row.trial]
    # One value: the function on the raw study, the view and the all-trials frame agree.
    pd.testing.assert_frame_equal(compute_front(view.study), front)
    everything = compute_front(view.study, include_all=True)
    assert len(everything) == len(view.study.trials)
    assert sorted(everything[everything.on_front].trial) == sorted(expected)
    # The study has infeasible trials too, and none of them reaches the front.
    assert (~everything.feasible).any() and not (everything.on_front & ~everything.feasible).any()


@pytest.mark.slow  # the real study
def test_derived_columns(real_study):
    view = load_study(real_study.name, results=real_study.results)
    teacher = view.study.user_attrs[S_TEACHER]
    trials = {t.number: t for t in view.study.trials}
    for row in view.all_trials[view.all_trials.state == "COMPLETE"].itertuples():
        t = trials[row.trial]
        summary = Plan.from_dict(t.user_attrs[T_PLAN]).summary()
        assert row.acc_change == pytest.approx((t.values[0] - teacher["accuracy"]) * 100)
        assert row.speedup == pytest.approx(teacher["latency_ms"] / t.values[1])
        assert row.model_mb == t.user_attrs[T_METRICS]["model_mb"]
        assert row.size_ratio == pytest.approx(row.model_mb / teacher["model_mb"])
        # labels are what runs: the channels removed, the layers ONNX Runtime runs with integer kernels
        pruned, precision = t.user_attrs[T_PRUNED], t.user_attrs[T_PRECISION]
        assert row.mean_prune == pytest.approx(sum(e["applied"] for e in pruned.values()) / len(pruned))
        assert row.quant_share == pytest.approx(
            sum(e["runs_as"] in ("int8", "int4") for e in precision.values()) / len(precision))
        assert row.temperature == summary["temperature"]
        # origin from the tags the search wrote (no refinement or seeded plan in this short study)
        name = t.user_attrs.get(T_BASELINE, "")
        assert row.origin == ("uniform" if name.startswith("prune") else "baseline" if name else "sampled")
        assert row.budget == ("explore 10 steps ≤512" if t.user_attrs[T_TRAINED] else "none")
    assert set(view.all_trials.baseline) >= {"teacher-fp32", "teacher-int8"}
    assert set(view.all_trials.origin) >= {"baseline", "uniform", "sampled"}


@pytest.mark.slow  # the real study
def test_cli_formats_show_the_same_front(real_study):
    view = load_study(real_study.name, results=real_study.results)
    numbers = sorted(_expected(view.study))
    r = run_cli("front", *cli_args(real_study), "--format", "csv")
    assert r.returncode == 0, r.stderr
    csv = pd.read_csv(io.StringIO(r.stdout))
    assert sorted(csv.trial) == numbers
    assert list(csv.accuracy) == list(view.front.accuracy)
    assert list(csv.origin) == list(view.front.origin) and list(csv.budget) == list(view.front.budget)
    r = run_cli("front", *cli_args(real_study), "--format", "json", "--all")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(x["trial"] for x in rows) == sorted(t.number for t in view.study.trials)
    assert sorted(x["trial"] for x in rows if x["on_front"]) == numbers
    assert all(x["origin"] in ORIGINS and x["budget"] for x in rows if x["state"] == "COMPLETE")
    r = run_cli("front", *cli_args(real_study))
    assert r.returncode == 0, r.stderr
    assert f"{len(numbers)} on the front" in r.stdout
    assert all(f"│ {n:>5} │" in r.stdout for n in numbers)
    assert "origin" in r.stdout and all(o in r.stdout for o in view.front.origin)


@pytest.mark.slow  # the real study
def test_storage_url_opens_the_same_study(real_study, tmp_path):
    url = f"sqlite:///{real_study.folder / 'study.db'}"
    by_url = load_study(url, results=real_study.results, study_name=real_study.name)
    by_name = search.load_study(real_study.name, results=real_study.results)  # the package-level name
    pd.testing.assert_frame_equal(by_url.front, by_name.front)
    assert by_url.artifacts_dir.is_dir() and by_url.profile == by_name.profile
    # A journal file elsewhere (as workers on many machines use): artifacts come from S_ARTIFACTS.
    journal = tmp_path / "study.log"
    optuna.copy_study(from_study_name=real_study.name, from_storage=url, to_storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    r = run_cli("front", "--study", real_study.name, "--storage", f"journal:{journal}", "--format", "csv",
                "--results", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(io.StringIO(r.stdout)).trial) == list(by_name.front.trial)
    journal_view = load_study(f"journal:{journal}", results=tmp_path)  # the only study: no name needed
    assert journal_view.artifacts_dir == by_name.artifacts_dir.resolve()


# ---- pure functions --------------------------------------------------------------------------------
REF = Reference(accuracy=0.0, latency_ms=1.0, memory_mb=1.0, note="")


def test_hypervolume_by_hand():
    assert hypervolume([(1.0, 0.0, 0.0)], REF) == pytest.approx(1.0)  # the ideal point fills the box
    assert hypervolume([(0.0, 1.0, 1.0)], REF) == 0.0  # on the reference point: nothing
    assert hypervolume([(0.5, 0.5, 0.5)], REF) == pytest.approx(0.125)
    # A: 0.5^3, B: 1 x 0.25 x 0.25, overlap 0.5 x 0.25 x 0.25.
    both = hypervolume([(0.5, 0.5, 0.5), (1.0, 0.75, 0.75)], REF)
    assert both == pytest.approx(0.125 + 0.0625 - 0.03125)
    assert hypervolume([(0.5, 0.5, 0.5), (0.4, 0.6, 0.6)], REF) == pytest.approx(0.125)  # dominated: no gain


def _record(n: int, values, feasible=True, state="COMPLETE") -> TrialRecord:
    return TrialRecord(number=n, state=state, values=values, plan=None, feasible=feasible,
                       constraints={"latency_ms": -1.0 if feasible else 1.0})


def test_ranks_and_history():
    recs = [_record(0, (0.9, 0.5, 0.5)), _record(1, (0.8, 0.6, 0.6)), _record(2, (0.95, 0.4, 0.4), feasible=False),
            _record(3, None, state="FAIL"), _record(4, (0.7, 0.2, 0.9))]
    ranks = pareto_ranks(recs)
    assert ranks == {0: 0, 4: 0, 1: 1, 2: 2}  # infeasible after every feasible rank; FAIL unranked
    assert nearest_front(recs, limit=3) == [0, 4, 1]
    hv = hypervolume_history(recs, REF)
    assert list(hv.trial) == [0, 1, 2, 3, 4]
    assert hv.hypervolume.iloc[0] == hv.hypervolume.iloc[3] == pytest.approx(0.9 * 0.5 * 0.5)
    assert hv.hypervolume.is_monotonic_increasing and hv.hypervolume.iloc[4] > hv.hypervolume.iloc[3]


@pytest.mark.slow  # the real study
def test_run_prints_the_same_front(real_study, capsys):
    from search.inspect.commands import print_front
    from search.pipeline import RunResult

    view = load_study(real_study.name, results=real_study.results)
    print_front(RunResult(study_name=real_study.name, storage_url=f"sqlite:///{real_study.folder / 'study.db'}",
                          results_dir=real_study.folder, n_complete=0, n_failed=0, front_trials=()))
    out = capsys.readouterr().out
    assert f"{len(view.front)} on the front" in out and all(f"│ {n:>5} │" in out for n in view.front.trial)


def test_trial_record_reads_each_field_from_its_attribute():
    """Every TrialRecord field comes from the user attribute the search writes under that field's key."""
    import dataclasses

    from search.study import record

    keys = {f.name: record._ATTR_KEYS.get(f.name, f.name) for f in dataclasses.fields(TrialRecord)
            if f.name not in record._OWN_FIELDS}
    written = {v for k, v in vars(record).items() if k.startswith("T_")}
    assert set(keys.values()) <= written  # no field reads a key the search never writes
    attrs = {key: f"value of {key}" for key in keys.values()}
    trial = optuna.trial.create_trial(values=[0.9, 1.0, 2.0], user_attrs=attrs)
    rec = TrialRecord.from_trial(trial, {str(trial.number): {"accuracy": 0.8}})
    assert {name: getattr(rec, name) for name in keys} == {name: f"value of {key}" for name, key in keys.items()}
    assert (rec.state, rec.values, rec.test) == ("COMPLETE", (0.9, 1.0, 2.0), {"accuracy": 0.8})
    bare = TrialRecord.from_trial(optuna.trial.create_trial(values=[0.9, 1.0, 2.0]))
    assert (bare.plan, bare.metrics, bare.feasible, bare.test) == (None, {}, False, None)
