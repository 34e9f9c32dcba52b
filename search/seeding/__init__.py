"""The seeding stage before a study: each unit's cost measured alone on the teacher (sensitivity), and the
plans allocated from it that a study trains first (allocate). `hwsearch sensitivity` runs the first alone.

Names load lazily: the CLI imports `search.seeding.commands` to build its parser, and that must not pull in
optuna or torch.
"""

from __future__ import annotations

from search.utils.lazy import exported, lazy_getattr

_EXPORTS = {
    "search.seeding.sensitivity": ("Sensitivity", "SensitivityRow", "PlanMeter", "measure_sensitivity"),
    "search.seeding.allocate": ("allocate_many", "seeded_trials", "span_targets"),
    "search.seeding.standalone": ("sensitivity",),
}

__all__ = exported(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
