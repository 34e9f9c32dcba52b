"""Sensitivity analysis: each search unit changed alone on the teacher, scored on `val` and timed on the device.

For every prune unit of the space's granularity at every non-zero ratio, and every bit unit at every bit-width
below 32 the profile runs for it (`SearchLayers.unit_bits`), the teacher with that ONE change is pruned,
exported and quantized with the same calls a trial makes, its val top-1 is computed with ONNX Runtime (no
training; `bn_batches` > 0 re-estimates BatchNorm statistics of a pruned variant on that many training batches
first) and its latency measured through the study's structure cache (one measurement per distinct structure).
Two more measurements give the space's latency floor: every prune unit at its largest ratio, in fp32 and with
each bit unit at its lowest bit-width; the faster of the two bounds the additive model of `search.seeding.allocate`.

The result is cached as `<cache_dir>/sensitivity-<key>.json`, keyed by the task name, the teacher's weights
and training inputs, the val split, the profile digest, the space, the seed and `bn_batches`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

from search.config import DeviceProfile, SearchSpace
from search.errors import TrialFailure
from search.study.context import Context, teacher_fingerprint
from search.tasks import Task
from search.utils.atomic import atomic_write_text
from search.utils.progress import progress_bar

KEY_VERSION = "6"  # 2: pruned variants through the fast exporter; 3: their file size saving likewise; 4: floor_params;
# 5: where it was measured (host or agent) and the library versions; 6: every file from the trials' exporter
MB = 1024 * 1024
BN_BATCH = 128  # samples per BatchNorm re-estimation batch
# Re-estimating BatchNorm on 4 batches ranks trained outcomes better than none (Kendall tau 0.745 vs 0.681,
# per-study median over 226 trained plans; benchmarks/results/bn-rank.json) and costs no more time.
DEFAULT_BN_BATCHES = 4


@dataclass(frozen=True)
class SensitivityRow:
    """The teacher with one change: `kind` "prune" (value = ratio) or "bits" (value = bit-width) on `unit`."""

    layers: tuple[str, ...]  # the model's layers the change touches
    unit: str
    kind: str
    value: float
    accuracy: float  # val top-1 of the changed teacher (ONNX Runtime), 0-1
    accuracy_drop: float  # points (percent) below the teacher's val top-1; negative: it scored higher
    latency_ms: float  # drift-corrected objective of the profile's statistic
    latency_saved_ms: float  # teacher's latency minus this one's
    latency_saved_frac: float  # the saving as a share of the teacher's latency
    memory_mb: float
    model_mb: float
    runs: dict[str, str] = field(default_factory=dict)  # bits rows: {layer: kernel ONNX Runtime runs}
    note: str = ""  # why the change applied differently than asked (a skipped or clamped layer)

    @property
    def param(self) -> str:
        """The Optuna parameter this row is one choice of (`prune.<unit>` or `bits.<unit>`)."""
        return f"{self.kind}.{self.unit}"


@dataclass(frozen=True)
class Sensitivity:
    key: str
    task: str
    profile: str
    statistic: str
    teacher_accuracy: float
    teacher_latency_ms: float
    teacher_model_mb: float
    floor_ms: float  # the fastest of the space's extreme plans, measured: no plan is predicted below it
    rows: tuple[SensitivityRow, ...]
    choices: dict[str, list]  # {parameter: every value the study samples for it}, single-choice units left out
    common_params: dict[str, float]  # temperature/alpha as the study's baselines set them
    bn_batches: int
    seconds: float  # what the analysis cost when it ran
    measurements: int  # device measurements it paid for (the structure cache answered the rest)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # {"bits.stem=4" or "floor": why it could not be scored}
    floor_params: dict[str, float] = field(default_factory=dict)  # the plan measured at floor_ms, as parameters
    cached: bool = False  # loaded from the JSON cache: nothing was evaluated or measured this time
    # The task's metric (`Metric.describe()`): a row's accuracy is its value, accuracy_drop 100 x the difference.
    metric: dict = field(default_factory=lambda: {"name": "top-1", "percent": True})

    def frame(self):
        """One row per change, in analysis order (pandas DataFrame)."""
        import pandas as pd

        cols = [f.name for f in fields(SensitivityRow)]
        return pd.DataFrame([[getattr(r, c) for c in cols] for r in self.rows], columns=cols)

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> Sensitivity:
        rows = tuple(SensitivityRow(**{**r, "layers": tuple(r["layers"])}) for r in d["rows"])
        return cls(**{**d, "rows": rows})


def common_params(ctx: Context) -> dict[str, float]:
    """temperature/alpha of a seeded trial, the values `baseline_params` gives the baselines (4 and 0.5 within
    the space's range), and only those the space varies (a fixed one is not a parameter)."""
    d = ctx.space.distillation
    wanted = {"temperature": (4.0, d.temperature), "alpha": (0.5, d.alpha)}
    return {k: min(max(v, r.low), r.high) for k, (v, r) in wanted.items() if r.low != r.high}


def sensitivity_key(task: Task, space: SearchSpace, profile: DeviceProfile, *, seed: int = 0,
                    bn_batches: int = DEFAULT_BN_BATCHES) -> str:
    """What the table depends on: task name, teacher weights and training inputs (`teacher_fingerprint`), the
    val split and the metric's name, profile digest, space, seed (calibration and BatchNorm samples),
    `bn_batches` and `measured_on`."""
    from search.tasks.arrays import dataset_arrays
    from search.tasks.inputs import parts

    val_x, val_y = dataset_arrays(task.val)
    val = hashlib.sha256(b"".join(a.tobytes() for a in (*parts(val_x), val_y))).hexdigest()  # several inputs: each
    blob = {"v": KEY_VERSION, "task": task.name, "teacher": teacher_fingerprint(task.teacher, task.train),
            "val": val, "profile": profile.digest(),
            "space": space.model_dump(mode="json"), "seed": int(seed), "bn_batches": int(bn_batches),
            "measured_on": measured_on(profile), "metric": task.metric.name}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def measured_on(profile: DeviceProfile) -> dict:
    """Where a table's latencies come from and what computed it: the host's CPU (a local profile) or the agent's
    URL (a remote one, whose board the profile names), and the versions of the libraries that export, quantize
    and run the variants. A table measured on another machine or stack must not set this one's targets."""
    from importlib.metadata import version

    from search.measure.runner import describe_device

    where = ({k: v for k, v in describe_device().items() if k in ("cpu", "cores", "machine")}
             if profile.measure.backend == "local" else {"agent": profile.measure.url})
    return {**where, **{lib: version(lib) for lib in ("torch", "onnxruntime", "onnx", "torch-pruning")}}


def cache_path(directory: str | Path, key: str) -> Path:
    return Path(directory) / f"sensitivity-{key}.json"


def load_cached(directory: str | Path, key: str) -> Sensitivity | None:
    """The cached table of `key` (marked `cached`), or None when absent or unreadable."""
    path = cache_path(directory, key)
    if not path.is_file():
        return None
    try:
        found = Sensitivity.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as e:  # torn or from another version: compute again
        print(f"warning: ignoring unreadable sensitivity cache {path} ({type(e).__name__})", file=sys.stderr)
        return None
    return replace(found, cached=True) if found.key == key else None


class _Runner:
    """Prune / export / quantize / measure / evaluate exactly as a trial does, one variant at a time."""

    def __init__(self, ctx: Context, work: Path, bn_inputs) -> None:
        from search.study.objective import StageTimer

        self.ctx, self.work, self.bn_inputs, self.timer = ctx, work, bn_inputs, StageTimer(guard=ctx.step_guard)
        self.all32 = {q: 32 for q in ctx.layers.quantizable}

    @cached_property
    def teacher_fp32(self) -> Path:
        return self.export(self.ctx.task.teacher, "teacher")

    def export(self, model, tag: str) -> Path:
        from search.compress import export_onnx

        with self.timer("export"):
            return export_onnx(model, self.ctx.examples, self.work / f"{tag}-fp32.onnx")

    def pruned(self, ratios: dict[str, float], recalibrate: bool):
        """(pruned model, its channel widths or None when nothing was removed, why a layer was not pruned)."""
        from search.compress import prune

        ctx = self.ctx
        with self.timer("prune"):
            pr = prune(ctx.task.teacher, ctx.example, ratios, channel_multiple=ctx.profile.channel_multiple,
                       importance=ctx.space.pruning.importance, never_prune=ctx.space.pruning.never_prune)
            changed = pr.channels != pr.channels_before
            if recalibrate and changed and self.bn_inputs is not None:
                from search.compress.batchnorm import recalibrate_bn

                recalibrate_bn(pr.model, self.bn_inputs, BN_BATCH)
        note = "; ".join(f"{k}: {v['reason']}" for k, v in pr.applied(ratios).items() if "reason" in v)
        return pr.model, tuple(sorted(pr.channels.items())) if changed else None, note

    def quantized(self, fp32: Path, bits: dict[str, int], tag: str):
        with self.timer("quantize"):
            return self.ctx.quantize(fp32, self.work / f"{tag}.onnx", {**self.all32, **bits})

    def runs(self, q, layers) -> dict[str, str]:
        with self.timer("quantize"):
            found = self.ctx.runs_as(q.path, self.teacher_fp32)[0]  # the device's own view on a remote profile
        return {k: found[k].kernel for k in layers if k in found}

    def score(self, path: Path, evaluate: bool = True, kernels: str | None = None) -> tuple[float, float, float, float]:
        """(val top-1 or nan, latency, memory, file MB) of one ONNX file; `kernels`: its `kernel_signature`."""
        from search.measure.accuracy import onnx_accuracy

        with self.timer("measure"):
            m = self.ctx.measure(path, kernels=kernels)
        if m.stopped:
            raise TrialFailure(f"sensitivity: the memory limit stopped a single-change variant ({m.error})")
        with self.timer("evaluate"):
            acc = (onnx_accuracy(path, self.ctx.val_x, self.ctx.val_y, metric=self.ctx.task.metric) if evaluate
                   else float("nan"))
        return acc, m.objective(self.ctx.profile.measure.statistic), float(m.memory_total_mb or 0.0), \
            path.stat().st_size / MB


class PlanMeter:
    """`meter(params)`: the latency of a whole plan (Optuna parameters), untrained, built and measured as a
    trial's hardware-first stage does: its seeded trial then finds the measurement in the structure cache.
    A plan the memory limit stops measures as infinitely slow."""

    def __init__(self, ctx: Context, work: Path, progress: bool = False) -> None:
        self.ctx, self.run, self.progress, self.calls = ctx, _Runner(ctx, work, None), progress, 0

    def __call__(self, params: dict) -> float:
        import optuna

        from search.compress.runs import kernel_signature
        from search.study.sampling import sample_plan

        ctx, run = self.ctx, self.run
        plan = sample_plan(optuna.trial.FixedTrial(params), ctx.space, ctx.layers, ctx.bits, ctx.seed, ctx.profile)
        tag = f"plan{self.calls}"
        self.calls += 1
        fp32 = run.export(run.pruned(dict(plan.prune), recalibrate=False)[0], tag)
        try:
            q = run.quantized(fp32, dict(plan.bits), tag)
            with run.timer("quantize"):  # its seeded trial finds this measurement under the same key
                kernels = kernel_signature(ctx.runs_as(q.path, fp32)[0])
            ms = run.score(q.path, evaluate=False, kernels=kernels)[1]
        except TrialFailure:
            ms = float("inf")
        if self.progress:  # one line per plan: the allocation can take a minute on a small teacher
            print(f"allocation: {tag} measured {ms:.4g} ms", file=sys.stderr, flush=True)
        return ms


def _variants(ctx: Context) -> tuple[list[tuple[str, str, float, list[str]]], dict[str, list]]:
    """[(unit, kind, value, layers)] to evaluate, and every multi-choice parameter's values."""
    ratios = sorted({float(r) for r in ctx.space.pruning.ratios})
    out, choices = [], {}
    for unit, layers in ctx.layers.prune_units(ctx.space.pruning.granularity).items():
        mine = list(ctx.layers.unit_ratios(unit, tuple(ratios), ctx.space))  # + 1.0 (removed) with depth
        if len(mine) > 1:
            choices[f"prune.{unit}"] = mine
        out += [(unit, "prune", r, layers) for r in mine if r > 0]
    for unit, layers in ctx.layers.bit_units(ctx.space.quantization.granularity).items():
        bits = sorted(ctx.layers.unit_bits(layers, ctx.bits, ctx.profile), reverse=True)
        if len(bits) > 1:
            choices[f"bits.{unit}"] = bits
        out += [(unit, "bits", b, layers) for b in bits if b < 32]
    return out, choices


def measure_sensitivity(ctx: Context, *, bn_batches: int = DEFAULT_BN_BATCHES, cache_dir: str | Path | None = None,
                        refresh: bool = False, progress: bool = False) -> Sensitivity:
    """The sensitivity table of `ctx`'s teacher (see the module docstring), from the cache when it holds it."""
    if bn_batches < 0:
        raise ValueError(f"bn_batches must be >= 0, got {bn_batches}")
    key = sensitivity_key(ctx.task, ctx.space, ctx.profile, seed=ctx.seed, bn_batches=bn_batches)
    directory = ctx.study_dir if cache_dir is None else Path(cache_dir)
    if not refresh and (found := load_cached(directory, key)) is not None:
        return found
    t0, misses0 = time.perf_counter(), ctx.cache.misses
    work = ctx.study_dir / "tmp" / f"sensitivity-{key}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = _analyse(ctx, key, bn_batches, work, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = replace(result, seconds=round(time.perf_counter() - t0, 3), measurements=ctx.cache.misses - misses0)
    atomic_write_text(cache_path(directory, key), json.dumps(result.to_dict(), indent=1))
    return result


def _analyse(ctx: Context, key: str, bn_batches: int, work: Path, progress: bool) -> Sensitivity:
    from search.tasks.arrays import calibration_sample

    variants, choices = _variants(ctx)
    bn_inputs = calibration_sample(ctx.task.train, bn_batches * BN_BATCH, ctx.seed) if bn_batches else None
    run = _Runner(ctx, work, bn_inputs)
    teacher = run.score(run.quantized(run.teacher_fp32, {}, "teacher").path)
    t_acc, t_lat = teacher[0], teacher[1]
    # Every variant goes through the exporter a trial uses (`export_onnx`'s default), so savings are taken against
    # the teacher's file from that exporter.
    teacher_file = run.score(run.teacher_fp32, evaluate=False)
    same: dict = {None: (t_acc, *teacher_file[1:])}  # pruned models of equal widths are equal (deterministic)
    rows: list[SensitivityRow] = []
    failed: dict[str, str] = {}
    with progress_bar(f"sensitivity of the {ctx.task.name} teacher", len(variants) + 2, progress,
                      unit="variants") as bar:
        for i, (unit, kind, value, layers) in enumerate(variants):
            try:
                rows.append(_row(run, i, unit, kind, value, layers, same, teacher))
            except TrialFailure as e:  # as a trial would FAIL: recorded, and the option is never allocated
                failed[f"{kind}.{unit}={value:g}"] = " ".join(str(e).split())[:300]
            bar.advance(1, status=f"{kind}.{unit}={value:g}")
        floor: dict[str, float] = {}
        top = {p: max(v) for p, v in choices.items() if p.startswith("prune.")}
        floor_ratios = ctx.layers.prune_ratios(ctx.space.pruning.granularity,
                                               {p.removeprefix("prune."): r for p, r in top.items()})
        fp32 = run.export(run.pruned(floor_ratios, recalibrate=False)[0], "floor")
        low = {p: min(v) for p, v in choices.items() if p.startswith("bits.")}
        bit_units = ctx.layers.bit_units(ctx.space.quantization.granularity)
        for tag, bits in (("floor", {}), ("floor-low", low)):
            try:
                q = run.quantized(fp32, {la: b for p, b in bits.items() for la in bit_units[p.removeprefix("bits.")]},
                                  tag)
                floor[tag] = run.score(q.path, evaluate=False)[1]
            except TrialFailure as e:
                failed[tag] = " ".join(str(e).split())[:300]
            bar.advance(1, status=tag)
    fastest = min(floor, key=floor.get, default=None)
    floor_params = {} if fastest is None else {  # as allocate's plans: every multi-choice parameter
        **common_params(ctx), **top, **{p: 32 for p in low}, **(low if fastest == "floor-low" else {})}
    return Sensitivity(
        key=key, task=ctx.task.name, profile=ctx.profile.name, statistic=ctx.profile.measure.statistic,
        teacher_accuracy=t_acc, teacher_latency_ms=t_lat, teacher_model_mb=teacher[3],
        floor_ms=min(floor.values(), default=0.0),
        rows=tuple(rows), choices=choices, common_params=common_params(ctx), bn_batches=bn_batches, seconds=0.0,
        measurements=0, stage_seconds=run.timer.rounded(), failed=failed, floor_params=floor_params,
        metric=ctx.task.metric.describe())


def _row(run: _Runner, i: int, unit: str, kind: str, value: float, layers: list[str], same: dict,
         teacher: tuple) -> SensitivityRow:
    """One variant, scored. `same`: scores of pruned models by their widths (None: the teacher's fp32 file, their
    baseline); `teacher`: the teacher's own score. The row's latency and file size are the teacher's minus the
    saving measured against the variant's baseline (fp32 files compare with fp32 files)."""
    runs: dict[str, str] = {}
    if kind == "prune":
        gran = run.ctx.space.pruning.granularity
        model, widths, note = run.pruned(run.ctx.layers.prune_ratios(gran, {unit: value}), recalibrate=True)
        if widths not in same:
            same[widths] = run.score(run.export(model, f"v{i}"))
        (acc, lat, mem, mb), base, changed = same[widths], same[None], widths is not None
    else:
        q = run.quantized(run.teacher_fp32, {layer: int(value) for layer in layers}, f"v{i}")
        (acc, lat, mem, mb), base, changed, runs = run.score(q.path), teacher, bool(q.quantized), run.runs(q, layers)
        note = "; ".join(f"{k}: {v}" for k, v in {**q.notes, **q.skipped}.items())
    saved, t_acc, t_lat = base[1] - lat, teacher[0], teacher[1]
    return SensitivityRow(
        unit=unit, kind=kind, value=int(value) if kind == "bits" else float(value), layers=tuple(layers),
        accuracy=acc, accuracy_drop=round(100 * (t_acc - acc), 6), latency_ms=t_lat - saved, latency_saved_ms=saved,
        latency_saved_frac=saved / t_lat, memory_mb=mem, model_mb=teacher[3] - (base[3] - mb), runs=runs,
        note=note if changed else (note or "nothing changed"))
