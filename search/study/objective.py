"""One trial: sample a plan, prune, measure the structure first, then distil, export, quantize, evaluate."""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import optuna

from search.errors import TrialFailure, disk_full
from search.measure.accuracy import onnx_accuracy
from search.study.context import Context
from search.study.record import (
    B_PROMOTE,
    C_MAX_DROP,
    C_MIN_ACCURACY,
    T_BASELINE,
    T_BUDGET,
    T_CONSTRAINTS,
    T_EXPORTER,
    T_FAIL_REASON,
    T_FEASIBLE,
    T_INTERRUPTED_FROM,
    T_MEASUREMENT,
    T_METRICS,
    T_ONNX_ARTIFACT,
    T_ONNX_SHA256,
    T_PLAN,
    T_PLAN_ARTIFACT,
    T_PRECISION,
    T_PREDICTED,
    T_PRUNED,
    T_REFINED_FROM,
    T_RUNS_READ_ON,
    T_SEEDED,
    T_SKIPPED,
    T_STAGE,
    T_STAGE_SECONDS,
    T_STOPPED,
    T_TRAINED,
    T_WORKER,
)
from search.study.sampling import sample_plan
from search.utils.files import sha256_file

MB = 1024 * 1024


# Stages that run whole inside the measurement gate (`Context.step_guard`): `distill` pauses per step instead
# (a measurement must not wait for a whole epoch), `measure` is what the gate protects, `store` is file copies.
GATED_STAGES = frozenset({"prune", "export", "quantize", "evaluate"})


