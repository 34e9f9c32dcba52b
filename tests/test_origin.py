"""Where each front point came from (origin) and how long it was trained (budget), on real Optuna studies
built without training: every trial is written as the search would tag it."""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest

from search.config import SearchSpace
from search.inspect import compute_front
from search.inspect.front import FRONT_COLUMNS, Reference, budget_label
from search.inspect.report import ORIGIN_SYMBOLS, pareto_figure
from search.inspect.view import StudyData
from search.study.record import (
    DIRECTIONS,
    ORIGINS,
    S_SPACE,
    S_TEACHER,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_FEASIBLE,
    T_REFINED_FROM,
    T_SEEDED,
    T_TRAINED,
    TrialRecord,
    trial_origin,
)

SPACE = SearchSpace.model_validate({"name": "origin-tests", "distillation": {
    "budget": {"epochs": 1, "max_samples": 20000}, "refine": {"epochs": 3}}}).model_dump(mode="json")
TEACHER = {"accuracy": 0.9, "latency_ms": 10.0, "memory_mb": 20.0, "model_mb": 4.0}

# number: (user attrs, expected origin, expected budget); values make every trial non-dominated, so all
# of them are on the front. Trials 5 and 6 refine 3 (seeded) and 1 (uniform): refinements drop `seeded`.
TRIALS: dict[int, tuple[dict, str, str]] = {
    0: ({T_BASELINE: "teacher-fp32", T_TRAINED: False}, "baseline", "none"),
    1: ({T_BASELINE: "prune50-kd-fp32", T_TRAINED: True}, "uniform", "explore 1 ep ≤20000"),
    2: ({T_BASELINE: "prune70-kd-int8", T_TRAINED: True}, "uniform", "explore 1 ep ≤20000"),
    3: ({T_SEEDED: 0.5, T_TRAINED: True}, "allocated", "explore 1 ep ≤20000"),
    4: ({T_TRAINED: True}, "sampled", "explore 1 ep ≤20000"),
    5: ({T_REFINED_FROM: 3, T_BUDGET: "refine", T_TRAINED: True}, "allocated", "refine 3 ep"),
    6: ({T_REFINED_FROM: 1, T_BUDGET: "refine", T_BASELINE: "prune50-kd-fp32", T_TRAINED: True}, "uniform",
        "refine 3 ep"),
    7: ({T_SEEDED: 0.3, T_TRAINED: False}, "allocated", "none"),  # a hardware budget broken: not distilled
}


def _study() -> optuna.Study:
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_user_attr(S_SPACE, SPACE)
    study.set_user_attr(S_TEACHER, TEACHER)
    for n, (attrs, _, _) in TRIALS.items():
        attrs = {T_BUDGET: "explore", T_FEASIBLE: True, T_CONSTRAINTS: {"latency_ms": -1.0}, **attrs}
        study.add_trial(optuna.trial.create_trial(values=[0.9 - 0.01 * n, 10.0 - n, 20.0], user_attrs=attrs))
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={T_BUDGET: "explore"})
    study.add_trial(failed)  # trial 8: did not complete, so no budget is claimed for it
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return _study()


def test_trial_origin_of_each_kind(study):
    records = [TrialRecord.from_trial(t) for t in study.trials]
    by_number = {r.number: r for r in records}
    assert {n: trial_origin(by_number[n], by_number) for n in TRIALS} == {n: o for n, (_, o, _) in TRIALS.items()}
    assert set(ORIGINS) == {"baseline", "uniform", "allocated", "sampled"}
    # Without its source a refinement falls back on what it kept: the baseline name, never `seeded`.
    lone = {n: by_number[n] for n in (5, 6)}
    assert (trial_origin(lone[5], lone), trial_origin(lone[6], lone)) == ("sampled", "uniform")


def test_budget_label_in_steps_and_without_a_space():
    rec = TrialRecord(number=0, state="COMPLETE", values=(0.9, 1.0, 1.0), trained=True, budget="explore")
    steps = SearchSpace.model_validate({"name": "s", "distillation": {"budget": {"steps": 10, "max_samples": 512},
                                                                      "refine": {"steps": 40}}}).model_dump(mode="json")
    assert budget_label(rec, steps) == "explore 10 steps ≤512"
    refined = TrialRecord(number=1, state="COMPLETE", values=(0.9, 1.0, 1.0), trained=True, refined_from=0)
    assert budget_label(refined, steps) == "refine 40 steps"  # recorded before T_BUDGET: refined_from says
    assert budget_label(rec, None) == "explore"


def test_front_frame_and_csv_carry_origin_and_budget(study):
    cols = list(FRONT_COLUMNS)
    assert cols.index("origin") == cols.index("refined") + 1 and cols.index("budget") == cols.index("origin") + 1
    front = compute_front(study)
    assert list(front.columns) == cols and sorted(front.trial) == sorted(TRIALS)
    expected = {n: (o, b) for n, (_, o, b) in TRIALS.items()}
    assert {r.trial: (r.origin, r.budget) for r in front.itertuples()} == expected
    csv = pd.read_csv(io.StringIO(front.to_csv(index=False)), keep_default_na=False)
    assert {r.trial: (r.origin, r.budget) for r in csv.itertuples()} == expected
    every = compute_front(study, include_all=True)
    assert every.set_index("trial").loc[8, ["origin", "budget"]].tolist() == ["sampled", ""]


def test_pareto_plot_shapes_and_hover_name_the_origin(study, tmp_path):
    view = StudyData(name="origins", study=study, folder=tmp_path, results=tmp_path)
    fig = pareto_figure(view, "latency_ms", "latency (ms)", None, Reference(0.0, 20.0, 40.0, ""))
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    shapes = dict(zip(front.text, front.marker.symbol, strict=True))
    for hover, symbol in shapes.items():
        n = int(hover.split("trial ")[1].split("<")[0])
        _, origin, budget = TRIALS[n]
        assert f"origin {origin}, trained: {budget}" in hover and symbol == ORIGIN_SYMBOLS[origin]
    legend = {t.name for t in fig.data if t.name.startswith("origin ")}
    assert legend == {"origin baseline (1)", "origin uniform (3)", "origin allocated (3)", "origin sampled (1)"}
