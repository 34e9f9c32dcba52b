"""The Pareto front as one computed value: every table, CSV/JSON and plot reads this DataFrame.

Which trials are on the front, and what dominates what, is `search.study.pareto` (the one definition,
shared with refinement); this module turns it into rows, and measures the front by its hypervolume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from search.plan import Plan
from search.study.pareto import front_numbers, is_feasible
from search.study.record import (
    B_PROMOTE,
    OBJECTIVES,
    S_SPACE,
    S_TEACHER,
    S_TEST_SCORES,
    TrialRecord,
    metric_percent,
    trial_origin,
)

# accuracy/acc_change: the selection set (val), what every decision used. test_*: the held-out split,
# scored once per front point at the end of a run; test_se is the standard error of the paired change.
# origin: where the plan came from (search.study.record.ORIGINS); budget: the distillation it got ("none").
FRONT_COLUMNS: tuple[str, ...] = (
    "trial", "accuracy", "acc_change", "test_accuracy", "test_change", "test_se", "test_verdict", "latency_ms",
    "speedup", "memory_mb", "model_mb", "size_ratio", "mean_prune", "quant_share", "temperature", "baseline",
    "refined", "origin", "budget", "feasible",
)
ALL_COLUMNS: tuple[str, ...] = (*FRONT_COLUMNS, "state", "on_front", "fail_reason")


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den and math.isfinite(num) and math.isfinite(den) and num > 0 else math.nan


def applied_prune(record: TrialRecord) -> float:
    """Mean share of output channels actually removed over the plan's layers (the requested ratio for
    trials recorded before applied ratios were)."""
    if record.pruned:
        return sum(_num(e.get("applied")) for e in record.pruned.values()) / len(record.pruned)
    return Plan.from_dict(record.plan).summary()["mean_prune"] if record.plan else math.nan


def quant_share(record: TrialRecord) -> float:
    """Share of quantizable layers that ONNX Runtime runs with an integer kernel (what was asked, for
    trials recorded before what runs was)."""
    if record.precision:
        return sum(e.get("runs_as") in INTEGER_KERNELS for e in record.precision.values()) / len(record.precision)
    return Plan.from_dict(record.plan).summary()["int8_share"] if record.plan else math.nan


INTEGER_KERNELS = ("int8", "int8-dynamic", "int4")


# T_BUDGET name -> where the space's distillation section keeps that budget
_BUDGET_FIELDS = {"explore": ("budget",), "refine": ("refine",), B_PROMOTE: ("promote", "budget")}


def budget_label(record: TrialRecord, space: Mapping[str, Any] | None) -> str:
    """The training a trial got, e.g. "explore 1 ep ≤20000", "refine 10 steps"; "none" for a training-free
    model (teacher, PTQ, a broken hardware budget), "" for a trial that did not complete. `space` is the
    study's S_SPACE dump; without it, only the budget's name."""
    if record.state != "COMPLETE":
        return ""
    if not record.trained:
        return "none"
    name = record.budget or ("refine" if record.refined_from is not None else "explore")
    b = (space or {}).get("distillation") or {}
    for key in _BUDGET_FIELDS.get(name, (name,)):
        b = (b or {}).get(key) or {}
    length = f" {b['epochs']:g} ep" if b.get("epochs") is not None else (
        f" {b['steps']} steps" if b.get("steps") is not None else "")
    return f"{name}{length}" + (f" ≤{b['max_samples']}" if b.get("max_samples") else "")


def _row(record: TrialRecord, teacher: Mapping[str, Any], on_front: bool, origin: str,
         budget: str, scale: float) -> dict[str, Any]:
    values = record.values or (math.nan,) * len(OBJECTIVES)
    acc, lat, mem = (_num(v) for v in values[: len(OBJECTIVES)])
    model_mb = _num(record.metrics.get("model_mb"))
    summary = Plan.from_dict(record.plan).summary() if record.plan else {}
    test = record.test or {}
    return {
        "trial": record.number,
        "accuracy": acc,
        "acc_change": (acc - _num(teacher.get("accuracy"))) * scale,  # percentage points, or the metric's unit
        "test_accuracy": _num(test.get("accuracy")),
        "test_change": _num(test.get("change")),
        "test_se": _num(test.get("se")),
        "test_verdict": test.get("verdict", ""),
        "latency_ms": lat,
        "speedup": _ratio(_num(teacher.get("latency_ms")), lat),
        "memory_mb": mem,
        "model_mb": model_mb,
        "size_ratio": _ratio(model_mb, _num(teacher.get("model_mb"))),
        "mean_prune": applied_prune(record) if record.plan else math.nan,
        "quant_share": quant_share(record) if record.plan else math.nan,
        "temperature": summary.get("temperature", math.nan),
        "baseline": record.baseline or "",
        "refined": record.refined_from is not None and record.budget != B_PROMOTE,
        "origin": origin,
        "budget": budget,
        "feasible": is_feasible(record),
        "state": record.state,
        "on_front": on_front,
        "fail_reason": record.fail_reason or "",
    }


def frame(records: Sequence[TrialRecord], front: Iterable[int], teacher: Mapping[str, Any], *,
          include_all: bool, space: Mapping[str, Any] | None = None, percent: bool = True) -> pd.DataFrame:
    """Rows for `records` (all of them, or only the front ones) in the fixed column order; `space` (the
    study's S_SPACE dump) spells out each row's budget; `percent`: accuracy is a share (changes in percentage
    points), else a metric in its own unit (search.metrics)."""
    on = set(front)
    by_number = {r.number: r for r in records}  # all of them: a front refinement's source may be off the front
    rows = [_row(r, teacher, r.number in on, trial_origin(r, by_number), budget_label(r, space),
                 100.0 if percent else 1.0)
            for r in records if include_all or r.number in on]
    df = pd.DataFrame(rows, columns=list(ALL_COLUMNS))
    df = df.astype({"trial": "int64", "refined": "bool", "feasible": "bool", "on_front": "bool"})
    if include_all:
        return df.sort_values("trial", ignore_index=True)
    # Fastest first: reading down the table trades latency for accuracy.
    return df.sort_values(["latency_ms", "trial"], ignore_index=True)[list(FRONT_COLUMNS)]


def compute_front(study: Any, *, include_all: bool = False) -> pd.DataFrame:
    """The Pareto front of an Optuna study as a DataFrame (columns FRONT_COLUMNS).

    `include_all=True` returns every trial (columns ALL_COLUMNS: adds `state`, `on_front` and, for
    failures, `fail_reason`), which is what the plots draw; the front is its `on_front` rows.
    """
    teacher = study.user_attrs.get(S_TEACHER, {})
    scores = study.user_attrs.get(S_TEST_SCORES) or {}
    records = [TrialRecord.from_trial(t, scores) for t in study.get_trials(deepcopy=False)]
    return frame(records, front_numbers(study), teacher, include_all=include_all,
                 space=study.user_attrs.get(S_SPACE),
                 percent=metric_percent(study.user_attrs))


# ---- hypervolume -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """The fixed hypervolume reference point (the worst acceptable model) and how it was chosen."""

    accuracy: float
    latency_ms: float
    memory_mb: float
    note: str
    floor: bool = False  # accuracy is the space's floor (min_accuracy or teacher - max_drop), not a fallback


def reference_point(user_attrs: Mapping[str, Any], budgets: Any) -> Reference:
    """Accuracy: the space's floor (min_accuracy, or teacher - max_drop), else 0. Latency/memory: the
    profile's budget, else twice the teacher's. Fixed per study, so the curve is comparable over
    trials and between reruns of the same study setup."""
    teacher = user_attrs.get(S_TEACHER, {})
    acc_floor = (user_attrs.get(S_SPACE) or {}).get("accuracy") or {}
    t_acc = _num(teacher.get("accuracy"))
    if acc_floor.get("min_accuracy") is not None:
        acc, acc_why = float(acc_floor["min_accuracy"]), "min_accuracy"
    elif acc_floor.get("max_drop") is not None and math.isfinite(t_acc):
        acc, acc_why = t_acc - float(acc_floor["max_drop"]), "teacher - max_drop"
    else:
        acc, acc_why = 0.0, "0"
    lat, lat_why = (budgets.latency_ms, "budget") if budgets.latency_ms else (
        2 * _num(teacher.get("latency_ms")), "2 x teacher")
    mem, mem_why = (budgets.memory_mb, "budget") if budgets.memory_mb else (
        2 * _num(teacher.get("memory_mb")), "2 x teacher")
    note = (f"reference point: accuracy {acc:.4f} ({acc_why}), latency {lat:.4g} ms ({lat_why}), "
            f"memory {mem:.4g} MB ({mem_why}); ideal point: accuracy 1, latency 0, memory 0")
    return Reference(acc, lat, mem, note, floor=acc_why != "0")


def _hv2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: Iterable[Sequence[float]], ref: Reference) -> float:
    """Share (0..1) of the box between the ideal point and `ref` that the points dominate.

    Points are (accuracy, latency_ms, memory_mb); exact, by slicing along accuracy (O(n^2 log n),
    ample for a study's few hundred trials)."""
    r = (-ref.accuracy, ref.latency_ms, ref.memory_mb)
    box = (r[0] + 1.0) * r[1] * r[2]
    if not all(math.isfinite(v) for v in r) or box <= 0:
        return math.nan
    pts = sorted({(-a, lat, mem) for a, lat, mem in points if -a < r[0] and lat < r[1] and mem < r[2]})
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else r[0]
        if upper > p[0]:
            volume += (upper - p[0]) * _hv2d([(q[1], q[2]) for q in pts[: i + 1]], (r[1], r[2]))
    return volume / box


def hypervolume_history(records: Sequence[TrialRecord], ref: Reference) -> pd.DataFrame:
    """Hypervolume of the feasible complete trials among the first k trials, for every k."""
    rows, points = [], []
    for r in sorted(records, key=lambda r: r.number):
        if r.state == "COMPLETE" and r.values is not None and is_feasible(r):
            points.append(tuple(r.values[: len(OBJECTIVES)]))
        rows.append({"trial": r.number, "hypervolume": hypervolume(points, ref) if points else 0.0})
    return pd.DataFrame(rows, columns=["trial", "hypervolume"])
