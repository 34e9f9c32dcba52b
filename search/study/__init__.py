"""The search: one multi-objective Optuna study over distillation, pruning and quantization plans.

Names load lazily: the CLI imports `search.study.commands` to build its parser, and that must not
pull in optuna or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BASELINES": "search.study.record",
    "DIRECTIONS": "search.study.record",
    "OBJECTIVES": "search.study.record",
    "TrialRecord": "search.study.record",
    "RunResult": "search.study.runner",
    "run": "search.study.runner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'search.study' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
