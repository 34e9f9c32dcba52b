"""The search: one multi-objective Optuna study over distillation, pruning and quantization plans.

Names load lazily: the CLI imports `search.study.commands` to build its parser, and that must not
pull in optuna or torch.
"""

from __future__ import annotations

from search.utils.lazy import exported, lazy_getattr

_EXPORTS = {
    "search.study.record": ("BASELINES", "DIRECTIONS", "OBJECTIVES", "TrialRecord"),
    "search.study.settings": ("RunSettings",),
    "search.study.runner": ("run_study",),
}

__all__ = exported(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
