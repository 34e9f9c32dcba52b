"""Export one trial as a deployable folder (model.onnx + manifest.json) and, on request, verify it.

The ONNX file is the trial's artifact byte for byte: it is the file whose accuracy, latency and memory
the study recorded, so what is deployed is what was scored. `--verify` re-evaluates accuracy with the
same function and data the search used (it must match exactly) and re-measures latency and memory on
the profile (they must lie within the noise bounds below).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import TrialFailure, UserError
from search.inspect.front import is_feasible, nearest_front, pareto_ranks
from search.study.record import (
    OBJECTIVES,
    S_PROFILE_DIGEST,
    S_REFERENCE_BASELINE,
    TrialRecord,
)
from search.utils.atomic import atomic_write_text
from search.utils.files import sha256_file

if TYPE_CHECKING:
    from search.inspect.api import StudyView

MANIFEST_FORMAT = "hwsearch-export/1"
MODEL_NAME = "model.onnx"
MANIFEST_NAME = "manifest.json"
# Noise bounds for --verify. FACTS: p50 latency of the same file differs 3-5% (CV) between fresh
# processes and up to 8-14% slowest to fastest, +-10% at 30-100 us per inference; so 15% is the floor.
# A noisier device widens it by 3 standard errors of the two medians, sqrt(pi/2) * sigma / sqrt(runs)
# each, with sigma estimated robustly from (p90 - p50) / 1.2816 (normal quantiles): the recorded CV is
# useless here, one stalled run among 200 microsecond runs drives it above 1 without moving the median.
# Memory: the peak-RSS probe agrees within 1.5 MB run to run, so 2 MB (15% for big models).
LATENCY_REL_TOL = 0.15
LATENCY_SIGMAS = 3.0
MEDIAN_SE = math.sqrt(math.pi / 2)  # standard error of a median, in units of sigma / sqrt(runs)
P90_Z = 1.2816  # (p90 - p50) / sigma for a normal distribution
MEMORY_ABS_TOL_MB = 2.0
MEMORY_REL_TOL = 0.15
MB = 1024 * 1024  # model_mb is MiB, as the search records it
VERSIONED = ("torch", "onnxruntime", "onnx", "optuna", "numpy")


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


@dataclass(frozen=True)
class ExportResult:
    model: Path
    manifest: Path
    trial: int
    warnings: tuple[str, ...] = ()
    verification: VerifyReport | None = None


def exportable(view: StudyView, number: int) -> TrialRecord:
    """The trial's record if it has a model to export, else a one-line error naming better choices."""
    rec = view.record(number)
    if rec.state != "COMPLETE" or rec.values is None:
        ranks = pareto_ranks(view.trials)
        near = nearest_front(view.trials)
        named = ", ".join(f"{n} (front)" if ranks[n] == 0 else str(n) for n in near) or "none yet"
        why = f": {rec.fail_reason}" if rec.fail_reason else ""
        raise UserError(f"trial {number} is {rec.state}{why}; only COMPLETE trials can be exported. "
                        f"Complete trials nearest the front: {named}")
    if not rec.onnx_artifact:
        raise UserError(f"trial {number} has no ONNX artifact recorded (attribute onnx_artifact_id missing)")
    return rec


def sha256(path: Path) -> str:
    return sha256_file(path)


