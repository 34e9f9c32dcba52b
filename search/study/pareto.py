"""Pareto dominance, ranking and the front: the one definition every part of hwsearch uses.

Refinement (`search.study.refine`), the progress line, the front table, CSV/JSON and report
(`search.inspect.front`), the hypervolume and the export hints all read this module. Dominance follows
DIRECTIONS (accuracy up, latency and memory down), so a new objective changes one tuple, not the code.

The front is Optuna's `study.best_trials` (non-dominated COMPLETE trials, constraint-aware) kept only
when the search's own record agrees it is feasible (T_FEASIBLE and every recorded constraint <= 0): a
trial the search judged infeasible never shows up as deployable, even if its constraints were not
handed to Optuna. This module imports neither optuna nor pandas: studies are duck-typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from search.study.record import DIRECTIONS, TrialRecord

T = TypeVar("T")
_SIGNS = tuple(1.0 if d == "maximize" else -1.0 for d in DIRECTIONS)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Objective values `a` are at least as good as `b` on every objective, each in its direction, and
    better on one."""
    pairs = [(s * x, s * y) for s, x, y in zip(_SIGNS, a, b, strict=True)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_layers(items: Iterable[T], values: Callable[[T], Sequence[float]]) -> list[list[T]]:
    """Non-dominated sorting: layer 0 holds the items no other item dominates, layer 1 those dominated
    only by layer 0, and so on (each layer in the input order)."""
    group = list(items)
    layers: list[list[T]] = []
    while group:
        layer = [i for i in group if not any(dominates(values(o), values(i)) for o in group if o is not i)]
        layers.append(layer)
        group = [i for i in group if all(i is not x for x in layer)]
    return layers


def _satisfied(constraint: Any) -> bool:
    try:
        return float(constraint) <= 0
    except (TypeError, ValueError):
        return False


def is_feasible(record: TrialRecord) -> bool:
    """The search's verdict: flagged feasible and every recorded constraint satisfied (<= 0)."""
    return record.feasible and all(_satisfied(v) for v in record.constraints.values())


def front_trials(study: Any) -> list[Any]:
    """The front's FrozenTrials: Optuna's best trials that the search also recorded feasible."""
    return [t for t in study.best_trials if is_feasible(TrialRecord.from_trial(t))]


def front_numbers(study: Any) -> set[int]:
    """Trial numbers on the front (see `front_trials`)."""
    return {t.number for t in front_trials(study)}


def pareto_ranks(records: Sequence[TrialRecord]) -> dict[int, int]:
    """Non-dominated sorting rank (0 = front) of every COMPLETE trial with values; feasible trials
    rank before infeasible ones, as Optuna's constrained dominance does."""
    todo = [r for r in records if r.state == "COMPLETE" and r.values is not None]
    ranks: dict[int, int] = {}
    rank = 0
    for group in ([r for r in todo if is_feasible(r)], [r for r in todo if not is_feasible(r)]):
        for layer in pareto_layers(group, lambda r: r.values):
            ranks.update({r.number: rank for r in layer})
            rank += 1
    return ranks


def nearest_front(records: Sequence[TrialRecord], limit: int = 5) -> list[int]:
    """Up to `limit` complete trials, best Pareto rank first (ties by trial number)."""
    ranks = pareto_ranks(records)
    return sorted(ranks, key=lambda n: (ranks[n], n))[:limit]
