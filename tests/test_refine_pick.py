"""Which front points `--refine K` retrains: the choice on a real (in-memory) Optuna study."""

from __future__ import annotations

import optuna

from search.study.record import DIRECTIONS, T_CONSTRAINTS, T_FEASIBLE, T_REFINED_FROM, T_TRAINED
from search.study.refine import pick_refine


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


def test_faster_than_every_training_free_model_comes_first():
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
    assert [t.number for t in pick_refine(st, 3)] == [6, 5, 4]  # fastest first
    assert [t.number for t in pick_refine(st, 1)] == [6]
    # More than the fast candidates: their next Pareto layer, then the slow ones.
    assert [t.number for t in pick_refine(st, 7)] == [6, 5, 4, 3, 7, 2]


def test_below_the_accuracy_floor_is_picked_over_the_hardware_budget_never():
    st = _study([(0.93, 0.140, False), (0.90, 0.080, True)])
    _add(st, 0.70, 0.050, drop_slack=0.2)  # 2: a short budget left it below the floor: refinement's job
    _add(st, 0.95, 0.010, latency_slack=0.5)  # 3: over the latency budget: never
    _add(st, 0.91, 0.060, **{T_REFINED_FROM: 1})  # 4: a refinement itself
    assert [t.number for t in pick_refine(st, 5)] == [2]  # 1 is already refined (by 4)
