"""`--refine K`: which trained trials get the longer refine budget, and queueing them."""

from __future__ import annotations

import optuna

from search.study.pareto import is_feasible, pareto_layers
from search.study.record import (
    ACCURACY_CONSTRAINTS,
    OBJECTIVES,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_REFINED_FROM,
    T_TRAINED,
    TrialRecord,
)

LATENCY = OBJECTIVES.index("latency_ms")  # in a trial's values


def _within_budgets(t: optuna.trial.FrozenTrial) -> bool:
    constraints = t.user_attrs.get(T_CONSTRAINTS, {})
    return all(v <= 0 for name, v in constraints.items() if name not in ACCURACY_CONSTRAINTS)


def pick_refine(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The K most promising trained trials not yet refined, fastest first, by their own Pareto layers.

    Promising: within the hardware budgets (the accuracy floor is not applied: a short-budget accuracy is
    what refinement is there to raise), and faster than every training-free feasible model (the teacher,
    its PTQ), since refining a slower one buys accuracy those already have at a better latency; the slower
    ones come last. Fastest first: the short budget costs the most accuracy at high pruning, and the slow
    end of the front is already held by the baselines.
    """
    if k <= 0:
        return []
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = {t.user_attrs.get(T_REFINED_FROM) for t in study.get_trials(deepcopy=False)}
    pool = [t for t in trials if t.user_attrs.get(T_TRAINED) and _within_budgets(t)
            and t.number not in done and t.user_attrs.get(T_REFINED_FROM) is None]
    free = [t.values[LATENCY] for t in trials
            if not t.user_attrs.get(T_TRAINED) and is_feasible(TrialRecord.from_trial(t))]
    fastest_free = min(free, default=float("inf"))
    chosen: list[optuna.trial.FrozenTrial] = []
    for group in ([t for t in pool if t.values[LATENCY] < fastest_free],
                  [t for t in pool if t.values[LATENCY] >= fastest_free]):
        for layer in pareto_layers(group, lambda t: t.values):
            if len(chosen) == k:
                return chosen
            chosen += sorted(layer, key=lambda t: t.values[LATENCY])[: k - len(chosen)]
    return chosen


def queue_refinement(study: optuna.Study, ft: optuna.trial.FrozenTrial) -> None:
    """Queue `ft`'s plan again with the refine budget, marked as its refinement."""
    baseline = {T_BASELINE: ft.user_attrs[T_BASELINE]} if T_BASELINE in ft.user_attrs else {}
    study.enqueue_trial(ft.params, user_attrs={T_REFINED_FROM: ft.number, T_BUDGET: "refine", **baseline})


def enqueue_refinements(study: optuna.Study, k: int) -> int:
    """Queue the refinements still owed (K in all, also across resumes); returns how many are waiting."""
    already = sum(t.user_attrs.get(T_REFINED_FROM) is not None for t in study.get_trials(deepcopy=False))
    for ft in pick_refine(study, k - already):
        queue_refinement(study, ft)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
