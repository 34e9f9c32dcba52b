"""Allocation from a sensitivity table: exact (brute force agrees), within target, honest about infeasible targets."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from _sensitivity_fixtures import signal_sensitivity

from search.seeding.allocate import allocate, allocate_many, calibrate, options, seeded_trials, span_targets
from search.seeding.sensitivity import Sensitivity, SensitivityRow


def _table(groups: dict[str, list[tuple[float, ...]]], teacher_ms: float = 10.0,
           floor_ms: float = 2.0) -> Sensitivity:
    """A table of {param: [(value, drop points, saved ms[, file MB])]} (file MB default 0.1 of the teacher's
    0.2); the teacher's value (0 / 32) is added first."""
    rows, choices = [], {}
    for param, opts in groups.items():
        kind, unit = param.split(".", 1)
        choices[param] = [0.0 if kind == "prune" else 32] + [o[0] for o in opts]
        for v, drop, saved, *mb in opts:
            rows.append(SensitivityRow(unit=unit, kind=kind, value=v, layers=(unit,), accuracy=0.9 - drop / 100,
                                       accuracy_drop=drop, latency_ms=teacher_ms - saved, latency_saved_ms=saved,
                                       latency_saved_frac=saved / teacher_ms, memory_mb=10.0,
                                       model_mb=mb[0] if mb else 0.1))
    return Sensitivity(key="k", task="t", profile="p", statistic="p50", teacher_accuracy=0.9,
                       teacher_latency_ms=teacher_ms, teacher_model_mb=0.2, floor_ms=floor_ms, rows=tuple(rows),
                       choices=choices, common_params={"temperature": 4.0, "alpha": 0.5}, bn_batches=0, seconds=1.0,
                       measurements=3)


def _brute(sens: Sensitivity, target_ms: float, max_mb: float = np.inf) -> float | None:
    """Least summed cost of any combination meeting the target (and the size budget) under the additive model
    (None: none does)."""
    groups = list(options(sens).values())
    best = None
    for combo in itertools.product(*groups):
        latency = max(sens.floor_ms, sens.teacher_latency_ms - sum(o.saved_ms for o in combo))
        size = sens.teacher_model_mb - sum(o.saved_mb for o in combo)
        if latency <= target_ms + 1e-9 and size <= max_mb + 1e-9:
            cost = sum(o.cost for o in combo)
            best = cost if best is None else min(best, cost)
    return best


def _random_table(rng: np.random.Generator) -> Sensitivity:
    groups = {}
    for i in range(4):
        ratios = [0.25, 0.5, 0.7][: int(rng.integers(1, 4))]
        groups[f"prune.u{i}"] = [(r, float(rng.uniform(-1, 30)), float(rng.uniform(-0.5, 3))) for r in ratios]
    for i in range(2):
        groups[f"bits.u{i}"] = [(8, float(rng.uniform(0, 5)), float(rng.uniform(-1, 2)))]
    return _table(groups, floor_ms=float(rng.uniform(0.5, 4)))


def test_least_cost_plan_matches_brute_force():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        sens = _random_table(rng)
        for target in (0.95, 0.8, 0.6, 0.45, 0.3):
            a = allocate(sens, target)
            best = _brute(sens, target * sens.teacher_latency_ms)
            assert a.feasible == (best is not None), (target, a.reason)
            if best is None:
                assert a.reason and not a.params
                continue
            checked += 1
            assert a.predicted_drop == pytest.approx(best, abs=1e-6)
            assert a.predicted_latency_ms <= a.target_ms + 1e-9  # the target is met under the additive model
            # The plan's own numbers are the additive model's for the values it picked.
            opts = options(sens)
            picked = [next(o for o in opts[p] if o.value == a.params[p]) for p in opts]
            assert a.predicted_drop == pytest.approx(sum(o.cost for o in picked))
            saved = sum(o.saved_ms for o in picked)
            assert a.predicted_latency_ms == pytest.approx(max(sens.floor_ms, sens.teacher_latency_ms - saved))
    assert checked > 40


