"""`export --verify`: does the exported model reproduce its trial's record?

Accuracy is re-evaluated with the same function and data the search used (val, and test when the trial
was scored on it) and must match exactly, as must the file's sha256 and size; latency and memory are
re-measured on the profile and must lie within the noise bounds below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import TrialFailure
from search.study.record import OBJECTIVES, TrialRecord, drift_anchor
from search.utils.files import sha256_file

if TYPE_CHECKING:
    from search.inspect.view import StudyData

# Noise bounds for --verify. The p50 of the same file moves between fresh-process rounds (spread up to
# 2.4% over 5 rounds: benchmarks/results/measure.json, "noise"), and export --verify re-measured the
# thorough study's front points within 3.3% (benchmarks/results/techniques.json, "verify"); the 15% floor
# leaves room for a busier machine than those runs had. A noisier device widens it by 3 standard errors of
# the two medians, sqrt(pi/2) * sigma / sqrt(runs) each, with sigma estimated robustly from
# (p90 - p50) / 1.2816 (normal quantiles): the recorded CV is useless here, one stalled run among 200
# microsecond runs drives it above 1 without moving the median.
# Memory: the same front points re-measured within 0.25% (techniques.json, "verify"), so 2 MB (15% for
# big models).
LATENCY_REL_TOL = 0.15
LATENCY_SIGMAS = 3.0
MEDIAN_SE = math.sqrt(math.pi / 2)  # standard error of a median, in units of sigma / sqrt(runs)
P90_Z = 1.2816  # (p90 - p50) / sigma for a normal distribution
MEMORY_ABS_TOL_MB = 2.0
MEMORY_REL_TOL = 0.15
MB = 1024 * 1024  # model_mb is MiB, as the search records it
# A remote profile's outputs on the device: DEVICE_SAMPLES val samples; the largest difference from this machine's,
# relative to the largest output magnitude, and the top-1 class of each sample must agree. 2% leaves room for
# an int8 kernel that rounds one requantization step differently; a wrong kernel or layout is far beyond it.
DEVICE_SAMPLES = 16
DEVICE_OUTPUT_TOL = 0.02


@dataclass(frozen=True)
class VerifyRow:
    metric: str
    recorded: float | None
    measured: float | None
    allowed: str  # the bound, in words
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class VerifyReport:
    rows: tuple[VerifyRow, ...]

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        """Fixed-width text: readable in a terminal, a log and an exception message alike."""
        head = ("metric", "recorded", "measured", "difference", "allowed", "result")
        lines = [head]
        for r in self.rows:
            diff = (f"{r.measured - r.recorded:+.6g}" if r.recorded is not None and r.measured is not None
                    else "-")
            lines.append((r.metric, _fmt(r.recorded), _fmt(r.measured), diff, r.allowed,
                          ("ok" if r.ok else "DIFFERS") + (f" ({r.note})" if r.note else "")))
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


class VerifyError(Exception):
    """The exported model does not reproduce its trial's record (CLI: diff table, exit 1)."""

    def __init__(self, trial: int, report: VerifyReport) -> None:
        super().__init__(f"trial {trial}: the exported model does not reproduce the record\n{report.table()}")
        self.trial = trial
        self.report = report


def _test_rows(rec: TrialRecord, model: Path, task: Any) -> list[VerifyRow]:
    """The held-out accuracy (top-1 or the task's metric), re-scored: equal to the recorded one when the final
    scoring step scored it."""
    from search.measure.accuracy import onnx_accuracy
    from search.tasks.arrays import dataset_arrays

    if getattr(task, "test", None) is None:
        return []
    acc = onnx_accuracy(model, *dataset_arrays(task.test), metric=task.metric)
    recorded = rec.test.get("accuracy") if rec.test else None
    if recorded is None:
        return [VerifyRow("test_accuracy", None, acc, "exactly equal", True,
                          "no test score recorded (not a front point)")]
    return [VerifyRow("test_accuracy", float(recorded), acc, "exactly equal", acc == float(recorded))]


def _latency(m: Any, values: dict, rec: Any, recorded_m: Any, stat: str,
             corrected: bool) -> tuple[float, float, str, float]:
    """(recorded, new, how, allowed) latency of a fresh measurement `m` against the trial's record."""
    if corrected:
        rec_lat, new_lat, how = values["latency_ms"], m.objective(stat), f"{stat}, drift-corrected"
    else:
        raw = rec.metrics.get("latency_raw_ms")
        rec_lat = float(raw) if raw is not None else values["latency_ms"]
        new_lat, how = (m.latency.get(stat) if m.latency else math.inf), f"{stat}, raw"
    return rec_lat, new_lat, how, latency_allowed(rec_lat, recorded_m.latency if recorded_m else None, m.latency)


def latency_allowed(recorded: float, *stats: Any) -> float:
    """Allowed |new - recorded| latency (ms), given the LatencyStats of both measurements."""
    def rel_se(s: Any) -> float:
        sigma = max(s.p90_ms - s.p50_ms, 0.0) / P90_Z
        return MEDIAN_SE * sigma / s.p50_ms / math.sqrt(max(s.runs, 1)) if s.p50_ms > 0 else 0.0

    se = math.sqrt(sum(rel_se(s) ** 2 for s in stats if s is not None))
    return max(LATENCY_SIGMAS * se, LATENCY_REL_TOL) * recorded


def memory_allowed(recorded: float) -> float:
    return max(MEMORY_ABS_TOL_MB, MEMORY_REL_TOL * recorded)


