"""The search: one multi-objective Optuna study over distillation, pruning and quantization plans.

Names load lazily: the CLI imports `search.study.commands` to build its parser, and that must not
pull in optuna or torch.
"""

from __future__ import annotations

from search.utils.lazy import lazy_getattr

_EXPORTS = {
    "BASELINES": "search.study.record",
    "DIRECTIONS": "search.study.record",
    "OBJECTIVES": "search.study.record",
    "TrialRecord": "search.study.record",
    "RunSettings": "search.study.settings",
    "run_study": "search.study.runner",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
