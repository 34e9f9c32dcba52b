"""Sensitivity analysis on real models: ONNX Runtime accuracy, real measurements, the real structure cache."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from _sensitivity_fixtures import signal_sensitivity
from _study_fixtures import make_results, profile_text
from conftest import run_cli


def _torch_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_dead_channels_cost_nothing_and_order_matches_torch(digits_task):
    """idle's 50% are its dead channels: 0 points; the other units' accuracies, recomputed independently in
    torch on the pruned models, give the same order and (within a sample) the same values."""
    from search.compress import prune

    ctx, sens, _ = signal_sensitivity(digits_task)
    prune_rows = {r.unit: r for r in sens.rows if r.kind == "prune"}
    assert set(prune_rows) == {"stem.conv", "idle.conv", "signal.conv"}  # the classifier's output is never pruned
    assert prune_rows["idle.conv"].accuracy_drop == 0
    assert prune_rows["signal.conv"].accuracy_drop > 5
    torch_drop = {}
    for unit, row in prune_rows.items():
        pr = prune(ctx.task.teacher, ctx.example, {unit: 0.5}, channel_multiple=ctx.profile.channel_multiple)
        acc = _torch_accuracy(pr.model, ctx.val_x, ctx.val_y)
        assert abs(acc - row.accuracy) <= 1.5 / len(ctx.val_y), unit
        torch_drop[unit] = 100 * (_torch_accuracy(ctx.task.teacher, ctx.val_x, ctx.val_y) - acc)
    by_sens = sorted(prune_rows, key=lambda u: -prune_rows[u].accuracy_drop)
    assert by_sens == sorted(torch_drop, key=lambda u: -torch_drop[u])
    assert by_sens[-1] == "idle.conv"
    # The first row of the table (most accuracy lost) is what a user keeps: not the idle unit.
    frame = sens.frame().sort_values("accuracy_drop", ascending=False)
    assert frame.iloc[0]["unit"] != "idle.conv" and frame.iloc[0]["kind"] == "prune"


def test_rows_latency_and_bits(digits_task):
    ctx, sens, measured = signal_sensitivity(digits_task)
    assert sens.teacher_accuracy == pytest.approx(ctx.teacher_metrics["accuracy"])  # same file, same score
    # the teacher was already measured by build_context; + its fast export (pruned rows' baseline) and two floors
    assert 0 < measured <= len(sens.rows) + 3
    assert sens.measurements == measured and sens.seconds > 0 and not sens.cached
    assert set(sens.stage_seconds) >= {"prune", "export", "quantize", "measure", "evaluate"}
    # a sanity bound, not a speed claim: these are 0.026 ms models, and one measurement in the parallel test phase
    # moved 11% (floor 0.0287 vs teacher 0.0259 ms in a fresh-clone CI run)
    assert 0 < sens.floor_ms <= sens.teacher_latency_ms * 1.5
    bits = [r for r in sens.rows if r.kind == "bits"]
    assert {r.unit for r in bits} == {"stem.conv", "idle.conv", "signal.conv", "classifier"}
    for r in sens.rows:
        assert r.latency_saved_ms == pytest.approx(sens.teacher_latency_ms - r.latency_ms)
        assert r.latency_saved_frac == pytest.approx(r.latency_saved_ms / sens.teacher_latency_ms)
        assert r.model_mb > 0 and r.memory_mb > 0
    for r in bits:  # the quick profile runs Conv and Gemm int8 as real kernels: recorded per layer
        assert r.value == 8 and r.runs == {r.unit: "int8"}
        assert r.model_mb < sens.teacher_model_mb
    assert sens.choices["prune.idle.conv"] == [0.0, 0.5] and sens.choices["bits.classifier"] == [32, 8]
    frame = sens.frame()
    assert len(frame) == len(sens.rows) and {"accuracy_drop", "latency_saved_ms", "runs"} <= set(frame.columns)


def test_cached_table_is_reused_without_measuring(digits_task, capsys):
    from search.seeding.sensitivity import Sensitivity, cache_path, load_cached, measure_sensitivity

    ctx, first, _ = signal_sensitivity(digits_task)
    hits, misses = ctx.cache.hits, ctx.cache.misses
    t0 = time.perf_counter()
    again = measure_sensitivity(ctx, bn_batches=first.bn_batches)
    took = time.perf_counter() - t0
    assert again.cached and again.rows == first.rows and again.key == first.key
    assert (ctx.cache.hits, ctx.cache.misses) == (hits, misses)  # the measurement cache was not even asked
    assert took < first.seconds / 3
    path = cache_path(ctx.study_dir, first.key)
    assert Sensitivity.from_dict(json.loads(path.read_text())).rows == first.rows
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # torn: computed again, never trusted
    try:
        assert load_cached(ctx.study_dir, first.key) is None
        assert "ignoring unreadable sensitivity cache" in capsys.readouterr().err
    finally:
        path.write_text(text)


def test_bn_reestimation_reuses_structures_and_keys_apart(digits_task):
    """BatchNorm re-estimation changes weights, not structures: every measurement comes from the cache; the
    table is cached under another key; the dead channels still cost nothing."""
    from search.seeding.sensitivity import measure_sensitivity

    ctx, plain, _ = signal_sensitivity(digits_task)
    misses = ctx.cache.misses
    bn = measure_sensitivity(ctx, bn_batches=2)
    assert bn.key != plain.key and bn.bn_batches == 2 and not bn.cached
    assert bn.measurements == 0 and ctx.cache.misses == misses
    rows = {(r.kind, r.unit): r for r in bn.rows}
    assert rows[("prune", "idle.conv")].accuracy_drop == pytest.approx(0, abs=0.5)
    for r in plain.rows:
        other = rows[(r.kind, r.unit)]
        assert other.latency_ms == r.latency_ms  # same structure, same cached measurement
        if r.kind == "bits":
            assert other.accuracy == r.accuracy  # BatchNorm is only re-estimated for pruned variants
    assert measure_sensitivity(ctx, bn_batches=2).cached


def test_recalibrate_bn_takes_the_batch_statistics():
    """The re-estimated running mean/var of the first BatchNorm are its input's statistics over the given
    samples (an equal-weight average over the batches, not a momentum blend with the old values); the momentum
    is restored."""
    from _sensitivity_fixtures import SignalNet

    from search.compress.batchnorm import recalibrate_bn

    torch.manual_seed(0)
    model = SignalNet().eval()
    bn = model.stem.bn
    bn.running_mean.fill_(5.0)
    x = torch.rand(96, 1, 8, 8)
    recalibrate_bn(model, x.numpy(), batch_size=32)
    with torch.no_grad():
        z = model.stem.conv((x - 0.3) / 0.38)
    assert torch.allclose(bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    per_batch = torch.stack([c.var((0, 2, 3), unbiased=True) for c in z.split(32)])  # averaged over batches
    assert torch.allclose(bn.running_var, per_batch.mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training and not bn.training


@pytest.mark.slow  # a CLI run on the digits teacher (about a minute on two busy cores)
def test_cli_table_json_and_bad_input(tmp_path, digits_task):
    results = make_results(tmp_path / "results", digits_task)
    space, profile = tmp_path / "space.yaml", tmp_path / "profile.yaml"
    space.write_text("name: cli\npruning: {ratios: [0.0, 0.5], granularity: block}\n"
                     "quantization: {bits: [32], calibration: {samples: 32}}\n")
    profile.write_text(profile_text())
    args = ["sensitivity", "--task", "digits", "--space", str(space), "--device", str(profile), "--results",
            str(results), "--no-progress"]
    p = run_cli(*args, "--targets", "0.95,0.01")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("sensitivity of the digits teacher on 'quick-1core' (p50): val top-1 ")
    assert lines[1].split()[:4] == ["parameter", "value", "top-1", "drop"]
    rows = [ln for ln in lines[2:] if ln.startswith("prune.")]
    assert len(rows) == 6  # stem, blocks.0-3, head at 0.5
    drops = [float(ln.split()[3]) for ln in rows]
    assert drops == sorted(drops, reverse=True)  # most accuracy lost first
    assert lines[-1].startswith("plan 0.01x: infeasible: target ") and "below the floor" in lines[-1]
    assert lines[-2].startswith("plan 0.95x")
    assert list((results / "sensitivity").glob("digits-*/sensitivity-*.json"))

    p = run_cli(*args, "--format", "json", "--targets", "0.95")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["cached"] is True and out["task"] == "digits" and len(out["rows"]) == 6
    assert {r["unit"] for r in out["rows"]} == {"stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"}
    assert out["plans"][0]["predicted"]["target"] == 0.95

    for bad, words in ((["--space", str(tmp_path / "missing.yaml")], "missing.yaml"),
                       (["--study", "../x"], "--study"), (["--targets", "0.5,fast"], "--targets"),
                       (["--bn-batches", "-1"], "--bn-batches")):
        p = run_cli(*args, *bad)
        assert p.returncode == 2, (bad, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr


def test_seed_plans_enqueue_allocated_plans_and_report_predicted_vs_measured(tmp_path, digits_task):
    """`hwsearch run --seed-plans`: sensitivity first (cached under results/sensitivity/), then the allocated plans
    run as trials after the baselines, marked `seeded`, with what the additive model predicted beside what was
    measured; a second study of the same task, space and profile reuses the cached analysis."""
    from _study_fixtures import write_configs

    from search.inspect import load_study

    results = make_results(tmp_path / "results", digits_task)
    space, prof = write_configs(tmp_path, latency_ms=50.0)
    args = ["--task", "digits", "--space", str(space), "--device", str(prof), "--results", str(results),
            "--seed-plans"]
    first = run_cli("run", *args, "--trials", "9", "--study", "seeded")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "seeded plans" in first.stderr and "search units:" in first.stderr
    cached = list((results / "sensitivity").glob("sensitivity-*.json"))
    assert len(cached) == 1
    from search.seeding.sensitivity import DEFAULT_BN_BATCHES  # the stage re-estimates BatchNorm (bn-rank.json)

    assert json.loads(cached[0].read_text())["bn_batches"] == DEFAULT_BN_BATCHES > 0
    view = load_study("seeded", results=results)
    seeded = [r for r in view.trials if r.seeded is not None]
    allocation = view.attrs["allocation"]
    # Every feasible plan runs as a seeded trial, or is a baseline's plan (named, not run twice).
    assert allocation["seeded"] > 0 and len(seeded) + len(allocation["as_baseline"]) == allocation["seeded"]
    baselines = {r.baseline: r for r in view.trials if r.baseline}
    assert set(allocation["as_baseline"].values()) <= set(baselines)
    assert {r.seeded for r in seeded}.isdisjoint(float(t) for t in allocation["as_baseline"])
    assert all(r.predicted and r.predicted["target_ms"] > 0 for r in seeded)
    assert not seeded or min(r.number for r in seeded) > max(r.number for r in baselines.values())
    table = view.seeded
    assert len(table) == len([r for r in seeded if r.state == "COMPLETE" and r.predicted.get("feasible")])
    assert table.latency_error.notna().all() and (table.predicted_ms > 0).all()
    # Each plan was measured untrained before it was seeded; its trial measured the same structure (a cache hit).
    assert (table.passes >= 1).all()
    for r in (r for r in seeded if r.state == "COMPLETE"):
        # The same record, unless the check round after training disagreed and the structure was re-measured.
        replaced = (r.measurement or {}).get("replaced")
        assert r.values[1] == pytest.approx(r.predicted["allocated_ms"], rel=0.2 if replaced else 1e-9), r.number
        assert table.set_index("trial").within_target[r.number] == r.predicted["allocated_within"]
    assert allocation["plans_measured"] >= len(seeded) and allocation["allocation_s"] > 0
    report = view.report(tmp_path / "r.html").read_text()
    assert "Seeded plans: predicted vs measured" in report and 'id="sensitivity"' in report
    sens = view.sensitivity
    assert len(sens) == json.loads(cached[0].read_text())["rows"].__len__() and set(sens.kind) == {"prune", "bits"}
    mtime = cached[0].stat().st_mtime
    second = run_cli("run", *args, "--trials", "5", "--study", "seeded-again")
    assert second.returncode == 0, second.stderr[-2000:]
    assert cached[0].stat().st_mtime == mtime  # not analysed again
    again = load_study("seeded-again", results=results)
    # Seeded from the cached table; which targets keep a distinct plan depends on the allocation's fresh
    # measurements (several agreeing rounds each, on a noisy host), so the set need not repeat exactly.
    targets = {r.seeded for r in again.trials if r.seeded is not None}
    assert again.attrs["allocation"]["sensitivity_cached"] and again.attrs["allocation"]["seeded"] > 0
    assert len(targets) + len(again.attrs["allocation"]["as_baseline"]) == again.attrs["allocation"]["seeded"]
    assert all(0 < t < 1 for t in targets)


def test_seed_plans_default_follows_the_trial_count():
    """Unless told, a study of at least SEED_PLANS_FROM trials seeds plans; the flag and keyword override it."""
    from search.cli import build_parser
    from search.study.settings import SEED_PLANS_FROM, RunSettings

    def settings(trials: int, **kw) -> RunSettings:
        return RunSettings("digits", "space.yaml", "profile.yaml", trials, "x", **kw)

    assert not settings(SEED_PLANS_FROM - 1).seeds_plans and settings(SEED_PLANS_FROM).seeds_plans
    assert not settings(40, seed_plans=False).seeds_plans and settings(1, seed_plans=True).seeds_plans
    run = ["run", "--task", "digits", "--space", "s.yaml", "--device", "p.yaml", "--study", "x", "--trials", "5"]
    parser = build_parser()
    assert parser.parse_args(run).seed_plans is None
    assert parser.parse_args([*run, "--seed-plans"]).seed_plans is True
    assert parser.parse_args([*run, "--no-seed-plans"]).seed_plans is False


def test_the_table_key_names_where_it_was_measured_and_with_what(digits_task):
    """A table measured on another host, another agent or another stack does not set this one's targets."""
    from importlib.metadata import version

    from search.config import load_profile
    from search.config.space import SearchSpace
    from search.measure.runner import describe_device
    from search.seeding.sensitivity import measured_on, sensitivity_key

    local = load_profile("local-1core")
    here = measured_on(local)
    assert here["cpu"] == describe_device()["cpu"] and here["cores"] == describe_device()["cores"]
    assert here["onnxruntime"] == version("onnxruntime") and here["torch"] == version("torch")
    pi = load_profile("raspberry-pi-4")
    assert measured_on(pi)["agent"] == pi.measure.url and "cpu" not in measured_on(pi)
    space = SearchSpace()
    assert sensitivity_key(digits_task, space, local) == sensitivity_key(digits_task, space, local)  # stable
    moved = local.model_copy(update={"measure": local.measure.model_copy(update={"backend": "remote",
                                                                                 "url": "http://board:8765"})})
    assert sensitivity_key(digits_task, space, moved) != sensitivity_key(digits_task, space, local)