def test_below_floor_or_beyond_savings_is_infeasible():
    sens = _table({"prune.a": [(0.5, 2.0, 3.0)], "prune.b": [(0.5, 1.0, 2.0)]}, teacher_ms=10.0, floor_ms=4.0)
    low = allocate(sens, 0.33)
    assert not low.feasible and "below the floor 4 ms" in low.reason and low.params == {}
    assert low.predicted() == {"target": 0.33, "target_ms": pytest.approx(3.3), "floor_ms": 4.0, "feasible": False,
                               "max_model_mb": None, "reason": low.reason}
    far = allocate(sens, 0.45)  # 4.5 ms is above the floor, but the two savings reach 5 ms at most: 5 ms
    assert not far.feasible and "add up to 5 ms at most" in far.reason
    edge = allocate(sens, 0.5)
    assert edge.feasible and edge.predicted_latency_ms == pytest.approx(5.0) and edge.predicted_drop == 3.0
    # A floor given by the caller replaces the measured one; the floor also clips the prediction.
    assert allocate(sens, 0.33, floor_ms=1.0).feasible is False  # still beyond the savings
    clipped = allocate(_table({"prune.a": [(0.5, 1.0, 9.0)]}, floor_ms=4.0), 0.5)
    assert clipped.feasible and clipped.predicted_latency_ms == 4.0
    with pytest.raises(ValueError):
        allocate(sens, 0)


def test_size_budget_is_a_second_constraint():
    """With the profile's model_mb, every plan fits it under the additive size model, at the least cost any
    combination meeting both limits has (brute force); a budget the savings cannot reach is infeasible."""
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(20):
        groups = {f"prune.u{i}": [(r, float(rng.uniform(0, 20)), float(rng.uniform(0, 3)), float(rng.uniform(0.1, 0.2)))
                                  for r in (0.25, 0.5, 0.7)] for i in range(3)}
        groups["bits.q"] = [(8, float(rng.uniform(0, 2)), float(rng.uniform(-1, 1)), float(rng.uniform(0.05, 0.2)))]
        sens = _table(groups, floor_ms=1.0)
        for target, budget in ((0.9, 0.15), (0.7, 0.1), (0.5, 0.12), (0.95, 0.05)):
            a = allocate(sens, target, max_model_mb=budget)
            best = _brute(sens, target * sens.teacher_latency_ms, budget)
            assert a.feasible == (best is not None), (target, budget, a.reason)
            if best is not None:
                checked += 1
                assert a.predicted_drop == pytest.approx(best, abs=1e-6)
                assert a.predicted_model_mb <= budget + 1e-9 and a.predicted()["model_mb"] == a.predicted_model_mb
    assert checked > 20
    # Cheap and fast enough, but too big: the budget changes the plan.
    sens = _table({"prune.a": [(0.5, 1.0, 5.0, 0.19)], "prune.b": [(0.5, 3.0, 4.0, 0.05)]}, floor_ms=1.0)
    assert allocate(sens, 0.5).changes == {"prune.a": 0.5}
    assert allocate(sens, 0.6, max_model_mb=0.1).changes == {"prune.b": 0.5}
    small = allocate(sens, 0.5, max_model_mb=0.01)
    assert not small.feasible and "size budget 0.01 MB" in small.reason


def test_ties_and_noise_prefer_the_teacher():
    """A value that saves nothing is never picked; a negative drop (noise) is no credit; equal cost: faster."""
    sens = _table({"prune.a": [(0.25, -3.0, 0.0), (0.5, 0.0, 1.0)], "bits.b": [(8, 0.0, -0.5)],
                   "prune.c": [(0.5, 4.0, 2.0)], "prune.d": [(0.5, 0.0, 0.0)]})
    a = allocate(sens, 1.0)
    assert a.changes == {"prune.a": 0.5}  # free speed taken, noise and slowdowns left out
    b = allocate(sens, 0.75)
    assert b.changes == {"prune.a": 0.5, "prune.c": 0.5} and b.predicted_drop == 4.0
    assert b.params == {"temperature": 4.0, "alpha": 0.5, "prune.a": 0.5, "bits.b": 32, "prune.c": 0.5,
                        "prune.d": 0.0}
    p = b.predicted()
    assert p["latency_ms"] == pytest.approx(7.0) and p["latency_frac"] == pytest.approx(0.7)
    assert p["accuracy"] == pytest.approx(0.86) and p["accuracy_drop"] == 4.0


