"""What a task is judged by: a per-sample metric over the model's first output (or over every output, for a model
with several whose metric asks for them), and the output kind that distillation needs.

Per sample, not one number: the objective is the mean, and the held-out report pairs candidate and teacher on
the same samples (the standard error of the paired difference), which works for any per-sample score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

# (outputs (N, ...), targets (N, ...)) -> scores (N,); with every_output, outputs is a tuple of such arrays
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
OutputKind = Literal["classes", "regression", "tokens"]
OUTPUT_KINDS: tuple[str, ...] = ("classes", "regression", "tokens")
IGNORE_INDEX = -100  # a token target that is not scored or trained on (padding, the last position)


@dataclass(frozen=True)
class Metric:
    """A named per-sample score, higher is better (negate an error, as NEG_MAE does).

    `percent`: a share in [0, 1] (top-1), shown as a percentage with changes in percentage points; otherwise
    values and changes are shown in the metric's own unit. `every_output`: `scores` gets a tuple of every output
    of the model (in its order) instead of the first alone, for a model with several whose score needs them."""

    name: str
    scores: ScoreFn
    percent: bool = True
    every_output: bool = False

    @property
    def scale(self) -> float:
        """Changes are reported as scale x the difference: percentage points, or the metric's unit."""
        return 100.0 if self.percent else 1.0

    def describe(self) -> dict:
        """What a study stores about its metric (inspection tools format with it, without the task)."""
        return {"name": self.name, "percent": self.percent}

    def __call__(self, outputs: np.ndarray | tuple[np.ndarray, ...], targets: np.ndarray) -> np.ndarray:
        """Per-sample scores of `outputs` (one array, or a tuple of every output's array)."""
        several = isinstance(outputs, tuple)
        if self.every_output:
            outputs = outputs if several else (outputs,)
        elif several:
            outputs = outputs[0]
        s = np.asarray(self.scores(outputs, targets), dtype=np.float64).reshape(-1)
        if len(s) != len(targets):
            raise ValueError(f"metric {self.name!r} returned {len(s)} scores for {len(targets)} samples "
                             "(it must return one score per sample)")
        return s


def _top1(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return (outputs.argmax(1) == np.asarray(targets)).astype(np.int8)


def _neg_mae(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    return -np.abs(out - np.asarray(targets, dtype=np.float64).reshape(len(out), -1)).mean(1)


def _token_top1(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per sequence: the share of its scored positions whose arg-max token is the target."""
    t = np.asarray(targets)
    keep = t != IGNORE_INDEX
    hit = (outputs.argmax(-1) == t) & keep
    return hit.sum(1) / np.maximum(keep.sum(1), 1)


TOP1 = Metric("top-1", _top1)
TOKEN_TOP1 = Metric("next-token top-1", _token_top1)
NEG_MAE = Metric("negated mean absolute error", _neg_mae, percent=False)


def show(value: float, percent: bool = True) -> str:
    """A metric value as the tables show it: 93.52% for a share, -0.5812 otherwise."""
    return f"{value:.2%}" if percent else f"{value:.4g}"


def points(percent: bool = True) -> str:
    """The unit of a change: percentage points for a share, the metric's own unit otherwise."""
    return "pts" if percent else "(metric units)"



DEFAULT_METRIC: dict[str, Metric] = {"classes": TOP1, "regression": NEG_MAE, "tokens": TOKEN_TOP1}