def test_the_table_shows_a_non_percent_metric_in_its_own_unit():
    """A regression task's table: the metric's value and drop in its unit (accuracy_drop holds 100 x the
    difference), not a percentage."""
    from search.seeding.commands import format_table
    from search.seeding.sensitivity import Sensitivity, SensitivityRow

    row = SensitivityRow(layers=("fc",), unit="fc", kind="prune", value=0.5, accuracy=-0.62, accuracy_drop=2.0,
                         latency_ms=0.01, latency_saved_ms=0.002, latency_saved_frac=0.2, memory_mb=10.0,
                         model_mb=0.1)
    s = Sensitivity(key="k", task="reg", profile="p", statistic="p50", teacher_accuracy=-0.60,
                    teacher_latency_ms=0.012, teacher_model_mb=0.1, floor_ms=0.005, rows=(row,), choices={},
                    common_params={}, bn_batches=0, seconds=1.0, measurements=1,
                    metric={"name": "negated mean absolute error", "percent": False})
    head, cols, line = format_table(s).splitlines()
    assert "val negated mean absolute error -0.6," in head and "%" not in head.split("latency")[0]
    assert cols.split()[:4] == ["parameter", "value", "metric", "drop"]
    assert line.split()[2:4] == ["-0.62", "0.02"]
    assert Sensitivity.from_dict(s.to_dict()).metric == s.metric  # kept in the cache
