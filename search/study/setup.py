"""Prepare a study once (reference model, teacher metrics, search layers) and rebuild a Context anywhere."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from search.config import DeviceProfile, SearchSpace
from search.errors import SetupFailed, TrialFailure, UserError
from search.study.context import Context, example_input
from search.study.record import (
    S_INPUT,
    S_LAYERS,
    S_METRIC,
    S_PROFILE,
    S_PROFILE_DIGEST,
    S_PROFILE_FILE,
    S_REFERENCE_BASELINE,
    S_REFERENCE_ONNX,
    S_SEED,
    S_SPACE,
    S_SPACE_FILE,
    S_TASK,
    S_TEACHER,
    drift_anchor,
)
from search.study.sampling import SearchLayers
from search.tasks import Task
from search.tasks.arrays import calibration_sample, dataset_arrays, feed_sample
from search.tasks.inputs import traceable
from search.utils.atomic import atomic_path

REFERENCE_NAME = "reference.onnx"
ANCHOR_ROUNDS = 3


def _split_reference(task: Task, reference_onnx: Path) -> Path:
    """The ONNX graph whose layer names students have. Students are split copies (each
    nn.MultiheadAttention as q/k/v/out Linears, the same function), so their projections are named
    `attn.q_proj`, ... where the teacher's fused in-projection belongs to `attn`. The teacher itself stays
    as the user wrote it: its latency is measured on its own graph."""
    from torch import nn

    from search.compress import export_onnx
    from search.compress.attention import split_copy

    if not any(isinstance(m, nn.MultiheadAttention) for m in task.teacher.modules()):
        return reference_onnx
    split = reference_onnx.with_name("reference-split.onnx")
    if not split.is_file():
        with atomic_path(split) as tmp:
            export_onnx(split_copy(task.teacher), example_input(task, 3), tmp)
    return split


def _probe_pruning(task: Task, groups: dict[str, list[str]]) -> str:
    """Prune every group by half once: a model whose dependency graph traces but whose pruning step fails
    (torch-pruning's index mapping on some channel shuffles) would otherwise fail the same way in every
    trial, a search axis that never applies. Returns the reason to skip pruning, or ""."""
    from search.compress import prune

    result = prune(task.teacher, example_input(task), dict.fromkeys(groups, 0.5), channel_multiple=1)
    applied = result.applied(dict.fromkeys(groups, 0.5))
    if any(a["applied"] > 0 for a in applied.values()):
        return ""
    reasons = sorted({a.get("reason", "") for a in applied.values()} - {""})
    return f"pruning every unit by half removed nothing ({reasons[0] if reasons else 'no reason given'})"


def search_layers(task: Task, reference_onnx: Path, space: SearchSpace) -> SearchLayers:
    """The search units. A model torch-pruning cannot trace (a channel shuffle it cannot map) is still
    searched over quantization and distillation; the reason is kept as `pruning_skipped`."""
    from search.compress import droppable_blocks, layer_blocks, prune_groups
    from search.compress.export import short_reason
    from search.compress.onnx_names import weighted_nodes

    skipped = ""
    try:
        groups = prune_groups(task.teacher, example_input(task), never_prune=space.pruning.never_prune)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no pruning axis, say why
        groups, skipped = {}, f"torch-pruning cannot trace the model's channels ({short_reason(exc)})"
    if not skipped and not groups and any(r > 0 for r in space.pruning.ratios):
        skipped = "no layer's output channels can be pruned (each is the classifier, never_prune or coupled to it)"
    if groups and not skipped:
        skipped = _probe_pruning(task, groups)
        groups = {} if skipped else groups
    nodes = weighted_nodes(_split_reference(task, reference_onnx))
    quantizable = list(nodes)
    blocks = layer_blocks(task.teacher, list(groups))
    return SearchLayers(groups=groups, blocks=blocks, quantizable=quantizable,
                        quant_blocks=layer_blocks(task.teacher, quantizable),
                        quant_ops={layer: sorted({n.op_type for n in ns}) for layer, ns in nodes.items()},
                        pruning_skipped=skipped, droppable=droppable_blocks(task.teacher, example_input(task), blocks))


@contextmanager
def _step(task: Task, step: str, exit_code: int = 2) -> Iterator[None]:
    """Any failure inside is one line naming the task and the step (the CLI prints it, no traceback)."""
    from search.compress.export import short_reason

    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model or environment: report, do not crash
        raise SetupFailed(task.name, step, str(exc) if isinstance(exc, TrialFailure) else short_reason(exc),
                          exit_code=exit_code) from exc


def check_same_setup(study: optuna.Study, task_spec: str, space: SearchSpace, profile: DeviceProfile) -> None:
    """Resuming a study with another profile, space or task would mix incomparable trials."""
    attrs = study.user_attrs
    if S_PROFILE_DIGEST not in attrs:
        return
    if attrs.get(S_TASK) != task_spec:
        raise UserError(f"study '{study.study_name}' was created for task {attrs.get(S_TASK)!r}, not {task_spec!r}: "
                        "use another --study name")
    if attrs[S_PROFILE_DIGEST] != profile.digest():
        raise UserError(f"study '{study.study_name}' was created with device profile "
                        f"'{attrs.get(S_PROFILE, {}).get('name')}' ({attrs.get(S_PROFILE_FILE)}); "
                        "this profile differs: "
                        "use another --study name")
    # Re-read through today's schema: a field added since the study began takes its default, not a mismatch.
    try:
        stored = SearchSpace.model_validate_json(json.dumps(attrs.get(S_SPACE))).model_dump(mode="json")
    except ValueError:
        stored = attrs.get(S_SPACE)
    if json.dumps(stored, sort_keys=True) != json.dumps(space.model_dump(mode="json"), sort_keys=True):
        raise UserError(f"study '{study.study_name}' was created with another search space "
                        f"({attrs.get(S_SPACE_FILE)}): use another --study name")


def build_context(study: optuna.Study, task: Task, space: SearchSpace, profile: DeviceProfile, study_dir: Path, *,
                  seed: int, train_on: str, threads: int | None = None, task_spec: str, space_file: str,
                  profile_file: str) -> Context:
    """The per-process trial context; the first process also records the study's fixed facts."""
    import torch

    from search.compress import export_onnx
    from search.measure import get_backend
    from search.measure.accuracy import onnx_accuracy
    from search.measure.cache import MeasurementCache
    from search.tasks.teacher import pick_device

    study_dir.mkdir(parents=True, exist_ok=True)
    reference = study_dir / REFERENCE_NAME
    if not reference.is_file():
        with atomic_path(reference) as tmp, _step(task, "exporting the teacher to ONNX"):
            export_onnx(task.teacher, example_input(task, 3), tmp)
    attrs = study.user_attrs
    if S_LAYERS in attrs:
        layers = SearchLayers.from_dict(attrs[S_LAYERS])
    else:
        with _step(task, "finding the search units (pruning groups, quantizable layers)"):
            layers = search_layers(task, reference, space)
    val_x, val_y = dataset_arrays(task.val)
    cache = MeasurementCache(study_dir / "measure-cache")
    # Every worker and resume corrects drift against the study's one anchor (the backend applies it).
    sample = feed_sample(task.val)  # every measurement feeds the task's own input
    backend = get_backend(profile, reference_baseline=drift_anchor(attrs), sample=sample)
    ctx = Context(
        task=task, space=space, profile=profile, study_dir=study_dir, reference_onnx=reference, layers=layers,
        bits=space.bits_for(profile, source=space_file), teacher_metrics=attrs.get(S_TEACHER, {}),
        calibration=calibration_sample(task.train, space.quantization.calibration.samples, seed),
        val_x=val_x, val_y=val_y, cache=cache, backend=backend, device=pick_device(train_on), seed=seed,
        logits_dir=study_dir.parent / "teachers", threads=threads,
    )
    if S_TEACHER not in attrs:
        with _step(task, "measuring the teacher on the device profile", exit_code=1):
            # The study's drift anchor: the teacher over ANCHOR_ROUNDS fresh-process rounds, not one, since
            # every later latency is a ratio to it times this value.
            rounds = max(ANCHOR_ROUNDS, profile.measure.rounds)
            anchored = profile.model_copy(update={"measure": profile.measure.model_copy(update={"rounds": rounds})})
            m = get_backend(anchored, sample=sample).measure(reference, reference)
            cache.put(cache.key(reference, profile, reference), m)  # the teacher's structure: measured
        ctx.backend = get_backend(profile, reference_baseline=m.reference_baseline, sample=sample)
        import torch_pruning as tp

        with torch.no_grad(), _step(task, "counting the teacher's operations"):
            macs, params = tp.utils.count_ops_and_params(task.teacher, traceable(ctx.example))
        with _step(task, "scoring the teacher with ONNX Runtime"):
            accuracy = onnx_accuracy(reference, val_x, val_y, metric=task.metric)
        ctx.teacher_metrics = {
            "accuracy": accuracy,
            "latency_ms": m.objective(profile.measure.statistic),
            "memory_mb": m.memory_total_mb, "model_mb": reference.stat().st_size / (1024 * 1024),
            "params": int(params), "macs": int(macs),
        }
        for key, value in {
            S_TASK: task_spec, S_SPACE: space.model_dump(mode="json"), S_SPACE_FILE: space_file,
            S_PROFILE: profile.model_dump(mode="json"), S_PROFILE_FILE: profile_file,
            S_PROFILE_DIGEST: profile.digest(), S_SEED: seed, S_LAYERS: layers.to_dict(),
            S_INPUT: {"shape": list(task.input_shapes[0]), "num_classes": task.num_classes,
                      "class_names": list(task.class_names), **dataclasses.asdict(task.input_specs[0]),
                      "inputs": [{**dataclasses.asdict(s), "shape": list(shape)}
                                 for s, shape in zip(task.input_specs, task.input_shapes, strict=True)]},
            S_METRIC: task.metric.describe(), S_REFERENCE_ONNX: REFERENCE_NAME, S_TEACHER: ctx.teacher_metrics,
            S_REFERENCE_BASELINE: dataclasses.asdict(m.reference_baseline) if m.reference_baseline else None,
        }.items():
            study.set_user_attr(key, value)
    return ctx
