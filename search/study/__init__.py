"""The search: one multi-objective Optuna study over distillation, pruning and quantization plans."""

from search.study.record import BASELINES, DIRECTIONS, OBJECTIVES, TrialRecord
from search.study.runner import RunResult, run

__all__ = ["BASELINES", "DIRECTIONS", "OBJECTIVES", "RunResult", "TrialRecord", "run"]