def test_seeded_trials_drop_duplicates_and_infeasible():
    sens = _table({"prune.a": [(0.5, 1.0, 4.0)]}, floor_ms=5.0)
    seeds = seeded_trials(sens, (0.7, 0.6, 0.4))
    assert list(seeds) == ["sensitivity-0.7"]  # 0.6 gives the same plan; 0.4 is below the floor
    params, predicted = seeds["sensitivity-0.7"]
    assert params == {"temperature": 4.0, "alpha": 0.5, "prune.a": 0.5} and predicted["latency_ms"] == 6.0
    assert [x.feasible for x in allocate_many(sens, (0.7, 0.6, 0.4))] == [True, True, False]


def _sub_additive(sens: Sensitivity, delivered: float):
    """A device on which savings deliver only `delivered` of their sum (interacting changes), and its log."""
    by = {(r.param, r.value): r.latency_saved_ms for r in sens.rows}
    calls: list[dict] = []

    def measure(params: dict) -> float:
        calls.append(params)
        return sens.teacher_latency_ms - delivered * sum(by.get((k, v), 0.0) for k, v in params.items())

    return measure, calls


def test_calibrate_solves_again_until_the_measured_plan_meets_its_target():
    sens = _table({f"prune.u{i}": [(0.5, float(i + 1), 2.0)] for i in range(5)}, floor_ms=0.0)
    measure, calls = _sub_additive(sens, delivered=0.6)
    plain = allocate(sens, 0.6)  # 4 ms to save: two units promise it, they deliver 2.4
    assert len(plain.changes) == 2 and measure(plain.params) == pytest.approx(7.6)
    calls.clear()
    a = calibrate(sens, 0.6, measure)
    # two units miss (7.6 ms), all five meet it (4 ms); interpolated between them, 6.7 ms asked of the model:
    # four units meet it (5.2 ms); then the same plan again, so bisected: three units (6 ms asked) do not
    assert a.passes == 4 == len(calls) and a.measured_ms == pytest.approx(measure(a.params))
    assert a.measured_ms <= a.target_ms and len(a.changes) == 4
    assert set(a.changes) == {"prune.u0", "prune.u1", "prune.u2", "prune.u3"}  # still the cheapest ones
    p = a.predicted()
    assert p["allocated_within"] is True and p["allocated_ms"] == a.measured_ms and p["passes"] == 4
    on_target = calibrate(sens, 0.6, _sub_additive(sens, delivered=1.0)[0])
    assert on_target.passes == 1 and on_target.params == plain.params  # an additive device: nothing to correct


def test_calibrate_finds_a_plan_per_target_where_savings_saturate():
    """Changes that overlap (int8 on a pruned block) deliver a small share of each further promised millisecond:
    scaling the saving asked by promised/delivered crept toward the target and ran out of passes (on the
    ResNet-18-class teacher every target then fell back to the floor plan). Searched between the additive plan
    and the plan with every saving, each target gets its own plan within it, the cheaper the slower the target."""
    sens = _table({f"prune.u{i}": [(0.5, float(i + 1), 1.0), (0.7, float(2 * i + 3), 2.0)] for i in range(8)},
                  floor_ms=0.0)
    by = {(r.param, r.value): r.latency_saved_ms for r in sens.rows}

    def measure(params: dict) -> float:  # 10 ms teacher: 90% of the first 8 ms promised, then 15% of each ms
        promised = sum(by.get((k, v), 0.0) for k, v in params.items())
        return 10.0 - 0.9 * min(promised, 8.0) - 0.15 * max(promised - 8.0, 0.0)

    every = allocate(sens, 0.1, need_ms=np.inf)  # every saving: 16 ms promised, 1.6 ms measured
    plans = allocate_many(sens, (0.25, 0.2), measure=measure)
    assert [a.predicted()["allocated_within"] for a in plans] == [True, True]
    assert plans[0].predicted_drop < plans[1].predicted_drop < every.predicted_drop  # not the every-saving plan
    assert all(a.passes <= 6 for a in plans)


