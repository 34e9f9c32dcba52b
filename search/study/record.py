"""What a study stores, in one place: the attribute names and the typed view of a trial.

The search (writer) and the inspection commands (readers: front, plot, export) share this
module, so a renamed attribute breaks loudly in one spot instead of silently in three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Objectives, in Optuna's value order.
OBJECTIVES: tuple[str, ...] = ("accuracy", "latency_ms", "memory_mb")
DIRECTIONS: tuple[str, ...] = ("maximize", "minimize", "minimize")

# Study user attributes.
S_TASK = "task"  # task spec string (e.g. "fashion-mnist")
S_SPACE = "space"  # SearchSpace.model_dump(mode="json")
S_SPACE_FILE = "space_file"
S_PROFILE = "profile"  # DeviceProfile.model_dump(mode="json")
S_PROFILE_FILE = "profile_file"
S_PROFILE_DIGEST = "profile_digest"
S_TEACHER = "teacher"  # {"accuracy", "latency_ms", "memory_mb", "model_mb", "params", "macs"}
S_REFERENCE_BASELINE = "reference_baseline"  # LatencyStats dict of the fp32 teacher: the drift anchor
S_LAYERS = "layers"  # {"prunable": [...], "quantizable": [...], "blocks": {block: [layers]}}
S_ARTIFACTS = "artifacts_dir"
S_SEED = "seed"
S_INPUT = "input"  # {"shape", "num_classes", "class_names", "name", "dtype", "value_range", "normalisation", "inputs"}
# ("inputs": one {"name", "shape", "dtype", "value_range", "normalisation"} per model input; the rest: the first)
S_METRIC = "metric"  # {"name", "percent"}: what `accuracy` means (search.metrics.Metric.describe); absent: top-1
S_REFERENCE_ONNX = "reference_onnx"  # the fp32 teacher ONNX, relative to the study folder
# Held-out scores, written once per front point by the final scoring step (the only reader of `test`):
# {"teacher": {"accuracy", "n"}, "<trial number>": {"accuracy", "n", "change", "se", "verdict", "sha256"}}.
# A study attribute: Optuna refuses to change a finished trial's attributes.
S_TEST_SCORES = "test_scores"
S_SENSITIVITY = "sensitivity"  # --seed-plans: [{"unit", "kind", "value", "accuracy_drop", "latency_saved_frac"}]
# --seed-plans: {"sensitivity_s", "allocation_s", "plans_measured", "seeded", "as_baseline": {target: baseline}}
S_ALLOCATION = "allocation"
S_HAS_TEST = "has_test"  # False for a task without a `test` split: accuracies are the selection set's

# Trial user attributes.
T_PLAN = "plan"  # Plan.to_dict()
T_BASELINE = "baseline"  # one of BASELINES
T_SEEDED = "seeded"  # the latency target (fraction of the teacher's) a sensitivity-allocated plan was solved for
T_PREDICTED = "predicted"  # what the additive sensitivity model predicted for a seeded plan
T_REFINED_FROM = "refined_from"  # trial number this one retrains with the longer (refine or promote) budget
T_BUDGET = "budget"  # "explore" | "promote" | "refine"
B_PROMOTE = "promote"  # T_BUDGET of a promotion: successive halving's middle rung (search.study.refine)
T_TRAINED = "trained"  # False when hardware-first skipping skipped distillation
T_FEASIBLE = "feasible"
T_CONSTRAINTS = "constraints"  # {name: value}; feasible when every value <= 0
T_METRICS = "metrics"  # {"accuracy", "latency_ms", "latency_raw_ms", "memory_mb", "memory_model_mb",
#                         "model_mb", "macs", "params"}
T_MEASUREMENT = "measurement"  # Measurement.to_dict()
T_STAGE = "stage"  # the stage a trial is in (or was in when it stopped): prune, export, measure, distill, ...
T_STAGE_SECONDS = "stage_seconds"  # {"prune", "measure", "distill", "export", "quantize", "evaluate"}
T_SKIPPED = "skipped_layers"  # {layer: reason} (pruning or quantization could not apply it)
T_PRUNED = "pruned"  # {layer: {"requested", "applied", "channels": [before, after], "reason"?}}
T_PRECISION = "precision"  # {layer: {"requested": bits, "runs_as": kernel, "differs": bool}}
T_RUNS_READ_ON = "runs_as_read_on"  # "host" or "device: <its description>": whose optimised graph T_PRECISION read
T_EXPORTER = "exporter"  # "torchscript" or "dynamo": which exporter wrote the scored file (its graphs differ by 1-2%)
T_ONNX_SHA256 = "onnx_sha256"  # sha256 of the ONNX file whose accuracy was scored (the artifact)
T_STOPPED = "stopped"  # the memory limit stopped the model: a COMPLETE, infeasible trial without latency
T_FAIL_REASON = "fail_reason"
T_INTERRUPTED_FROM = "interrupted_from"  # a trial re-queued after Ctrl-C stopped this one
T_WORKER = "worker"  # host:pid of the process that ran the trial
T_ONNX_ARTIFACT = "onnx_artifact_id"
T_PLAN_ARTIFACT = "plan_artifact_id"

# Constraint names of the accuracy floor; the other names in T_CONSTRAINTS are the profile's budgets.
C_MIN_ACCURACY, C_MAX_DROP = "min_accuracy", "max_accuracy_drop"
ACCURACY_CONSTRAINTS = (C_MIN_ACCURACY, C_MAX_DROP)
BASELINES: tuple[str, ...] = ("teacher-fp32", "teacher-int8", "prune50-kd-fp32", "prune50-kd-int8")


def drift_anchor(study_attrs: dict) -> Any:
    """The study's drift anchor (S_REFERENCE_BASELINE) as LatencyStats, None before the first measurement.
    Every worker's backend and `export --verify` correct latency against this one value."""
    from search.measure.record import LatencyStats

    stored = study_attrs.get(S_REFERENCE_BASELINE)
    return LatencyStats(**stored) if stored else None


