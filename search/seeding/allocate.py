"""Allocation: per-unit pruning ratios and bit-widths that cost the least accuracy under a latency target.

From a sensitivity table (`search.seeding.sensitivity`), every study parameter (`prune.<unit>`, `bits.<unit>`) is
one group of a multiple-choice knapsack: it takes exactly one of its values, the teacher's (ratio 0, 32 bits:
no cost, no saving) or a measured one (cost = its accuracy drop in points, floored at 0 so that the noise of a
change that happened to score higher cannot pay for a real loss; saving = the latency it saved alone). The
model is additive: predicted latency = teacher latency - the savings, never below the space's measured floor;
predicted drop = the sum of the costs. With a size budget (the profile's `model_mb`), the file megabytes each
change saved alone must add up to the teacher's file size minus the budget: a second knapsack constraint, so
a plan is never seeded that the study would reject for its size. `scipy.optimize.milp` (HiGHS) solves it
exactly: first the least cost that meets the targets, then, among plans of that cost, the fastest. A target
below the floor, or beyond what all the savings together reach, is reported infeasible with the reason, never
silently exceeded.

Savings do not add up near the floor (on the Fashion-MNIST teacher the additive model promised 0.027 ms at the
0.33 target and the plan ran at 0.040 ms). `calibrate` puts the device in the loop: it measures the allocated
plan (untrained: latency does not depend on weights), and while the plan misses its target it solves again,
asking the additive model for the saving it promised scaled by what the measurement delivered.

Plans come as Optuna parameter dicts in `baseline_params`' format, ready for `study.enqueue_trial`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from search.seeding.sensitivity import Sensitivity

DEFAULT_TARGETS: tuple[float, ...] = (0.7, 0.5, 0.4, 0.33)
_TOL = 1e-9
TOLERANCE = 0.02  # `calibrate`: a plan measured at most this share over its latency target meets it
ROUNDS = 6  # `calibrate`: plans measured per target at most (shared plans are measured once)


@dataclass(frozen=True)
class Option:
    value: float
    cost: float  # accuracy points, >= 0
    saved_ms: float
    saved_mb: float = 0.0  # ONNX file megabytes saved


@dataclass(frozen=True)
class Allocation:
    target: float  # share of the teacher's latency
    target_ms: float
    feasible: bool
    params: dict[str, float] = field(default_factory=dict)  # every parameter, teacher values included
    predicted_latency_ms: float | None = None
    predicted_drop: float | None = None  # accuracy points below the teacher
    teacher_latency_ms: float = 0.0
    teacher_accuracy: float = 0.0
    floor_ms: float | None = None
    max_model_mb: float | None = None  # the size budget it was solved under
    predicted_model_mb: float | None = None
    additive_saved_ms: float = 0.0  # the single-change savings of the plan, summed
    measured_ms: float | None = None  # `calibrate`: the plan measured untrained on the device
    passes: int = 0  # `calibrate`: plans it measured to reach this one
    reason: str = ""  # why it is infeasible

    @property
    def changes(self) -> dict[str, float]:
        """The parameters that differ from the teacher's."""
        return {k: v for k, v in self.params.items() if _param_kind(k) and v != _TEACHER[_param_kind(k)]}

    def predicted(self) -> dict:
        """What the additive model promises, for the seeded trial's user attributes."""
        out = {"target": self.target, "target_ms": self.target_ms, "floor_ms": self.floor_ms,
               "max_model_mb": self.max_model_mb, "feasible": self.feasible}
        if self.feasible:
            out.update(latency_ms=self.predicted_latency_ms, model_mb=self.predicted_model_mb,
                       latency_frac=self.predicted_latency_ms / self.teacher_latency_ms,
                       accuracy_drop=self.predicted_drop,
                       accuracy=max(0.0, self.teacher_accuracy - self.predicted_drop / 100))
            if self.measured_ms is not None:
                out.update(allocated_ms=self.measured_ms, passes=self.passes,
                           allocated_within=self.measured_ms <= self.target_ms * (1 + TOLERANCE))
        else:
            out["reason"] = self.reason
        return out


_TEACHER = {"prune": 0.0, "bits": 32}


def _param_kind(name: str) -> str | None:
    kind = name.split(".", 1)[0]
    return kind if kind in _TEACHER and "." in name else None


