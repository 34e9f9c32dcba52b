"""Measurement cache: keyed by graph structure (not weights), profile and reference."""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path

import numpy as np
import onnx
import pytest
from _measure_fixtures import models
from onnx import TensorProto, helper, numpy_helper

from search.config.profile import DeviceProfile
from search.measure.cache import MeasurementCache, structure_key
from search.measure.record import Baselines, LatencyStats, Measurement

PROFILE = DeviceProfile(name="cache-test")
OTHER_PROFILE = DeviceProfile(name="cache-test", runtime={"threads": 2})


class CountingBackend:
    """Stands in for a real backend: the cache logic needs no timing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def measure(self, onnx_path: str | os.PathLike,
                reference_path: str | os.PathLike | None = None) -> Measurement:
        self.calls.append((Path(onnx_path).name, reference_path and Path(reference_path).name))
        stats = LatencyStats(p50_ms=1.0 + len(self.calls), p90_ms=2.0, mean_ms=1.5, cv=0.01, runs=10)
        return Measurement(latency=stats, memory_total_mb=20.0, memory_model_mb=10.0,
                           memory_overhead_mb=10.0, batch=1, memory_batch=1, threads=1, rounds=1,
                           ort_version="x", device="d", backend="fake",
                           reference=stats if reference_path else None,
                           ratio_p50=1.0 if reference_path else None)


def test_structure_key_ignores_weights_but_not_structure():
    m = models()
    assert structure_key(m["fp32"]) == structure_key(m["fp32_other_weights"])
    assert structure_key(m["fp32"]) != structure_key(m["fp32_narrow"])  # fewer channels
    assert structure_key(m["fp32"]) != structure_key(m["int8"])  # QDQ nodes, int8 weights


def test_structure_key_ignores_tensor_names_but_not_shape_constants(tmp_path):
    model = onnx.load(models()["fp32"])
    names = {n for node in model.graph.node for n in [*node.input, *node.output]}
    names |= {t.name for t in model.graph.initializer}
    renamed = {name: f"t{i}" for i, name in enumerate(sorted(names - {"input", "logits"}))}
    for node in model.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.name = "x" + node.name
    for t in model.graph.initializer:
        t.name = renamed[t.name]
    onnx.save(model, tmp_path / "renamed.onnx")
    assert structure_key(tmp_path / "renamed.onnx") == structure_key(models()["fp32"])

    def reshape(target: list[int]) -> Path:
        shape = numpy_helper.from_array(np.array(target, np.int64), "shape")
        g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "r",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
        path = tmp_path / f"reshape{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(helper.make_model(g), path)
        return path

    assert structure_key(reshape([-1, 2, 2])) != structure_key(reshape([-1, 4, 1]))


def test_cache_hits_same_structure_and_misses_otherwise():
    m = models()
    cache, backend = MeasurementCache(), CountingBackend()
    first = cache.measure(m["fp32"], PROFILE, backend)
    assert cache.measure(m["fp32_other_weights"], PROFILE, backend) == first  # same structure, new weights
    assert len(backend.calls) == 1 and cache.hits == 1
    cache.measure(m["fp32_narrow"], PROFILE, backend)  # different structure
    cache.measure(m["fp32"], OTHER_PROFILE, backend)  # different profile
    cache.measure(m["fp32"], PROFILE, backend, reference_path=m["int8"])  # different reference
    assert len(backend.calls) == 4 and cache.misses == 4


def test_cache_persists_atomically_across_instances(tmp_path):
    m = models()
    backend = CountingBackend()
    first = MeasurementCache(tmp_path / "cache").measure(m["fp32"], PROFILE, backend)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind
    again = MeasurementCache(tmp_path / "cache")  # a new study process, same folder
    assert again.measure(m["fp32_other_weights"], PROFILE, backend) == first and len(backend.calls) == 1
    files[0].write_text("{torn")  # a damaged entry is measured again, not an error
    assert MeasurementCache(tmp_path / "cache").measure(m["fp32"], PROFILE, backend) != first
    assert len(backend.calls) == 2


def test_failures_are_not_cached():
    from search.errors import TrialFailure

    class Failing(CountingBackend):
        def measure(self, onnx_path, reference_path=None):
            super().measure(onnx_path, reference_path)
            raise TrialFailure("boom")

    cache, backend = MeasurementCache(), Failing()
    for _ in range(2):
        with pytest.raises(TrialFailure):
            cache.measure(models()["fp32"], PROFILE, backend)
    assert len(backend.calls) == 2


def test_records_keep_the_backends_drift_anchor_across_instances(tmp_path):
    """The backend owns the drift anchor (a study hands every worker's backend the same one); the cache keeps
    each record as the backend anchored it, so a hit in a later worker corrects against that anchor too."""
    m = models()
    anchor = LatencyStats(p50_ms=5.0, p90_ms=6.0, mean_ms=5.5, cv=0.01, runs=10)

    class Anchored(CountingBackend):
        def __init__(self) -> None:
            super().__init__()
            self.baselines = Baselines(anchor)

        def measure(self, onnx_path, reference_path=None):
            rec = super().measure(onnx_path, reference_path)
            return rec.finalize(baseline=self.baselines.get("ref", rec), memory_budget_mb=None)

    first = MeasurementCache(tmp_path).measure(m["fp32"], PROFILE, Anchored(), reference_path=m["fp32"])
    assert first.reference_baseline == anchor != first.reference
    assert first.corrected("p50") == first.ratio("p50") * anchor.p50_ms
    backend = Anchored()  # a later worker on the same folder: the same structure is a hit, same anchor
    assert MeasurementCache(tmp_path).measure(m["fp32_other_weights"], PROFILE, backend,
                                              reference_path=m["fp32"]) == first
    assert backend.calls == []


class ScriptedBackend(CountingBackend):
    """Answers each call with the next scripted per-round ratios; records the round overrides it was given."""

    def __init__(self, *answers: list[float]) -> None:
        super().__init__()
        self.answers, self.overrides = list(answers), []

    def measure(self, onnx_path, reference_path=None, *, rounds=None, max_rounds=None):
        rec = super().measure(onnx_path, reference_path)
        self.overrides.append((rounds, max_rounds))
        ratios = self.answers.pop(0)
        return dataclasses.replace(rec, ratio_p50=statistics.median(ratios), round_ratios=ratios,
                                   rounds=len(ratios))


def test_recheck_of_an_older_record_without_round_ratios():
    """A record from before round_ratios counts as one round; a disagreeing check re-measures by the rule."""
    m = models()
    cache, backend = MeasurementCache(), ScriptedBackend([1.0], [1.0, 1.01])
    key = cache.key(m["fp32"], PROFILE, m["fp32"])
    cache.put(key, dataclasses.replace(CountingBackend().measure(m["fp32"], m["fp32"]), ratio_p50=1.5))
    rec = cache.measure(m["fp32"], PROFILE, backend, reference_path=m["fp32"], recheck=True)
    assert backend.overrides == [(1, 1), (None, None)]  # one check round, then the profile's rounds
    assert rec.round_ratios == [1.5, 1.0, 1.0, 1.01] and rec.agreed and rec.ratio_p50 == 1.0
    assert (rec.rechecked, rec.replaced) == (1, 1)
    again = cache.measure(m["fp32"], PROFILE, ScriptedBackend([1.02]), reference_path=m["fp32"], recheck=True)
    assert (again.rechecked, again.replaced, again.ratio_p50) == (2, 1, 1.0)  # within 2 x 3%: kept


def test_without_recheck_a_hit_runs_nothing():
    m = models()
    cache = MeasurementCache()
    cache.measure(m["fp32"], PROFILE, CountingBackend())
    backend = ScriptedBackend()
    assert cache.measure(m["fp32"], PROFILE, backend).rechecked == 0 and backend.calls == []


def test_a_recalibrated_file_shares_the_measurement_only_when_its_kernels_agree():
    """QDQ fusions can depend on scale and zero-point values: the same structure re-calibrated may run other
    kernels, so the kernel signature (what the session runs per layer) is part of the key."""
    from search.compress.runs import LayerRun, kernel_signature

    m, backend, cache = models(), CountingBackend(), MeasurementCache()
    runs = {"conv1": LayerRun("int8", ("QLinearConv",)), "fc": LayerRun("int8", ("QGemm",))}
    same = kernel_signature(runs)
    other = kernel_signature({**runs, "conv1": LayerRun("fp32", ("com.microsoft.nchwc:Conv",))})
    removed = kernel_signature({**runs, "gone": LayerRun("unknown", ())})  # a layer a removed block took along
    assert same != other and removed == same
    cache.measure(m["int8"], PROFILE, backend, kernels=same)
    cache.measure(m["int8"], PROFILE, backend, kernels=same)
    assert len(backend.calls) == 1
    cache.measure(m["int8"], PROFILE, backend, kernels=other)  # re-calibrated: other kernels, measured anew
    assert len(backend.calls) == 2