def versions() -> dict[str, str]:
    """Versions of this environment (metadata only: no heavy import just to read a version)."""
    from importlib.metadata import PackageNotFoundError, version

    from search import __version__

    out = {"hwsearch": __version__}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _io_spec(model_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    return inputs[0], spec(model.graph.output[0])


def _task_info(view: StudyView, task: Any | None) -> dict[str, Any]:
    """Input value range, normalisation and class names: from the loaded task when verify loaded it,
    else from the built-in registry (cheap: no data, no teacher); a user task is not loaded just for this."""
    from search.tasks.base import InputSpec
    from search.tasks.builtin import BUILTIN_TASKS

    if task is not None:
        spec, classes = task.input_spec, list(task.class_names)
    elif view.task_spec in BUILTIN_TASKS:
        spec, classes = InputSpec(), list(BUILTIN_TASKS[view.task_spec].class_names)  # built-ins use the default
    else:
        return {"value_range": None, "normalisation": f"see task {view.task_spec}", "class_names": None}
    return {"value_range": list(spec.value_range), "normalisation": spec.normalisation,
            "class_names": classes or None}


def build_manifest(view: StudyView, rec: TrialRecord, model_path: Path, task: Any | None = None) -> dict[str, Any]:
    inp, out = _io_spec(model_path)
    info = _task_info(view, task)
    profile = view.profile
    return {
        "format": MANIFEST_FORMAT,
        "study": view.name,
        "trial": rec.number,
        "task": view.task_spec,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"file": MODEL_NAME, "sha256": sha256(model_path), "bytes": model_path.stat().st_size},
        "input": {**inp, "batch_dim": 0, "value_range": info["value_range"], "normalisation": info["normalisation"]},
        "output": {**out, "meaning": "class scores (logits); the predicted class is the arg-max"},
        "class_names": info["class_names"],
        "plan": rec.plan,
        "objectives": dict(zip(OBJECTIVES, rec.values or (), strict=False)),
        "metrics": rec.metrics,
        "feasible": is_feasible(rec),
        "constraints": rec.constraints,
        "baseline": rec.baseline,
        "refined_from": rec.refined_from,
        "skipped_layers": rec.skipped_layers,
        "pruned": rec.pruned,  # per layer: requested and applied ratio, channels before/after, reason
        "precision": rec.precision,  # per layer: requested bits and the kernel ONNX Runtime runs
        "accuracy": {"val": (rec.values or (None,))[0], "test": rec.test,
                     "held_out": view.has_test,
                     "note": "val selects (objective, floor, front); test is held out, scored once per front point"
                     if view.has_test else "the task has no test split: val is the selection set, not a "
                     "held-out estimate"},
        "scored_sha256": rec.onnx_sha256,
        "teacher": view.teacher,
        "measurement": rec.measurement,
        "profile": profile.model_dump(mode="json"),
        "profile_digest": view.attrs.get(S_PROFILE_DIGEST) or profile.digest(),
        "versions": versions(),
        "verification": None,
    }


def download_artifact(view: StudyView, artifact_id: str, target: Path) -> None:
    import optuna

    store = optuna.artifacts.FileSystemArtifactStore(str(view.artifacts_dir))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        optuna.artifacts.download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact_id)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot read artifact {artifact_id} from {view.artifacts_dir}: {e}") from None
    os.replace(tmp, target)  # a reader never sees half a model


def export_trial(view: StudyView, number: int, out_dir: str | Path, *, verify: bool = False,
                 warn: Callable[[str], None] | None = None) -> ExportResult:
    """Write `out_dir/model.onnx` and `out_dir/manifest.json` for trial `number`."""
    warn = warn or (lambda msg: warnings.warn(msg, UserWarning, stacklevel=3))
    rec = exportable(view, number)
    notes: list[str] = []
    if not is_feasible(rec):
        broken = ", ".join(f"{k} over by {float(v):.4g}" for k, v in rec.constraints.items() if not float(v) <= 0)
        notes.append(f"trial {number} is infeasible ({broken or 'flagged infeasible'}): it does not meet the "
                     f"profile's budgets or the accuracy floor")
    for msg in notes:
        warn(msg)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_NAME
    download_artifact(view, rec.onnx_artifact or "", model)
    task = load_view_task(view) if verify else None
    manifest = build_manifest(view, rec, model, task)
    manifest_path = atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    result = ExportResult(model=model, manifest=manifest_path, trial=number, warnings=tuple(notes))
    if not verify:
        return result
    report = verify_model(view, rec, model, task)
    manifest["verification"] = {"passed": report.passed, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                "rows": [asdict(r) for r in report.rows]}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    if not report.passed:
        raise VerifyError(number, report)
    return replace(result, verification=report)


def load_view_task(view: StudyView) -> Any:
    from search.tasks import load_task

    return load_task(view.task_spec, results_dir=view.results, progress=False)


def val_arrays(task: Any) -> tuple[Any, Any]:
    """The validation set exactly as the search evaluated it (the same conversion function)."""
    from search.tasks.arrays import dataset_arrays

    return dataset_arrays(task.val)