def options(sens: Sensitivity) -> dict[str, list[Option]]:
    """{parameter: its options} for every parameter the study samples (values without a row are left out)."""
    measured = {(r.param, r.value): r for r in sens.rows}
    out: dict[str, list[Option]] = {}
    for param, values in sens.choices.items():
        opts = []
        for v in values:
            if v == _TEACHER[_param_kind(param)]:
                opts.append(Option(v, 0.0, 0.0))
            elif (row := measured.get((param, v))) is not None:
                opts.append(Option(v, max(0.0, row.accuracy_drop), row.latency_saved_ms,
                                   sens.teacher_model_mb - row.model_mb))
        if opts:
            out[param] = opts
    return out


def allocate(sens: Sensitivity, target: float, *, floor_ms: float | None = None,
             max_model_mb: float | None = None, need_ms: float | None = None) -> Allocation:
    """The least-cost plan whose predicted latency is at most `target` x the teacher's and, with
    `max_model_mb`, whose predicted file size fits it (see the module docstring). `floor_ms` replaces the
    measured floor (None: the sensitivity's own). `need_ms` (`calibrate`) replaces the additive saving asked
    for, capped at what all the savings together reach."""
    if not target > 0:
        raise ValueError(f"target must be a share of the teacher's latency > 0, got {target}")
    teacher = sens.teacher_latency_ms
    floor = sens.floor_ms if floor_ms is None else floor_ms
    base = Allocation(target=target, target_ms=target * teacher, feasible=False, teacher_latency_ms=teacher,
                      teacher_accuracy=sens.teacher_accuracy, floor_ms=floor, max_model_mb=max_model_mb)
    if floor is not None and base.target_ms < floor - _TOL:
        return replace(base, reason=f"target {base.target_ms:.4g} ms ({target:g}x) is below the floor "
                                    f"{floor:.4g} ms (the fastest plan the space allows, measured)")
    need_mb = sens.teacher_model_mb - max_model_mb if max_model_mb is not None else 0.0
    opts = {p: _undominated(g, size=need_mb > 0) for p, g in options(sens).items()}
    reach = sum(max(o.saved_ms for o in group) for group in opts.values())
    need = teacher - base.target_ms if need_ms is None else min(need_ms, reach)
    if reach < need - _TOL:
        return replace(base, reason=f"target {base.target_ms:.4g} ms ({target:g}x) needs {need:.4g} ms saved; "
                                    f"the single-change savings add up to {reach:.4g} ms at most")
    reach_mb = sum(max(o.saved_mb for o in group) for group in opts.values())
    if need_mb > 0 and reach_mb < need_mb - _TOL:
        return replace(base, reason=f"the size budget {max_model_mb:g} MB needs {need_mb:.4g} MB saved from the "
                                    f"teacher's {sens.teacher_model_mb:.4g} MB; the single-change savings add up "
                                    f"to {reach_mb:.4g} MB at most")
    chosen = _solve(list(opts.values()), need, need_mb) if opts else []
    if chosen is None:
        return replace(base, reason=f"no plan meets both {base.target_ms:.4g} ms ({target:g}x) and the "
                                    f"{max_model_mb:g} MB size budget in the additive model")
    params = {**sens.common_params, **{p: o.value for p, o in zip(opts, chosen, strict=True)}}
    saved = sum(o.saved_ms for o in chosen)
    latency = teacher - saved if floor is None else max(floor, teacher - saved)
    return replace(base, feasible=True, params=params, predicted_latency_ms=latency,
                   predicted_drop=sum(o.cost for o in chosen), additive_saved_ms=saved,
                   predicted_model_mb=sens.teacher_model_mb - sum(o.saved_mb for o in chosen))


