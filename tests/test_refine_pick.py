"""Which front points `--refine K` retrains: the choice on a real (in-memory) Optuna study."""

from __future__ import annotations

import optuna

from search.config.space import Promote, TrainBudget
from search.study.record import (
    DIRECTIONS,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_FEASIBLE,
    T_REFINED_FROM,
    T_SEEDED,
    T_TRAINED,
)
from search.study.refine import enqueue_promotions, enqueue_refinements, pick_promote, pick_refine


def _add(st: optuna.Study, acc: float, lat: float, trained: bool = True, latency_slack: float = -1.0,
         drop_slack: float = -0.01, **attrs) -> None:
    constraints = {"latency_ms": latency_slack, "memory_mb": -5.0, "max_accuracy_drop": drop_slack}
    st.add_trial(optuna.trial.create_trial(values=[acc, lat, 10.0], user_attrs={
        T_TRAINED: trained, T_CONSTRAINTS: constraints,
        T_FEASIBLE: all(v <= 0 for v in constraints.values()), **attrs}))


def _study(points: list[tuple[float, float, bool]]) -> optuna.Study:
    """points: (accuracy, latency_ms, trained); all within budgets, memory equal."""
    st = optuna.create_study(directions=list(DIRECTIONS))
    for acc, lat, trained in points:
        _add(st, acc, lat, trained)
    return st


def test_faster_than_every_training_free_model_comes_first_by_latency_band():
    st = _study([
        (0.93, 0.140, False),  # 0: fp32 teacher
        (0.92, 0.120, False),  # 1: its int8 PTQ: the fastest training-free model
        (0.925, 0.130, True),  # 2: front point, but slower than the PTQ: refining it buys nothing new
        (0.90, 0.100, True),  # 3
        (0.88, 0.080, True),  # 4
        (0.85, 0.060, True),  # 5
        (0.80, 0.050, True),  # 6: fastest
        (0.79, 0.090, True),  # 7: dominated by 4
    ])
    # Three bands of log-latency over 0.05..0.10 ms: the best of each non-empty band (0.05-0.063: 5; the
    # middle band is empty; 0.079-0.10: 3), then the rest of the fast front, fastest first.
    assert [t.number for t in pick_refine(st, 3)] == [5, 3, 6]
    assert [t.number for t in pick_refine(st, 1)] == [3]  # one band: the most accurate fast point
    # More than the fast candidates: the slow one (2) comes last.
    picked = [t.number for t in pick_refine(st, 7)]
    assert sorted(picked) == [2, 3, 4, 5, 6, 7] and picked[-1] == 2


def test_the_uniform_plan_nearest_each_refined_searched_point_is_refined_beside_it():
    st = _study([(0.93, 0.140, False), (0.92, 0.120, False)])  # 0, 1: training-free
    _add(st, 0.90, 0.100, **{T_SEEDED: 0.7})  # 2: allocated
    _add(st, 0.86, 0.050)  # 3: sampled, fast
    _add(st, 0.89, 0.061, **{T_BASELINE: "prune50-kd-fp32"})  # 4: uniform, nearest 3
    _add(st, 0.91, 0.095, **{T_BASELINE: "prune25-kd-fp32"})  # 5: uniform, nearest 2
    _add(st, 0.80, 0.040, **{T_BASELINE: "prune70-kd-fp32"})  # 6: uniform, fastest
    _add(st, 0.92, 0.130, **{T_BASELINE: "teacher-int8"}, trained=False)  # 7: training-free, not uniform
    picked = [t.number for t in pick_refine(st, 4)]
    # Two bands of the searched points (2 and 3), each with its nearest uniform plan (4 for 3, 5 for 2).
    assert picked == [3, 4, 2, 5]
    assert [t.number for t in pick_refine(st, 2)] == [2, 5]  # one band: its most accurate and the uniform beside it
    # Slots to spare go to the rest of the fast front, the fastest uniform plan among them.
    assert 6 in [t.number for t in pick_refine(st, 6)]


def test_below_the_accuracy_floor_is_picked_over_the_hardware_budget_never():
    st = _study([(0.93, 0.140, False), (0.90, 0.080, True)])
    _add(st, 0.70, 0.050, drop_slack=0.2)  # 2: a short budget left it below the floor: refinement's job
    _add(st, 0.95, 0.010, latency_slack=0.5)  # 3: over the latency budget: never
    _add(st, 0.91, 0.060, **{T_REFINED_FROM: 1})  # 4: a refinement itself
    assert [t.number for t in pick_refine(st, 5)] == [2]  # 1 is already refined (by 4)


