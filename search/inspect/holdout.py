"""The held-out test split: scored once per front point, after every decision was made on `val`.

This is the only code that reads a task's `test` data. Each front point's ONNX artifact (the exact file
that is exported) and the fp32 teacher are scored on it; the change against the teacher comes with the
standard error of the paired per-image difference (both models see the same images, so the binomial
error of either accuracy alone overstates the noise of their difference). A point whose change lies
within two standard errors of zero is reported as the teacher's accuracy within noise.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.study.record import S_HAS_TEST, S_TEST_SCORES

if TYPE_CHECKING:
    from search.inspect.view import StudyData

NOISE_SIGMAS = 2.0
WITHIN_NOISE, BETTER, WORSE = "within noise", "better", "worse"


def paired_change(candidate: np.ndarray, teacher: np.ndarray, scale: float = 100.0) -> tuple[float, float]:
    """(change, standard error) in points (100 x the metric: percentage points for top-1) of candidate minus
    teacher on the same samples (per-sample scores: 0/1 correctness for top-1)."""
    d = candidate.astype(np.float64) - teacher.astype(np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()) * scale, se * scale


def verdict(change: float, se: float) -> str:
    if not math.isfinite(se) or abs(change) <= NOISE_SIGMAS * se:
        return WITHIN_NOISE
    return BETTER if change > 0 else WORSE


def score_test(view: StudyData, task: Any, trials: list[int] | None = None) -> dict[str, dict]:
    """Score the front points (or `trials`) that lack a test score, store them on the study, return all.

    A task without `test` marks the study so (accuracies shown are then the selection set's)."""
    from search.measure.accuracy import onnx_correct
    from search.study.pareto import front_numbers
    from search.tasks.arrays import dataset_arrays
    from search.utils.files import sha256_file

    study = view.study
    if task.test is None:
        study.set_user_attr(S_HAS_TEST, False)
        return {}
    scores: dict[str, dict] = dict(study.user_attrs.get(S_TEST_SCORES) or {})
    wanted = sorted(front_numbers(study)) if trials is None else list(trials)
    records = {r.number: r for r in view.trials}
    todo = [n for n in wanted if str(n) not in scores and n in records and records[n].onnx_artifact]
    if not todo and "teacher" in scores:
        return scores
    x, y = dataset_arrays(task.test)  # the one place the held-out split is read
    reference = view.reference_onnx
    if reference is None:
        raise FileNotFoundError(f"{view.folder}: the teacher's reference.onnx is missing, cannot score the test split")
    teacher = onnx_correct(reference, x, y, metric=task.metric)
    scores["teacher"] = {"accuracy": float(teacher.mean()), "n": int(len(y))}
    with tempfile.TemporaryDirectory(prefix="hwsearch-test-") as tmp:
        for n in todo:
            path = Path(tmp) / f"trial-{n}.onnx"
            view.download_artifact(records[n].onnx_artifact or "", path)
            correct = onnx_correct(path, x, y, metric=task.metric)
            change, se = paired_change(correct, teacher, task.metric.scale)
            scores[str(n)] = {"accuracy": float(correct.mean()), "n": int(len(y)), "change": change, "se": se,
                              "verdict": verdict(change, se), "sha256": sha256_file(path)}
    study.set_user_attr(S_HAS_TEST, True)
    study.set_user_attr(S_TEST_SCORES, scores)
    return scores