def calibrate(sens: Sensitivity, target: float, measure: Callable[[dict], float], *, rounds: int = ROUNDS,
              tolerance: float = TOLERANCE, floor_ms: float | None = None, max_model_mb: float | None = None,
              pool: dict[tuple, tuple[Allocation, float]] | None = None) -> Allocation:
    """`allocate`, then up to `rounds` plans measured on the device (`measure(params)` -> latency ms). When the
    additive plan misses the target (at most `tolerance` over it), the plan with every saving is measured too,
    and the additive saving asked of the model is searched between the two: the measured latencies of the
    bracket's ends interpolated to the target (kept inside its middle 80%, so a curved path still shrinks it;
    bisected when that repeats a measured plan). A plan that meets the target becomes the bracket's fast end,
    one that misses its slow end. Scaling the saving by promised/delivered instead crept along: on the
    ResNet-18-class teacher every extra promised millisecond delivered a fifth of one, four such passes ended
    1.3-2x over each target and all four targets fell back to the floor plan. If no plan meets the target,
    the space's floor plan (measured by the sensitivity stage) is tried too. Of every plan measured (`pool`:
    shared by the targets of one allocation, so a plan is measured once), the least predicted cost among those
    within the target, else the fastest; its measured latency and the passes it took are recorded."""
    a = allocate(sens, target, floor_ms=floor_ms, max_model_mb=max_model_mb)
    if not a.feasible:
        return a
    pool = {} if pool is None else pool
    limit = a.target_ms * (1 + tolerance)
    passes = 0

    def measured(plan: Allocation) -> float:
        nonlocal passes
        passes += 1
        key = _plan_key(plan.params)
        if key not in pool:
            pool[key] = (plan, measure(plan.params))
        return pool[key][1]

    tried = {_plan_key(a.params)}
    slow = (a.additive_saved_ms, measured(a))  # (additive saving asked, measured ms) of the bracket's ends
    fast: tuple[float, float] | None = None
    if slow[1] > limit:  # the additive model's own plan met it: nothing cheaper to look for
        top = allocate(sens, target, floor_ms=floor_ms, max_model_mb=max_model_mb, need_ms=math.inf)
        if top.feasible and _plan_key(top.params) not in tried and rounds > 1:
            tried.add(_plan_key(top.params))
            if (ms := measured(top)) <= limit:
                fast = (top.additive_saved_ms, ms)
    while fast is not None and passes < rounds and fast[0] - slow[0] > _TOL:
        share = (slow[1] - a.target_ms) / (slow[1] - fast[1]) if slow[1] > fast[1] else 0.5
        share = min(max(share, 0.1), 0.9)
        for need in (slow[0] + share * (fast[0] - slow[0]), (slow[0] + fast[0]) / 2):
            a = allocate(sens, target, floor_ms=floor_ms, max_model_mb=max_model_mb, need_ms=need)
            if a.feasible and _plan_key(a.params) not in tried:
                break
        else:
            break  # nothing new between the ends
        tried.add(_plan_key(a.params))
        ms = measured(a)
        if ms <= limit:
            fast = (a.additive_saved_ms, ms)
        else:
            slow = (a.additive_saved_ms, ms)
    # Every pooled plan was solved under the same size budget (the floor plan is checked before it is pooled).
    fits = [(p, ms) for p, ms in pool.values() if ms <= limit]
    if not fits and sens.floor_params and (floor := _as_plan(sens, sens.floor_params, a)) is not None \
            and _fits_size(floor, max_model_mb) and (ms := measured(floor)) <= limit:
        fits = [(floor, ms)]
    if fits:
        best, ms = min(fits, key=lambda x: (x[0].predicted_drop, x[1]))
    else:
        best, ms = min((pool[k] for k in tried), key=lambda x: x[1])
    return replace(best, target=target, target_ms=target * best.teacher_latency_ms, max_model_mb=max_model_mb,
                   measured_ms=ms, passes=passes)


def _fits_size(a: Allocation, max_model_mb: float | None) -> bool:
    return max_model_mb is None or a.predicted_model_mb is None or a.predicted_model_mb <= max_model_mb + _TOL


def additive(sens: Sensitivity, params: dict) -> Option | None:
    """The additive model of a given plan: its options' cost, latency and size savings summed (as one Option of
    value 0), or None when a value of `params` has no row."""
    by = {p: {o.value: o for o in g} for p, g in options(sens).items()}
    try:
        chosen = [by[p][v] for p, v in params.items() if p in by]
    except KeyError:
        return None
    return Option(0.0, sum(o.cost for o in chosen), sum(o.saved_ms for o in chosen), sum(o.saved_mb for o in chosen))


def _as_plan(sens: Sensitivity, params: dict, like: Allocation) -> Allocation | None:
    """A given plan (the floor's) with the additive model's numbers, or None when a value has no row."""
    if (total := additive(sens, params)) is None:
        return None
    return replace(like, params=dict(params), additive_saved_ms=total.saved_ms, predicted_drop=total.cost,
                   predicted_latency_ms=max(sens.floor_ms or 0.0, sens.teacher_latency_ms - total.saved_ms),
                   predicted_model_mb=sens.teacher_model_mb - total.saved_mb)


def _plan_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _undominated(group: list[Option], *, size: bool) -> list[Option]:
    """The options no other option of the group beats (no more cost, no less latency saved and, under a size
    budget, no less size saved; one of them strictly); of equal ones the first, so the teacher's value
    (listed first) wins a tie and a change must pay off."""
    def key(o: Option) -> tuple[float, float]:
        return (o.saved_ms, o.saved_mb if size else 0.0)

    out = []
    for i, o in enumerate(group):
        beaten = any((p.cost <= o.cost and all(a >= b for a, b in zip(key(p), key(o), strict=True)))
                     and (j < i or p.cost < o.cost or key(p) != key(o)) for j, p in enumerate(group) if j != i)
        if not beaten:
            out.append(o)
    return out