@dataclass(frozen=True)
class TrialRecord:
    """A typed view of one Optuna FrozenTrial as the search wrote it."""

    number: int
    state: str  # COMPLETE | FAIL | RUNNING | WAITING | PRUNED
    values: tuple[float, ...] | None
    # Each field below is the trial user attribute of the same name (or the one _ATTR_KEYS names).
    plan: dict | None = None
    feasible: bool = False
    trained: bool = False
    baseline: str | None = None
    refined_from: int | None = None
    budget: str | None = None
    seeded: float | None = None
    predicted: dict | None = None
    fail_reason: str | None = None
    measurement: dict | None = None
    onnx_sha256: str | None = None
    onnx_artifact: str | None = None
    plan_artifact: str | None = None
    test: dict | None = None  # this trial's entry of S_TEST_SCORES, when it was scored
    metrics: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    skipped_layers: dict = field(default_factory=dict)
    pruned: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)

    @classmethod
    def from_trial(cls, t: Any, test_scores: dict | None = None) -> TrialRecord:
        # A missing attribute keeps the field's default.
        ua = t.user_attrs
        stored = {f.name: ua[key] for f in fields(cls)
                  if f.name not in _OWN_FIELDS and (key := _ATTR_KEYS.get(f.name, f.name)) in ua}
        return cls(number=t.number, state=t.state.name, values=tuple(t.values) if t.values is not None else None,
                   test=(test_scores or {}).get(str(t.number)), **stored)


_OWN_FIELDS = frozenset({"number", "state", "values", "test"})  # read from the trial itself, not its user attrs
_ATTR_KEYS = {"onnx_artifact": T_ONNX_ARTIFACT, "plan_artifact": T_PLAN_ARTIFACT}  # named unlike their field


# Where a trial's plan came from, so the front compares like with like (a refinement takes its source's).
O_BASELINE, O_UNIFORM, O_ALLOCATED, O_SAMPLED = "baseline", "uniform", "allocated", "sampled"
ORIGINS: tuple[str, ...] = (O_BASELINE, O_UNIFORM, O_ALLOCATED, O_SAMPLED)
UNIFORM_PREFIX = "prune"  # baselines named prune{pct}-kd-{fp32|int8}: every unit at one ratio, distilled


def metric_percent(attrs: Mapping[str, Any]) -> bool:
    """Whether a study's accuracy is a share shown in percent (top-1, and studies from before S_METRIC)."""
    return bool((attrs.get(S_METRIC) or {}).get("percent", True))


def is_uniform(baseline: str | None) -> bool:
    """A uniform-plan baseline (prune50-kd-fp32, ...), as opposed to a training-free one (teacher-*)."""
    return bool(baseline) and str(baseline).startswith(UNIFORM_PREFIX)


def trial_origin(record: TrialRecord, by_number: Mapping[int, TrialRecord]) -> str:
    """One of ORIGINS: `baseline` (training-free teacher-*), `uniform` (prune* baselines), `allocated`
    (sensitivity-seeded), `sampled` (the sampler's). A refinement does not keep `seeded`, so it is looked
    up through `refined_from`; its own attributes decide only when the source is not in `by_number`."""
    seen = {record.number}
    while record.refined_from is not None and (src := by_number.get(record.refined_from)) and src.number not in seen:
        record = src
        seen.add(src.number)
    if record.baseline:
        return O_UNIFORM if is_uniform(record.baseline) else O_BASELINE
    return O_ALLOCATED if record.seeded is not None else O_SAMPLED
