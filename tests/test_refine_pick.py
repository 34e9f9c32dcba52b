"""Which front points `--refine K` retrains: the choice on a real (in-memory) Optuna study."""

from __future__ import annotations

import optuna

from search.study.record import DIRECTIONS, T_FEASIBLE, T_REFINED_FROM, T_TRAINED
from search.study.runner import pick_refine


def _study(points: list[tuple[float, float, bool]]) -> optuna.Study:
    """points: (accuracy, latency_ms, trained); all feasible, memory equal."""
    st = optuna.create_study(directions=list(DIRECTIONS))
    for acc, lat, trained in points:
        st.add_trial(optuna.trial.create_trial(values=[acc, lat, 10.0],
                                               user_attrs={T_TRAINED: trained, T_FEASIBLE: True}))
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
    picked = [t.number for t in pick_refine(st, 3)]
    assert picked == [6, 4, 3]  # spread along latency: fastest, between, slowest of the fast layer
    assert [t.number for t in pick_refine(st, 1)] == [6]
    # More than the fast candidates: their next Pareto layer, then the slow ones.
    assert [t.number for t in pick_refine(st, 7)] == [6, 5, 4, 3, 7, 2]


def test_untrained_infeasible_and_already_refined_are_never_picked():
    st = _study([(0.93, 0.140, False), (0.90, 0.080, True), (0.88, 0.060, True)])
    st.add_trial(optuna.trial.create_trial(values=[0.95, 0.01, 10.0],
                                           user_attrs={T_TRAINED: True, T_FEASIBLE: False}))
    st.add_trial(optuna.trial.create_trial(values=[0.91, 0.06, 10.0],
                                           user_attrs={T_TRAINED: True, T_FEASIBLE: True, T_REFINED_FROM: 2}))
    assert [t.number for t in pick_refine(st, 5)] == [1]