def _solve(groups: list[list[Option]], need: float, need_mb: float = 0.0) -> list[Option] | None:
    """Exactly one option per group, sum(saved_ms) >= need, sum(saved_mb) >= need_mb, least total cost;
    ties: most saved. None when the two constraints cannot both hold."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    cost = np.array([o.cost for g in groups for o in g])
    saved = np.array([o.saved_ms for g in groups for o in g])
    one = np.zeros((len(groups), len(cost)))
    start = 0
    for i, g in enumerate(groups):
        one[i, start:start + len(g)] = 1
        start += len(g)
    rows = [LinearConstraint(one, 1, 1), LinearConstraint(saved[None, :], need - _TOL, np.inf)]
    if need_mb > 0:
        size = np.array([o.saved_mb for g in groups for o in g])
        rows.append(LinearConstraint(size[None, :], need_mb - _TOL, np.inf))
    kw = dict(integrality=np.ones(len(cost)), bounds=Bounds(0, 1), options={"mip_rel_gap": 0})
    first = milp(cost, constraints=rows, **kw)
    if first.status == 2 and need_mb > 0:  # infeasible: each constraint alone is reachable, both together not
        return None
    if not first.success:  # cannot happen once `reach` covers `need`: say so loudly rather than guess
        raise RuntimeError(f"allocation solver failed: {first.message}")
    best = float(cost @ np.round(first.x))
    second = milp(-saved, constraints=[*rows, LinearConstraint(cost[None, :], -np.inf, best + 1e-7)], **kw)
    x = np.round((second if second.success else first).x)
    out, start = [], 0
    for g in groups:
        out.append(g[int(np.argmax(x[start:start + len(g)]))])
        start += len(g)
    return out


def allocate_many(sens: Sensitivity, targets: tuple[float, ...] = DEFAULT_TARGETS, *,
                  floor_ms: float | None = None, max_model_mb: float | None = None,
                  measure: Callable[[dict], float] | None = None) -> list[Allocation]:
    """One plan per target; with `measure`, each calibrated on the device (`calibrate`)."""
    if measure is None:
        return [allocate(sens, t, floor_ms=floor_ms, max_model_mb=max_model_mb) for t in targets]
    pool: dict[tuple, tuple[Allocation, float]] = {}
    return [calibrate(sens, t, measure, floor_ms=floor_ms, max_model_mb=max_model_mb, pool=pool) for t in targets]


def span_targets(sens: Sensitivity, targets: tuple[float, ...] = DEFAULT_TARGETS, *,
                 budget_ms: float | None = None) -> tuple[float, ...]:
    """Latency targets spanning the ceiling down to the measured floor: the fixed shares of `targets` between
    them, and four steps between the ceiling and the floor (a small model's floor is often above half the
    teacher's latency: fixed shares alone would seed nothing). The ceiling is the teacher's latency, or the
    profile's latency budget when that is lower: a plan slower than the budget is infeasible and never trained
    (on a host where the ResNet-18-class teacher ran at 3.56 ms against local-1core's 0.5 ms, three of the four
    steps were such plans and the study was seeded with the floor plan alone)."""
    teacher = sens.teacher_latency_ms
    floor = (sens.floor_ms or 0.0) / teacher if teacher else 0.0
    ceiling = min(1.0, budget_ms / teacher) if budget_ms and teacher else 1.0
    ceiling = max(ceiling, floor)
    spanned = (round(floor + (ceiling - floor) * k, 3) for k in (0.75, 0.5, 0.25, 0.02))
    return tuple(sorted({t for t in (*targets, *spanned) if floor <= t < 1.0 and t <= ceiling}, reverse=True))


def seeded_trials(sens: Sensitivity, targets: tuple[float, ...] = DEFAULT_TARGETS, *,
                  floor_ms: float | None = None, max_model_mb: float | None = None,
                  measure: Callable[[dict], float] | None = None) -> dict[str, tuple[dict, dict]]:
    """{"sensitivity-<target>": (params, predicted)} of the feasible plans, for
    `study.enqueue_trial(params, user_attrs={"seeded": target, "predicted": predicted})`; a plan equal to an
    earlier target's is left out (it would be the same trial)."""
    out: dict[str, tuple[dict, dict]] = {}
    for a in allocate_many(sens, targets, floor_ms=floor_ms, max_model_mb=max_model_mb, measure=measure):
        if a.feasible and all(a.params != p for p, _ in out.values()):
            out[f"sensitivity-{a.target:g}"] = (a.params, a.predicted())
    return out
