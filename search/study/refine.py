"""`--refine K`: which trained trials get the longer refine budget, and queueing them.

With `distillation.promote` the choice is successive halving: each latency band's best few explore points are
first retrained on a middle rung (budget "promote", `refined_from` their source), and the band's refinement goes
to the one that scored best there, since explore scores rank refined outcomes loosely.
"""

from __future__ import annotations

import math

import optuna

from search.config.space import Promote
from search.study.pareto import is_feasible, pareto_layers
from search.study.record import (
    ACCURACY_CONSTRAINTS,
    B_PROMOTE,
    OBJECTIVES,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_REFINED_FROM,
    T_TRAINED,
    TrialRecord,
    is_uniform,
)

LATENCY = OBJECTIVES.index("latency_ms")  # in a trial's values


def _within_budgets(t: optuna.trial.FrozenTrial) -> bool:
    constraints = t.user_attrs.get(T_CONSTRAINTS, {})
    return all(v <= 0 for name, v in constraints.items() if name not in ACCURACY_CONSTRAINTS)


def _uniform(t: optuna.trial.FrozenTrial) -> bool:
    return is_uniform(t.user_attrs.get(T_BASELINE))


def _log_latency(t: optuna.trial.FrozenTrial) -> float:
    return math.log(max(t.values[LATENCY], 1e-12))


def _bands(trials: list, n: int) -> list[list]:
    """`trials` split into `n` bands of equal width in log-latency, fastest first (empty bands dropped)."""
    if not trials:
        return []
    lo, hi = min(map(_log_latency, trials)), max(map(_log_latency, trials))
    width = (hi - lo) / n or 1.0
    bands: list[list] = [[] for _ in range(n)]
    for t in trials:
        bands[min(n - 1, int((_log_latency(t) - lo) / width))].append(t)
    return [b for b in bands if b]


def _best(band: list) -> optuna.trial.FrozenTrial:
    """A band's best candidate: its own Pareto front's most accurate point (fastest among equals)."""
    return max(pareto_layers(band, lambda t: t.values)[0], key=lambda t: (t.values[0], -t.values[LATENCY]))


def _top(band: list, n: int) -> list:
    """A band's `n` most accurate points (fastest among equals): the ones promoted."""
    return sorted(band, key=lambda t: (-t.values[0], t.values[LATENCY]))[:n]


def is_promotion(t: optuna.trial.FrozenTrial) -> bool:
    return t.user_attrs.get(T_BUDGET) == B_PROMOTE


def _promoted(study: optuna.Study) -> dict[int, float]:
    """Source trial number -> its promotion's accuracy (-inf while it waits, runs or has failed)."""
    out: dict[int, float] = {}
    for t in study.get_trials(deepcopy=False):
        if is_promotion(t):
            done = t.state == optuna.trial.TrialState.COMPLETE
            src = t.user_attrs[T_REFINED_FROM]
            out[src] = max(out.get(src, -math.inf), t.values[0] if done else -math.inf)
    return out


def pick_refine(study: optuna.Study, k: int, promote: int = 0) -> list[optuna.trial.FrozenTrial]:
    """The K most promising trained trials not yet refined, covering the front by latency band.

    Promising: within the hardware budgets (the accuracy floor is not applied: a short-budget accuracy is
    what refinement is there to raise), and faster than every training-free feasible model (the teacher,
    its PTQ), since refining a slower one buys accuracy those already have at a better latency; the slower
    ones come last. By band: the searched candidates (sampled or allocated) are split into bands of
    log-latency, fastest band first; each band gives its best point and, when the study has the uniform
    curve, the uniform plan of the uniform envelope (those no uniform plan dominates) nearest it in latency,
    refined beside it with the same budget, so the front compares like with like. Slots left over go by
    Pareto layer, fastest first. With `promote` > 0 a band's point is the best promotion of its `promote`
    most accurate (`pick_promote`); a band not yet promoted gives its best explore point.
    """
    if k <= 0:
        return []
    bands, envelope, groups = _candidates(study, k)
    promoted = _promoted(study) if promote else {}
    chosen: list[optuna.trial.FrozenTrial] = []

    def take(t: optuna.trial.FrozenTrial) -> None:
        if len(chosen) < k and all(t is not c for c in chosen):
            chosen.append(t)

    for band in bands:
        top = [t for t in _top(band, promote) if t.number in promoted]
        best = max(top, key=lambda t: (promoted[t.number], t.values[0])) if top else _best(band)
        take(best)
        left = [u for u in envelope if all(u is not c for c in chosen)]
        if left:
            take(min(left, key=lambda u: abs(_log_latency(u) - _log_latency(best))))
    for group in groups:
        for layer in pareto_layers([t for t in group if all(t is not c for c in chosen)], lambda t: t.values):
            for t in sorted(layer, key=lambda t: t.values[LATENCY]):
                take(t)
    return chosen