def _test_rows(rec: TrialRecord, model: Path, task: Any) -> list[VerifyRow]:
    """The held-out top-1, re-scored: equal to the recorded one when the final scoring step scored it."""
    from search.measure.accuracy import onnx_accuracy
    from search.tasks.arrays import dataset_arrays

    if getattr(task, "test", None) is None:
        return []
    acc = onnx_accuracy(model, *dataset_arrays(task.test))
    recorded = rec.test.get("accuracy") if rec.test else None
    if recorded is None:
        return [VerifyRow("test_accuracy", None, acc, "exactly equal", True,
                          "no test score recorded (not a front point)")]
    return [VerifyRow("test_accuracy", float(recorded), acc, "exactly equal", acc == float(recorded))]


def latency_allowed(recorded: float, *stats: Any) -> float:
    """Allowed |new - recorded| latency (ms), given the LatencyStats of both measurements."""
    def rel_se(s: Any) -> float:
        sigma = max(s.p90_ms - s.p50_ms, 0.0) / P90_Z
        return MEDIAN_SE * sigma / s.p50_ms / math.sqrt(max(s.runs, 1)) if s.p50_ms > 0 else 0.0

    se = math.sqrt(sum(rel_se(s) ** 2 for s in stats if s is not None))
    return max(LATENCY_SIGMAS * se, LATENCY_REL_TOL) * recorded


def memory_allowed(recorded: float) -> float:
    return max(MEMORY_ABS_TOL_MB, MEMORY_REL_TOL * recorded)


def verify_model(view: StudyView, rec: TrialRecord, model: Path, task: Any | None = None) -> VerifyReport:
    """Re-score `model` against the trial's record: accuracy exactly, latency and memory within noise."""
    from search.measure import get_backend
    from search.measure.accuracy import onnx_accuracy
    from search.measure.record import LatencyStats, Measurement

    values = dict(zip(OBJECTIVES, rec.values or (), strict=False))
    task = task if task is not None else load_view_task(view)
    x, y = val_arrays(task)
    acc = onnx_accuracy(model, x, y)
    rows = [VerifyRow("val_accuracy", values["accuracy"], acc, "exactly equal", acc == values["accuracy"])]
    rows += _test_rows(rec, model, task)
    if rec.onnx_sha256:  # the exported bytes are the bytes that were scored
        same = sha256(model) == rec.onnx_sha256
        rows.append(VerifyRow("sha256", None, None, "identical to the scored file", same,
                              "identical" if same else f"scored {rec.onnx_sha256[:12]}, exported {sha256(model)[:12]}"))
    if rec.metrics.get("model_mb") is not None:  # the artifact is the scored file: its size is exact
        size = model.stat().st_size / MB
        rows.append(VerifyRow("model_mb", float(rec.metrics["model_mb"]), size, "exactly equal",
                              size == float(rec.metrics["model_mb"])))

    profile, stat = view.profile, view.profile.measure.statistic
    recorded_m = Measurement.from_dict(rec.measurement) if rec.measurement else None
    reference = view.reference_onnx
    anchor = view.attrs.get(S_REFERENCE_BASELINE)
    # Drift-corrected against the study's own anchor when the record was; else raw against raw.
    corrected = bool(reference is not None and anchor is not None and recorded_m is not None
                     and recorded_m.ratio(stat) is not None)
    baseline = LatencyStats(**anchor) if corrected else None
    try:
        m = get_backend(profile, reference_baseline=baseline).measure(model, reference if corrected else None)
    except TrialFailure as e:
        rows += [VerifyRow(k, values[k], None, "-", False, str(e)) for k in ("latency_ms", "memory_mb")]
        return VerifyReport(tuple(rows))
    if corrected:
        rec_lat, new_lat, how = values["latency_ms"], m.objective(stat), f"{stat}, drift-corrected"
    else:
        raw = rec.metrics.get("latency_raw_ms")
        rec_lat = float(raw) if raw is not None else values["latency_ms"]
        new_lat, how = (m.latency.get(stat) if m.latency else math.inf), f"{stat}, raw"
    tol = latency_allowed(rec_lat, recorded_m.latency if recorded_m else None, m.latency)
    rows.append(VerifyRow("latency_ms", rec_lat, new_lat, f"+-{tol:.4g} ({how})", abs(new_lat - rec_lat) <= tol))
    new_mem = m.memory_total_mb if m.memory_total_mb is not None else math.inf
    tol = memory_allowed(values["memory_mb"])
    rows.append(VerifyRow("memory_mb", values["memory_mb"], new_mem, f"+-{tol:.4g}",
                          abs(new_mem - values["memory_mb"]) <= tol))
    return VerifyReport(tuple(rows))