class StageTimer:
    """Seconds per stage; with `guard` (`Context.step_guard`), the CPU-heavy stages run inside it."""

    def __init__(self, on_stage: Callable[[str], None] | None = None,
                 guard: Callable[[], AbstractContextManager] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._on_stage, self._guard = on_stage, guard

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self._on_stage:
            self._on_stage(stage)
        t0 = time.perf_counter()
        try:
            with self._guard() if self._guard and stage in GATED_STAGES else nullcontext():
                yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def hardware_constraints(ctx: Context, latency_ms: float, memory_mb: float, model_mb: float) -> dict[str, float]:
    """Budget constraints, feasible when <= 0 (Optuna's convention)."""
    b = ctx.profile.budgets
    out = {}
    if b.latency_ms is not None:
        out["latency_ms"] = latency_ms - b.latency_ms
    if b.memory_mb is not None:
        out["memory_mb"] = memory_mb - b.memory_mb
    if b.model_mb is not None:
        out["model_mb"] = model_mb - b.model_mb
    return out


def teacher_over_budget(teacher: dict, budgets) -> str | None:
    """One line when the teacher itself breaks a hardware budget: plans over a budget are not trained, so the
    user learns at the start how much faster (or smaller) a plan must be, not from an untrained front."""
    over = [(name, teacher.get(name), limit) for name, limit in
            (("latency_ms", budgets.latency_ms), ("memory_mb", budgets.memory_mb), ("model_mb", budgets.model_mb))
            if limit is not None and teacher.get(name) is not None and teacher[name] > limit]
    if not over:
        return None
    parts = ", ".join(f"{n} {v:.4g} > {lim:.4g} ({v / lim:.1f}x over)" for n, v, lim in over)
    return (f"warning: the teacher breaks the profile's budgets: {parts}; only plans within them are trained "
            "(a profile with other budgets: its `budgets` section)")


def accuracy_constraint(ctx: Context, accuracy: float) -> dict[str, float]:
    a = ctx.space.accuracy
    out = {}
    if a.min_accuracy is not None:
        out[C_MIN_ACCURACY] = a.min_accuracy - accuracy
    if a.max_drop is not None:
        out[C_MAX_DROP] = (ctx.teacher_metrics["accuracy"] - accuracy) - a.max_drop
    return out


class Objective:
    """Callable for `study.optimize`; knows the pipeline, not how any stage works inside."""

    def __init__(self, ctx: Context, artifact_store, on_stage: Callable[[int, str], None] | None = None,
                 checkpoint: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.store = artifact_store
        self.on_stage = on_stage
        self.checkpoint = checkpoint  # called at every stage boundary: may raise KeyboardInterrupt
        self.disk_full: str | None = None  # set when the results disk is full: no further trial can succeed

    def _stage(self, trial: optuna.Trial, stage: str) -> None:
        if self.checkpoint:
            self.checkpoint()
        trial.set_user_attr(T_STAGE, stage)  # visible in the storage: dashboards, other workers, tests
        if self.on_stage:
            self.on_stage(trial.number, stage)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        timer = StageTimer(lambda s: self._stage(trial, s), guard=self.ctx.step_guard)
        work = self.ctx.study_dir / "tmp" / f"trial-{trial.number}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            return self._run(trial, timer, work)
        except KeyboardInterrupt:
            # Ctrl-C: Optuna marks this trial FAIL; queue its plan again so a rerun picks it up
            # (a baseline or refinement must not be lost to an interruption).
            keep = {k: trial.user_attrs[k] for k in (T_BASELINE, T_BUDGET, T_REFINED_FROM, T_SEEDED, T_PREDICTED)
                    if k in trial.user_attrs}  # its origin too (an allocated plan stays allocated)
            trial.study.enqueue_trial(trial.params, user_attrs={**keep, T_INTERRUPTED_FROM: trial.number})
            raise
        except Exception as e:
            full = disk_full(e)
            if full:
                self.disk_full = full
            reason = full or (str(e) if isinstance(e, TrialFailure) else f"{type(e).__name__}: {e}")
            try:
                trial.set_user_attr(T_FAIL_REASON, " ".join(reason.split())[:500])
                trial.set_user_attr(T_STAGE_SECONDS, timer.rounded())
            except Exception:
                if not full:  # on a full disk the storage may refuse this too; the run stops anyway
                    raise
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _budget(self, trial: optuna.Trial):
        name, d = trial.user_attrs.get(T_BUDGET), self.ctx.space.distillation
        if name == "refine":
            return "refine", d.refine
        if name == B_PROMOTE and d.promote is not None:
            return B_PROMOTE, d.promote.budget
        return "explore", d.budget

    def _run(self, trial: optuna.Trial, timer: StageTimer, work: Path) -> tuple[float, float, float]:
        from search.compress import Reexport, compare, distill, export_onnx, prune
        from search.compress.onnx_names import exporter_of
        from search.compress.runs import kernel_signature

        ctx = self.ctx
        budget_name, budget = self._budget(trial)
        trial.set_user_attr(T_BUDGET, budget_name)
        trial.set_user_attr(T_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        plan = sample_plan(trial, ctx.space, ctx.layers, ctx.bits, ctx.seed, ctx.profile)
        trial.set_user_attr(T_PLAN, plan.to_dict())
        skipped: dict[str, str] = {}
        pruned = any(r > 0 for r in plan.prune.values())

        with timer("prune"):  # all-zero ratios: an unchanged copy of the teacher, with its counts
            pr = prune(ctx.task.teacher, ctx.example, dict(plan.prune), channel_multiple=ctx.profile.channel_multiple,
                       importance=ctx.space.pruning.importance, never_prune=ctx.space.pruning.never_prune)
        student, macs, params = pr.model, pr.macs_after, pr.params_after
        skipped.update({k: f"prune: {v}" for k, v in pr.skipped.items() if plan.prune.get(k, 0) > 0})
        trial.set_user_attr(T_PRUNED, pr.applied(plan.prune))
        reexport = Reexport()  # the structure's export, given the trained weights after distillation
        kernels: dict[str, str] = {}  # tag -> what the session runs per layer: part of the measurement's key

        def export_and_quantize(tag: str) -> Path:
            with timer("export"):
                fp32 = export_onnx(student, ctx.examples, work / f"{tag}-fp32.onnx", reuse=reexport)
            with timer("quantize"):
                q = ctx.quantize(fp32, work / f"{tag}.onnx", dict(plan.bits))
                # What ONNX Runtime runs (its optimised graph, the profile's session options), not what was asked.
                runs, where = ctx.runs_as(q.path, fp32)
                trial.set_user_attr(T_RUNS_READ_ON, where)
                kernels[tag] = kernel_signature(runs)
                precision = compare({k: plan.bits.get(k, 32) for k in runs}, runs, q.dynamic)
                for layer, why in {**q.notes, **{k: f"skipped: {v}" for k, v in q.skipped.items()}}.items():
                    if layer in precision:
                        precision[layer]["why"] = why
                trial.set_user_attr(T_PRECISION, precision)
            skipped.update({k: f"quantize: {v}" for k, v in q.skipped.items()})
            return q.path

        # Hardware first: latency and memory do not depend on trained weights.
        candidate = export_and_quantize("structure")
        with timer("measure"):
            m = ctx.measure(candidate, kernels=kernels["structure"])
        if m.stopped:  # a measured verdict, not a failure: far over the memory budget
            return self._stopped(trial, m, candidate, timer, skipped, macs, params)
        latency = m.objective(ctx.profile.measure.statistic)
        memory = float(m.memory_total_mb)
        model_mb = candidate.stat().st_size / MB
        hw = hardware_constraints(ctx, latency, memory, model_mb)
        trained = False
        if all(v <= 0 for v in hw.values()) and pruned and (budget.epochs or budget.steps):
            augmented = budget.augment and ctx.task.augment is not None  # cached logits are of the plain inputs
            # A training set's N x T x V logits would not fit; a short study is cheaper with the teacher live.
            live = augmented or ctx.task.output_kind == "tokens" or ctx.live_teacher_is_cheaper()
            with timer("distill"):
                distill(student, ctx.task.train, teacher_logits=None if live else ctx.teacher_logits(),
                        teacher=ctx.task.teacher if live else None, augment=ctx.task.augment if augmented else None,
                        temperature=plan.temperature,
                        alpha=plan.alpha, epochs=budget.epochs, steps=budget.steps, max_samples=budget.max_samples,
                        lr=ctx.space.distillation.lr, batch_size=ctx.space.distillation.batch_size, seed=plan.seed,
                        device=ctx.device, num_threads=ctx.threads, step_guard=ctx.step_guard,
                        output_kind=ctx.task.output_kind)
            student.cpu()
            trained = True
            candidate = export_and_quantize("final")
            with timer("measure"):  # same structure and kernels: a cache hit, unless calibration changed them
                m = ctx.measure(candidate, recheck=True, kernels=kernels["final"])
            latency = m.objective(ctx.profile.measure.statistic)
            memory = float(m.memory_total_mb)
            model_mb = candidate.stat().st_size / MB
            hw = hardware_constraints(ctx, latency, memory, model_mb)
        with timer("evaluate"):
            accuracy = onnx_accuracy(candidate, ctx.val_x, ctx.val_y, metric=ctx.task.metric)
            trial.set_user_attr(T_ONNX_SHA256, sha256_file(candidate))  # the file scored, byte for byte
            trial.set_user_attr(T_EXPORTER, exporter_of(candidate))
        constraints = {**hw, **accuracy_constraint(ctx, accuracy)}
        for name, value in constraints.items():
            trial.set_constraint(name, float(value))
        with timer("store"):
            model_file = work / "model.onnx"  # the name `export` hands out
            shutil.copyfile(candidate, model_file)
            onnx_id = optuna.artifacts.upload_artifact(artifact_store=self.store, file_path=str(model_file),
                                                       study_or_trial=trial)
            plan_file = work / "plan.json"
            plan_file.write_text(plan.to_json(indent=2))
            plan_id = optuna.artifacts.upload_artifact(artifact_store=self.store, file_path=str(plan_file),
                                                       study_or_trial=trial)
        trial.set_user_attr(T_ONNX_ARTIFACT, onnx_id)
        trial.set_user_attr(T_PLAN_ARTIFACT, plan_id)
        trial.set_user_attr(T_TRAINED, trained)
        trial.set_user_attr(T_FEASIBLE, all(v <= 0 for v in constraints.values()))
        trial.set_user_attr(T_CONSTRAINTS, constraints)
        trial.set_user_attr(T_MEASUREMENT, m.to_dict())
        trial.set_user_attr(T_SKIPPED, skipped)
        trial.set_user_attr(T_METRICS, {
            "accuracy": accuracy, "latency_ms": latency, "memory_mb": memory, "model_mb": model_mb,
            "latency_raw_ms": m.latency.get(ctx.profile.measure.statistic) if m.latency else None,
            "memory_model_mb": m.memory_model_mb, "macs": int(macs), "params": int(params),
        })
        trial.set_user_attr(T_STAGE_SECONDS, timer.rounded())
        return accuracy, latency, memory

    def _stopped(self, trial: optuna.Trial, m, candidate: Path, timer: StageTimer, skipped: dict, macs: int,
                 params: int) -> tuple[float, float, float]:
        """The memory limit stopped the model before it could be timed: COMPLETE and infeasible, with the
        memory figure it reached (a lower bound) and no latency (inf); accuracy is not evaluated (0)."""
        ctx = self.ctx
        memory = float(m.memory_total_mb if m.memory_total_mb is not None else (m.memory_limit_mb or 0.0))
        model_mb = candidate.stat().st_size / MB
        # No latency: its constraint is a large finite stand-in (storages and samplers want finite numbers).
        constraints = {k: min(v, 1e9) for k, v in hardware_constraints(ctx, math.inf, memory, model_mb).items()}
        constraints["memory_mb"] = max(constraints.get("memory_mb", 0.0), 1.0)  # stopped: over, whatever the figure
        for name, value in constraints.items():
            trial.set_constraint(name, float(value))
        trial.set_user_attr(T_STOPPED, m.error)
        trial.set_user_attr(T_TRAINED, False)
        trial.set_user_attr(T_FEASIBLE, False)
        trial.set_user_attr(T_CONSTRAINTS, constraints)
        trial.set_user_attr(T_MEASUREMENT, m.to_dict())
        trial.set_user_attr(T_SKIPPED, skipped)
        trial.set_user_attr(T_METRICS, {
            "accuracy": None, "latency_ms": None, "memory_mb": memory, "model_mb": model_mb,
            "latency_raw_ms": None, "memory_model_mb": m.memory_model_mb, "macs": int(macs), "params": int(params),
        })
        trial.set_user_attr(T_STAGE_SECONDS, timer.rounded())
        return 0.0, math.inf, memory