def pick_promote(study: optuna.Study, k: int, promote: int) -> list[optuna.trial.FrozenTrial]:
    """The explore points still to promote before `pick_refine(study, k, promote)`: each band's `promote` most
    accurate (the bands of K refinements), less those promoted or queued already."""
    if k <= 0 or promote <= 0:
        return []
    bands, _, _ = _candidates(study, k)
    promoted = _promoted(study)
    return [t for band in bands for t in _top(band, promote) if t.number not in promoted]


def _candidates(study: optuna.Study, k: int) -> tuple[list[list], list, tuple[list, list]]:
    """The searched candidates in bands, the uniform envelope, and (fast, slow) pools for the slots left."""
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if t.state == optuna.trial.TrialState.COMPLETE]
    done = {t.user_attrs.get(T_REFINED_FROM) for t in every if not is_promotion(t)}
    pool = [t for t in trials if t.user_attrs.get(T_TRAINED) and _within_budgets(t)
            and t.number not in done and t.user_attrs.get(T_REFINED_FROM) is None]
    free = [t.values[LATENCY] for t in trials
            if not t.user_attrs.get(T_TRAINED) and is_feasible(TrialRecord.from_trial(t))]
    fastest_free = min(free, default=float("inf"))
    fast = [t for t in pool if t.values[LATENCY] < fastest_free]
    uniform = [t for t in fast if _uniform(t)]
    # The curve a searched point is judged against: the uniform plans no other uniform plan dominates (on this
    # host uniform int8 runs slower than fp32 once pruned; its plans are off the curve and would only add noise).
    envelope = pareto_layers(uniform, lambda t: t.values)[0] if uniform else []
    searched = [t for t in fast if not _uniform(t)]
    bands = _bands(searched, max(1, (k + 1) // 2 if uniform else k))
    return bands, envelope, (fast, [t for t in pool if t.values[LATENCY] >= fastest_free])


def queue_refinement(study: optuna.Study, ft: optuna.trial.FrozenTrial, budget: str = "refine") -> None:
    """Queue `ft`'s plan again with the `budget` (refine, or B_PROMOTE), marked as retraining it."""
    baseline = {T_BASELINE: ft.user_attrs[T_BASELINE]} if T_BASELINE in ft.user_attrs else {}
    study.enqueue_trial(ft.params, user_attrs={T_REFINED_FROM: ft.number, T_BUDGET: budget, **baseline})


def _owed(study: optuna.Study, k: int) -> int:
    """Refinements of the K still to queue (also across resumes)."""
    return k - sum(t.user_attrs.get(T_REFINED_FROM) is not None and not is_promotion(t)
                   for t in study.get_trials(deepcopy=False))


def _waiting(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def enqueue_promotions(study: optuna.Study, k: int, promote: Promote | None) -> int:
    """Queue the promotions the K refinements' bands still need; returns how many trials are waiting."""
    if promote is not None:
        for ft in pick_promote(study, _owed(study, k), promote.candidates):
            queue_refinement(study, ft, B_PROMOTE)
    return _waiting(study)


def enqueue_refinements(study: optuna.Study, k: int, promote: Promote | None = None) -> int:
    """Queue the refinements still owed (K in all, also across resumes); returns how many are waiting."""
    for ft in pick_refine(study, _owed(study, k), promote.candidates if promote else 0):
        queue_refinement(study, ft)
    return _waiting(study)
