"""Export one trial as a deployable folder: model.onnx and manifest.json (plan, metrics, profile,
versions and the input spec a deployer needs); `verify=True` then checks it (search.inspect.verify).

The ONNX file is the trial's artifact byte for byte: it is the file whose accuracy, latency and memory
the study recorded, so what is deployed is what was scored.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError
from search.inspect.front import budget_label
from search.inspect.verify import VerifyError, VerifyReport, verify_model
from search.study.pareto import is_feasible, nearest_front, pareto_ranks
from search.study.record import OBJECTIVES, S_INPUT, S_PROFILE_DIGEST, S_SPACE, TrialRecord, trial_origin
from search.utils.atomic import atomic_write_text
from search.utils.files import sha256_file

if TYPE_CHECKING:
    from search.inspect.view import StudyData

MANIFEST_FORMAT = "hwsearch-export/1"
MODEL_NAME = "model.onnx"
MANIFEST_NAME = "manifest.json"
VERSIONED = ("torch", "onnxruntime", "onnx", "optuna", "numpy")


@dataclass(frozen=True)
class ExportResult:
    model: Path
    manifest: Path
    trial: int
    warnings: tuple[str, ...] = ()
    verification: VerifyReport | None = None


def exportable(view: StudyData, number: int) -> TrialRecord:
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


def _io_spec(model_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def _task_info(view: StudyData, task: Any | None) -> dict[str, Any]:
    """Per input, its value range and normalisation ({"inputs": [{...}], in order}), and the class names: from
    the loaded task when verify loaded it, else from the built-in registry or what the study recorded (cheap: a
    user task is not loaded just for this)."""
    from search.tasks.builtin import BUILTIN_TASKS

    def described(spec: Any) -> dict[str, Any]:
        return {"value_range": None if spec.value_range is None else list(spec.value_range),
                "normalisation": spec.normalisation}

    if task is not None:
        return {"inputs": [described(s) for s in task.input_specs], "class_names": list(task.class_names) or None}
    if view.task_spec in BUILTIN_TASKS:
        b = BUILTIN_TASKS[view.task_spec]
        specs = b.input_spec if isinstance(b.input_spec, tuple) else (b.input_spec,)
        return {"inputs": [described(s) for s in specs], "class_names": list(b.class_names) or None}
    if isinstance(recorded := view.attrs.get(S_INPUT), dict) and "value_range" in recorded:  # as the study saw it
        each = recorded.get("inputs") or [recorded]
        return {"inputs": [{"value_range": list(r["value_range"]) if r.get("value_range") else None,
                            "normalisation": r.get("normalisation")} for r in each],
                "class_names": recorded.get("class_names") or None}
    return {"inputs": [{"value_range": None, "normalisation": f"see task {view.task_spec}"}], "class_names": None}


def _output_meaning(view: StudyData) -> str:
    if view.metric_name == "next-token top-1":
        return "next-token scores (logits) per position, (batch, positions, vocabulary); the next token is the arg-max"
    return "class scores (logits); the predicted class is the arg-max"


def build_manifest(view: StudyData, rec: TrialRecord, model_path: Path, task: Any | None = None) -> dict[str, Any]:
    inputs, outputs = _io_spec(model_path)
    described_outputs = [{**outputs[0], "meaning": _output_meaning(view)}] + [
        {**o, "meaning": f"the model's output {i} (item {i} of the tuple its forward returns)"}
        for i, o in enumerate(outputs[1:], 1)]
    info = _task_info(view, task)
    described = info["inputs"] + [{"value_range": None, "normalisation": None}] * (len(inputs) - len(info["inputs"]))
    inputs = [{**i, "batch_dim": 0, **d} for i, d in zip(inputs, described, strict=False)]
    profile = view.profile
    return {
        "format": MANIFEST_FORMAT,
        "study": view.name,
        "trial": rec.number,
        "task": view.task_spec,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"file": MODEL_NAME, "sha256": sha256_file(model_path), "bytes": model_path.stat().st_size},
        "input": inputs[0],  # the first input (a model with one: the only one)
        "inputs": inputs,  # every input, in the order the model takes them
        "output": described_outputs[0],  # the first (a model with one: the only one)
        # every output, in the order the model returns them; the task's metric says how they are read together
        "outputs": described_outputs,
        "class_names": info["class_names"],
        "plan": rec.plan,
        "objectives": dict(zip(OBJECTIVES, rec.values or (), strict=False)),
        "metrics": rec.metrics,
        "feasible": is_feasible(rec),
        "constraints": rec.constraints,
        "baseline": rec.baseline,
        "refined_from": rec.refined_from,
        # as the front row reads them: where the plan came from and the distillation it got
        "origin": trial_origin(rec, {r.number: r for r in view.trials}),
        "budget": budget_label(rec, view.attrs.get(S_SPACE)),
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


def export_trial(view: StudyData, number: int, out_dir: str | Path, *, verify: bool = False,
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
    view.download_artifact(rec.onnx_artifact or "", model)
    task = view.load_task() if verify else None
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