def test_calibrate_reports_the_fastest_plan_when_no_plan_meets_the_target():
    sens = _table({f"prune.u{i}": [(0.5, 1.0, 2.0)] for i in range(4)}, floor_ms=0.0)
    measure, calls = _sub_additive(sens, delivered=0.5)
    a = calibrate(sens, 0.5, measure)  # 3 units promise the 5 ms, deliver 3; all four deliver 4
    assert len(a.changes) == 4 and a.measured_ms == pytest.approx(6.0)
    assert a.predicted()["allocated_within"] is False and a.passes == len(calls) == 2  # then nothing new to try
    assert [x.feasible for x in allocate_many(sens, (0.5, 0.1), measure=measure)] == [True, False]


def test_calibrate_falls_back_to_the_measured_floor_plan():
    """Single changes said 70% saves less than 50% (noise); together, every unit at 70% is the floor. When no
    allocated plan meets the target on the device, the floor plan is measured and taken."""
    sens = _table({f"prune.u{i}": [(0.5, 1.0, 2.0), (0.7, 3.0, 1.9)] for i in range(4)}, floor_ms=4.0)
    floor = {"temperature": 4.0, "alpha": 0.5, **{f"prune.u{i}": 0.7 for i in range(4)}}
    sens = replace(sens, floor_params=floor)
    additive, calls = _sub_additive(sens, delivered=0.5)

    def measure(params: dict) -> float:
        return 4.0 if params == floor else additive(params)

    a = calibrate(sens, 0.5, measure)
    assert a.params == floor and a.measured_ms == 4.0 and a.passes == 3 and len(calls) == 2
    assert a.predicted_drop == 12.0 and a.predicted()["allocated_within"] is True
    without = calibrate(replace(sens, floor_params={}), 0.5, additive)  # no floor plan recorded: the fastest tried
    assert without.measured_ms == pytest.approx(6.0) and without.predicted()["allocated_within"] is False


def test_plans_from_a_real_table_enqueue_as_study_parameters(digits_task):
    """The plan's parameters are `baseline_params`' (same names, same value types), and a study that enqueues
    them samples exactly that plan."""
    import optuna

    from search.study.sampling import baseline_params, sample_plan

    ctx, sens, _ = signal_sensitivity(digits_task)
    template = baseline_params(ctx.space, ctx.layers, ctx.bits, ctx.profile)["teacher-fp32"]
    plans = allocate_many(sens, (1.0, 0.99, 0.5, 0.01))
    assert not plans[-1].feasible
    for a in (x for x in plans if x.feasible):
        assert set(a.params) == set(template)
        assert all(type(a.params[k]) is type(v) for k, v in template.items())
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        study.enqueue_trial(a.params, user_attrs={"seeded": a.target, "predicted": a.predicted()})
        trial = study.ask()
        plan = sample_plan(trial, ctx.space, ctx.layers, ctx.bits, 0, ctx.profile)
        for param, value in a.params.items():
            kind, _, unit = param.partition(".")
            if kind == "prune":
                assert all(plan.prune[la] == value for la in ctx.layers.prune_units("layer")[unit])
            elif kind == "bits":
                assert plan.bits[unit] == value
        assert trial.user_attrs["predicted"]["feasible"] is True
    # The most sensitive unit is the last one a tight plan gives up: pruned only when no cheaper plan without it
    # meets the target (SignalNet's savings are a few percent: on a loaded machine they can take the worst).
    worst = max((r for r in sens.rows if r.kind == "prune"), key=lambda r: r.accuracy_drop)
    without = replace(sens, rows=tuple(r for r in sens.rows if r.param != worst.param))
    for x in (x for x in plans[:2] if x.feasible and x.params.get(worst.param) != 0.0):
        alt = allocate(without, x.target)
        assert not alt.feasible or alt.predicted_drop >= x.predicted_drop, (x.changes, alt.changes)


def test_targets_span_the_latency_budget_not_only_the_teacher():
    """Under a budget far below the teacher every target lies between the floor and the budget (plans slower than
    the budget are never trained); without one, between the floor and the teacher."""
    sens = _table({"prune.a": [(0.5, 1.0, 5.0)]}, teacher_ms=10.0, floor_ms=0.3)
    free = span_targets(sens)
    assert max(free) > 0.5 and min(free) >= 0.03 and len(free) >= 4
    tight = span_targets(sens, budget_ms=1.4)  # the budget is 14% of the teacher's latency
    assert len(tight) >= 4 and all(0.03 <= t <= 0.14 for t in tight), tight
    assert span_targets(sens, budget_ms=50.0) == free  # a budget above the teacher changes nothing
