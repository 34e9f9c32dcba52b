"""Decide on val, report on test: a sealed test split raises on any read until the final report, and the search-
value benchmark runs its every choice with the split sealed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from torch.utils.data import TensorDataset

from search.tasks.arrays import dataset_arrays
from search.tasks.sealed import SealedSplit, SplitSealed, seal_test

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_search_value as bsv  # noqa: E402 - the benchmark's own curve arithmetic


def test_every_read_of_a_sealed_split_raises_until_it_is_unsealed():
    data = TensorDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    sealed = SealedSplit(data)
    for read in (len, lambda s: s[0], lambda s: s.tensors, dataset_arrays):
        with pytest.raises(SplitSealed, match="before the final report"):
            read(sealed)
    assert sealed.reads_before_unseal == 4 and sealed.sealed
    assert sealed.unseal() is data and not sealed.sealed
    x, y = dataset_arrays(sealed)
    assert x.shape == (3, 2) and list(y) == [0, 1, 0] and len(sealed) == 3


def test_seal_test_seals_only_the_test_split(digits_task):
    task, seal = seal_test(digits_task)
    assert task.test is seal and task.val is digits_task.val and task.teacher is digits_task.teacher
    with pytest.raises(SplitSealed):
        dataset_arrays(task.test)
    assert len(dataset_arrays(task.val)[1]) == len(digits_task.val)


def test_the_uniform_curve_is_its_upper_envelope_linear_in_log_latency():
    pts = [{"key": "t", "speedup": 1.0, "change": 0.0}, {"key": "a", "speedup": 2.0, "change": -1.0},
           {"key": "b", "speedup": 1.5, "change": -2.0},  # dominated by a: not on the curve
           {"key": "c", "speedup": 4.0, "change": -3.0}]
    curve = bsv.envelope(pts)
    assert [p["key"] for p in curve] == ["t", "a", "c"]
    value, weights = bsv.curve_at(curve, 2.0 ** 1.5, "change")  # halfway between a and c in log-speedup
    assert value == pytest.approx(-2.0) and weights == pytest.approx({"a": 0.5, "c": 0.5})
    assert bsv.curve_at(curve, 5.0, "change") is None  # beyond the fastest uniform point: no comparison


@pytest.mark.slow  # the benchmark end to end on digits: searches, uniform curve, depth probe, timing, report
def test_the_search_value_benchmark_decides_with_the_test_split_sealed(tmp_path, digits_task):
    from _study_fixtures import make_results

    results = make_results(tmp_path / "results", digits_task)
    out = tmp_path / "value.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_search_value.py"), "--task", "digits", "--seeds", "0",
         "--trials", "6", "--refine", "2", "--pool", "4", "--rounds", "1", "--refine-epochs", "0.25",
         "--no-int8-curve", "--no-recipe-rows", "--results", str(results), "--scratch", str(tmp_path / "scratch"),
         "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    kinds = {r["kind"] for r in result["rows"]}
    assert {"uniform", "uniform-depth"} <= kinds
    assert all("test" in r and "speedup" in r for r in result["rows"])  # scored once, after every choice
    from search.inspect import load_study

    for name in {r["study"] for r in result["rows"]}:  # no study of the benchmark read the test split itself
        assert "test_scores" not in load_study(name, results=tmp_path / "scratch" / "digits").attrs