def test_the_uniform_plan_beside_a_searched_point_is_on_the_uniform_envelope():
    st = _study([(0.93, 0.140, False), (0.92, 0.120, False)])  # 0, 1: training-free
    _add(st, 0.88, 0.070)  # 2: sampled
    _add(st, 0.85, 0.069, **{T_BASELINE: "prune50-kd-int8"})  # 3: uniform, nearest 2 but dominated by 4
    _add(st, 0.89, 0.060, **{T_BASELINE: "prune50-kd-fp32"})  # 4: uniform, on the envelope
    _add(st, 0.80, 0.040, **{T_BASELINE: "prune70-kd-fp32"})  # 5: uniform, on the envelope, farther
    assert [t.number for t in pick_refine(st, 2)] == [2, 4]


def _promotion(st: optuna.Study, source: int, acc: float | None) -> None:
    """A promotion of trial `source` that scored `acc` on the middle rung (None: it failed)."""
    attrs = {T_REFINED_FROM: source, T_BUDGET: "promote", T_TRAINED: True}
    if acc is None:
        st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
    else:
        st.add_trial(optuna.trial.create_trial(values=[acc, 0.07, 10.0], user_attrs=attrs))


def test_promotion_sends_each_band_refinement_to_its_best_on_the_middle_rung():
    st = _study([
        (0.93, 0.140, False),  # 0: teacher
        (0.92, 0.120, False),  # 1: PTQ
        (0.90, 0.100, True),  # 2: slow band, best explore score
        (0.89, 0.095, True),  # 3: slow band, second
        (0.80, 0.090, True),  # 4: slow band, third: not promoted with candidates=2
        (0.85, 0.050, True),  # 5: fast band, best
        (0.84, 0.052, True),  # 6: fast band, second
    ])
    # Two bands (two refinements, no uniform curve), the two most accurate of each.
    assert sorted(t.number for t in pick_promote(st, 2, 2)) == [2, 3, 5, 6]
    assert pick_promote(st, 2, 0) == []
    _promotion(st, 2, 0.91)
    _promotion(st, 3, 0.93)  # 3 overtakes 2 once trained longer
    _promotion(st, 5, 0.88)
    _promotion(st, 6, None)  # a failed promotion is not chosen over one that scored
    assert pick_promote(st, 2, 2) == []  # every candidate promoted: nothing queued twice
    assert [t.number for t in pick_refine(st, 2, promote=2)] == [5, 3]
    assert [t.number for t in pick_refine(st, 2)] == [5, 2]  # without promotion: the explore scores decide
    # Promotions are neither candidates nor refinements: trial 2 may still be refined, and is when slots remain.
    assert 2 in [t.number for t in pick_refine(st, 5, promote=2)]


def test_enqueued_promotions_then_refinements_keep_the_explore_trial_as_the_source():
    st = _study([(0.93, 0.140, False), (0.90, 0.100, True), (0.89, 0.095, True)])
    promote = Promote(candidates=2, budget=TrainBudget(epochs=1))
    assert enqueue_promotions(st, 1, promote) == 2
    assert enqueue_promotions(st, 1, promote) == 2  # a resume queues nothing twice
    assert enqueue_promotions(st, 1, None) == 2  # no promotion configured: nothing new
    waiting = st.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert {t.user_attrs[T_REFINED_FROM] for t in waiting} == {1, 2}
    assert {t.user_attrs[T_BUDGET] for t in waiting} == {"promote"}
    for t in waiting:  # run them: 2 does better on the middle rung
        trial = st.ask()
        st.tell(trial, [0.95 if t.user_attrs[T_REFINED_FROM] == 2 else 0.90, 0.1, 10.0])
    assert enqueue_refinements(st, 1, promote) == 1
    (refine,) = st.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert refine.user_attrs[T_REFINED_FROM] == 2 and refine.user_attrs[T_BUDGET] == "refine"
    assert enqueue_refinements(st, 1, promote) == 1  # promotions do not count toward the K refinements owed