def device_outputs_row(backend: Any, model: Path, x: Any) -> VerifyRow:
    """A remote profile: the exported model run on the device (the agent's /v1/run) on `x` (the first val
    samples) against the same file run here. Numerics that differ on the board (its own int8/int4 kernels,
    another ONNX Runtime build) are caught before deployment."""
    import numpy as np

    from search.measure.accuracy import eval_session
    from search.tasks.inputs import count
    from search.tasks.inputs import feed as feed_of

    sess = eval_session(model)  # the session and input conversion every score uses
    feed = feed_of(sess, x)
    here = dict(zip((o.name for o in sess.get_outputs()), sess.run(None, feed), strict=True))
    try:
        there, where = backend.run_outputs(model, feed)
    except TrialFailure as e:
        return VerifyRow("device_outputs", None, None, "-", False, str(e))
    allowed = f"<= {DEVICE_OUTPUT_TOL:g} x max |output|, same top-1"
    if set(there) != set(here) or any(there[k].shape != v.shape for k, v in here.items()):
        return VerifyRow("device_outputs", None, None, allowed, False, "the device's outputs have other names "
                         f"or shapes: {sorted((k, v.shape) for k, v in there.items())}")
    worst = max(float(np.max(np.abs(there[k].astype(np.float64) - v))) / max(float(np.max(np.abs(v))), 1e-12)
                for k, v in here.items())
    first = next(iter(here))
    same_top1 = bool(here[first].ndim < 2 or np.array_equal(here[first].argmax(-1), there[first].argmax(-1)))
    note = f"{count(x)} val samples on {where.get('device', 'the device')}" + ("" if same_top1 else
                                                                             "; top-1 differs")
    return VerifyRow("device_outputs", None, worst, allowed, worst <= DEVICE_OUTPUT_TOL and same_top1, note)


def verify_model(view: StudyData, rec: TrialRecord, model: Path, task: Any | None = None) -> VerifyReport:
    """Re-score `model` against the trial's record: accuracy exactly, latency and memory within noise."""
    from search.measure import get_backend
    from search.measure.accuracy import onnx_accuracy
    from search.measure.record import Measurement
    from search.tasks.arrays import dataset_arrays, feed_sample
    from search.tasks.inputs import rows as take

    values = dict(zip(OBJECTIVES, rec.values or (), strict=False))
    task = task if task is not None else view.load_task()
    # The same conversion and metric the search evaluated with.
    acc = onnx_accuracy(model, *dataset_arrays(task.val), metric=task.metric)
    rows = [VerifyRow("val_accuracy", values["accuracy"], acc, "exactly equal", acc == values["accuracy"])]
    rows += _test_rows(rec, model, task)
    if rec.onnx_sha256:  # the exported bytes are the bytes that were scored
        digest = sha256_file(model)
        same = digest == rec.onnx_sha256
        rows.append(VerifyRow("sha256", None, None, "identical to the scored file", same,
                              "identical" if same else f"scored {rec.onnx_sha256[:12]}, exported {digest[:12]}"))
    if rec.metrics.get("model_mb") is not None:  # the artifact is the scored file: its size is exact
        size = model.stat().st_size / MB
        rows.append(VerifyRow("model_mb", float(rec.metrics["model_mb"]), size, "exactly equal",
                              size == float(rec.metrics["model_mb"])))

    profile, stat = view.profile, view.profile.measure.statistic
    recorded_m = Measurement.from_dict(rec.measurement) if rec.measurement else None
    reference = view.reference_onnx
    anchor = drift_anchor(view.attrs)
    # Drift-corrected against the study's own anchor when the record was; else raw against raw.
    corrected = bool(reference is not None and anchor is not None and recorded_m is not None
                     and recorded_m.ratio(stat) is not None)
    try:
        backend = get_backend(profile, reference_baseline=anchor if corrected else None, sample=feed_sample(task.val))
        if profile.measure.backend == "remote":
            val_x = dataset_arrays(task.val)[0]
            rows.append(device_outputs_row(backend, model, take(val_x, slice(DEVICE_SAMPLES))))
        m = backend.measure(model, reference if corrected else None)
        rec_lat, new_lat, how, tol = _latency(m, values, rec, recorded_m, stat, corrected)
        note = ""
        if abs(new_lat - rec_lat) > tol:
            # A burst of other work on a shared machine can slow every round of one measurement by 20% or more
            # (seen beside a test worker's ONNX scoring): measured once more, it fails only if that one differs too.
            first = new_lat
            m = backend.measure(model, reference if corrected else None)
            rec_lat, new_lat, how, tol = _latency(m, values, rec, recorded_m, stat, corrected)
            note = f"measured twice: the first gave {first:.4g}"
    except TrialFailure as e:
        rows += [VerifyRow(k, values[k], None, "-", False, str(e)) for k in ("latency_ms", "memory_mb")]
        return VerifyReport(tuple(rows))
    rows.append(VerifyRow("latency_ms", rec_lat, new_lat, f"+-{tol:.4g} ({how})", abs(new_lat - rec_lat) <= tol,
                          note))
    new_mem = m.memory_total_mb if m.memory_total_mb is not None else math.inf
    tol = memory_allowed(values["memory_mb"])
    rows.append(VerifyRow("memory_mb", values["memory_mb"], new_mem, f"+-{tol:.4g}",
                          abs(new_mem - values["memory_mb"]) <= tol))
    return VerifyReport(tuple(rows))
