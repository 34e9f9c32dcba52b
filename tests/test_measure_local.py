"""Local measurement backend: fresh-process rounds, drift correction, memory, limits and failures."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from _measure_fixtures import models

from search.config.profile import DeviceProfile
from search.errors import TrialFailure, UserError
from search.measure import Measurement, get_backend, runner
from search.measure.local import LocalBackend, host_memory_mb, memory_limit_mb

pytestmark = pytest.mark.timing  # same-round ratios and their spread: timed alone (make test)


def profile(budgets: dict | None = None, **measure: object) -> DeviceProfile:
    """local-1core: one pinned thread, batch 1; modest repeats keep the suite quick."""
    settings = {"warmup": 30, "repeats": 150, "batch": 1, **measure}
    return DeviceProfile(name="local-1core-test", runtime={"threads": 1}, budgets=budgets or {},
                         measure=settings)


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def int8_vs_fp32() -> tuple[Measurement, Measurement]:
    """fp32 then int8, both with the fp32 model as the same-round reference; memory at batch 64."""
    m = models()
    backend = LocalBackend(profile({"memory_mb": 100}, warmup=50, repeats=200, memory_batch=64))
    return backend.measure(m["fp32"], m["fp32"]), backend.measure(m["int8"], m["fp32"])


def test_int8_is_faster_and_smaller_than_its_fp32_parent(int8_vs_fp32):
    fp32, int8 = int8_vs_fp32
    # Same-round ratio (robust to drift) and the raw figures both say int8 wins at batch 1, 1 thread.
    assert int8.ratio("p50") < 0.85, int8.ratio("p50")
    assert int8.latency.p50_ms < fp32.latency.p50_ms
    assert int8.objective("p50") < fp32.objective("p50")
    # At batch 64 the uint8 activations take far less memory; ORT's fixed overhead is the same for both.
    assert int8.memory_total_mb < 0.8 * fp32.memory_total_mb, (int8.memory_total_mb, fp32.memory_total_mb)
    assert int8.memory_model_mb < fp32.memory_model_mb
    assert int8.memory_overhead_mb == fp32.memory_overhead_mb and 2 < fp32.memory_overhead_mb < 60
    # The budget (100 MB) is judged on the measured total: fp32 breaks it without being stopped.
    assert fp32.over_budget and fp32.error is None and fp32.latency is not None
    assert not int8.over_budget


def test_record_fields_drift_and_json_round_trip(int8_vs_fp32):
    fp32, int8 = int8_vs_fp32
    for rec in (fp32, int8):
        assert rec.batch == 1 and rec.memory_batch == 64 and rec.threads == 1 and 2 <= rec.rounds <= 5
        # Latency pools the rounds that agreed (all of them when none did): 200 timed runs each.
        assert rec.latency.runs % 200 == 0 and 400 <= rec.latency.runs <= 200 * rec.rounds
        assert rec.reference.runs == rec.latency.runs and len(rec.round_ratios) == rec.rounds
        assert rec.latency.p50_ms <= rec.latency.p90_ms and rec.latency.cv >= 0
        assert rec.ort_version == version("onnxruntime") and rec.device and rec.backend == "local"
        assert rec.memory_total_mb == pytest.approx(rec.memory_overhead_mb + rec.memory_model_mb)
        assert rec.started_at < rec.finished_at
        assert Measurement.from_json(rec.to_json()) == rec
        assert rec.reference_p50_ms == rec.reference.p50_ms
    # The fixed baseline is the first measurement's reference, shared by every later one.
    assert fp32.reference_baseline == fp32.reference and int8.reference_baseline == fp32.reference
    assert int8.corrected("p50") == pytest.approx(int8.ratio("p50") * fp32.reference.p50_ms)
    assert int8.objective("p90") == pytest.approx(int8.ratio_p90 * fp32.reference.p90_ms)
    assert fp32.ratio("p50") == pytest.approx(1.0, abs=0.15)  # a model against itself
    with pytest.raises(ValueError, match="statistic"):
        int8.objective("p99")


def test_drift_corrected_p50_is_steady_over_five_fresh_rounds():
    m = models()
    backend = get_backend(profile(warmup=30, repeats=150))
    runs = [backend.measure(m["int8"], m["fp32"]) for _ in range(5)]
    corrected = [r.objective("p50") for r in runs]
    cv = statistics.stdev(corrected) / statistics.fmean(corrected)
    assert cv <= 0.10, (cv, corrected, [r.latency.p50_ms for r in runs])


def test_rounds_pool_runs_and_take_the_median_ratio():
    m = models()
    rec = LocalBackend(profile(warmup=5, repeats=30, rounds=3, max_rounds=3)).measure(m["tiny"], m["tiny"])
    used = [rec.round_ratios[i] for i in runner.agreeing(rec.round_ratios, 0.03)] if rec.agreed else rec.round_ratios
    assert rec.rounds == 3 and len(rec.round_ratios) == len(rec.round_p50_ms) == 3
    assert rec.latency.runs == rec.reference.runs == 30 * len(used)
    assert rec.ratio() == pytest.approx(statistics.median(used))


def test_model_far_over_the_memory_budget_is_stopped_not_the_host():
    m = models()
    before = _vm_hwm_mb()
    start = time.monotonic()
    rec = LocalBackend(profile({"memory_mb": 32})).measure(m["hog"])  # wants 4 GB per sample
    assert rec.over_budget and rec.stopped and "memory limit" in rec.error
    assert rec.latency is None and rec.objective("p50") == float("inf")
    assert rec.memory_limit_mb == memory_limit_mb(32) == 544 and rec.memory_total_mb == 544
    assert time.monotonic() - start < 30
    assert _vm_hwm_mb() - before < 50  # the test process itself never held the allocation


def test_memory_limit_headroom():
    cap = 0.75 * host_memory_mb()  # never more than 3/4 of this machine
    assert memory_limit_mb(1000) == min(4000, cap)  # 4x the budget...
    assert memory_limit_mb(10) == min(522, cap)  # ...or budget + 512 MB, whichever is larger
    assert memory_limit_mb(None) == cap


@pytest.mark.parametrize(("name", "settings", "expect"), [
    ("hang", {"timeout_s": 2}, "timed out after 2 s"),
    ("tiny_fixed", {"batch": 2}, "fixed batch dimension of 1"),
    ("custom_domain", {}, "loading the model failed"),
])
def test_failures_are_one_line_trial_failures(name, settings, expect):
    with pytest.raises(TrialFailure, match=expect) as info:
        LocalBackend(profile(warmup=1, repeats=5, **settings)).measure(models()[name])
    assert "\n" not in str(info.value) and f"{name}.onnx" in str(info.value)


def test_not_onnx_and_missing_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf \xff\xfe")
    backend = LocalBackend(profile(warmup=1, repeats=5))
    with pytest.raises(TrialFailure, match="junk.onnx: loading the model failed"):
        backend.measure(junk)
    with pytest.raises(TrialFailure, match="not found"):
        backend.measure(tmp_path / "absent.onnx")


def _cli(tmp_path: Path, argv: list[str]) -> argparse.Namespace:
    from search.measure.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_measure_json_and_table(tmp_path, capsys):
    dev = tmp_path / "dev.yaml"
    dev.write_text("name: cli-test\nruntime: {threads: 1}\nmeasure: {warmup: 2, repeats: 10}\n")
    m = models()
    args = _cli(tmp_path, ["measure", str(m["tiny"]), "--device", str(dev), "--reference", str(m["tiny"]),
                           "--format", "json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert Measurement.from_dict(out).latency.runs % 10 == 0 and out["ratio_p50"] > 0
    args = _cli(tmp_path, ["measure", str(m["tiny"]), "--device", str(dev)])
    assert args.func(args) == 0
    assert "ONNX Runtime overhead" in capsys.readouterr().out
    bad = _cli(tmp_path, ["measure", str(tmp_path / "nope.onnx"), "--device", str(dev)])
    with pytest.raises(UserError, match="nope.onnx: model file not found"):
        bad.func(bad)
    hang = _cli(tmp_path, ["measure", str(m["hang"]), "--device", str(dev)])
    dev.write_text("name: cli-test\nmeasure: {warmup: 1, repeats: 1, timeout_s: 1}\n")
    assert hang.func(hang) == 1
    assert "timed out" in capsys.readouterr().err


def test_a_round_whose_parent_died_ends_itself(tmp_path):
    """A round runs in its own session (a parent's Ctrl-C must not kill it mid-measurement), so a parent that
    dies (an agent killed mid-round, a test process gone) cannot take it along: the round's own deadline must."""
    import subprocess
    import sys

    import numpy as np
    import psutil

    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4), np.float32))
    code = (f"from search.measure import runner; runner.run_outputs({str(models()['hang'])!r}, "
            f"{str(tmp_path / 'in.npz')!r}, {str(tmp_path / 'out.npz')!r}, timeout_s=3)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline, rounds = time.monotonic() + 60, []
        while not rounds and time.monotonic() < deadline:
            time.sleep(0.1)
            rounds = [p for p in psutil.Process(parent.pid).children(recursive=True)
                      if any(a.endswith("runner.py") for a in p.cmdline())]
        assert rounds, "no round started"
    finally:
        parent.kill()  # before the round's 3 s timeout: nobody is left to stop the hung model
        parent.wait()
    started = time.monotonic()
    rounds[0].wait(timeout=60)  # the deadline: 3 s + 5 s of grace
    assert time.monotonic() - started < 30
