"""Trustworthy fronts: val selects, test is held out and read once, labels are what runs."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
from _inspect_fixtures import cli_args, real_study_once
from conftest import REPO, RESULTS, run_cli
from onnx import numpy_helper
from torch.utils.data import TensorDataset

from search.config import load_profile
from search.inspect import load_study
from search.inspect.holdout import paired_change, verdict
from search.measure.accuracy import onnx_accuracy
from search.study.record import S_TEST_SCORES
from search.tasks.arrays import dataset_arrays


def _weight_out_channels(model: onnx.ModelProto, node_name: str) -> int:
    """Output channels of a Conv/Gemm node, read from its weight (through a DequantizeLinear if quantized)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    node = next(n for n in g.node if n.name == node_name)
    w = node.input[1]
    while w not in inits:
        w = prod[w].input[0]
    dims = numpy_helper.to_array(inits[w]).shape
    if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
        return int(dims[1])
    return int(dims[0])


@pytest.mark.slow
def test_front_points_carry_val_and_held_out_test_scores(view, digits_task):
    scores = view.attrs[S_TEST_SCORES]
    x, y = dataset_arrays(digits_task.test)
    assert scores["teacher"]["n"] == len(y) == 359
    assert scores["teacher"]["accuracy"] == onnx_accuracy(view.reference_onnx, x, y)
    front = view.front
    assert len(front) and front.test_accuracy.notna().all()
    for row in front.itertuples():
        rec = view.record(row.trial)
        # re-scored here from the artifact: the stored figure is the exact file's test top-1
        path = Path(view.folder) / f"check-{row.trial}.onnx"
        view.download_artifact(rec.onnx_artifact, path)
        assert onnx_accuracy(path, x, y) == row.test_accuracy
        path.unlink()
        assert row.test_change == pytest.approx((row.test_accuracy - scores["teacher"]["accuracy"]) * 100)
        assert row.test_se >= 0 and row.test_verdict == verdict(row.test_change, row.test_se)
    # only front points were scored: the held-out set chose nothing
    assert set(scores) - {"teacher"} == {str(n) for n in front.trial}
    r = run_cli("front", *cli_args(real_study_once()))
    assert r.returncode == 0 and "test_accuracy" in r.stdout and "test_se" in r.stdout


def test_paired_standard_error():
    teacher = np.array([1, 1, 0, 1, 0, 1, 1, 1] * 125, np.int8)
    same = teacher.copy()
    assert paired_change(same, teacher) == (0.0, 0.0) and verdict(0.0, 0.0) == "within noise"
    flipped = teacher.copy()
    flipped[:10] = 1 - flipped[:10]  # 10 of 1,000 answers change
    change, se = paired_change(flipped, teacher)
    d = flipped.astype(float) - teacher
    assert change == pytest.approx(d.mean() * 100) and se == pytest.approx(d.std(ddof=1) / math.sqrt(1000) * 100)
    assert verdict(5.0, 1.0) == "better" and verdict(-5.0, 1.0) == "worse" and verdict(1.9, 1.0) == "within noise"


@pytest.mark.slow
def test_applied_pruning_matches_the_channels_of_the_scored_file(view, tmp_path):
    from search.compress import expected_channels
    from search.compress.onnx_names import weighted_nodes

    reference_nodes = weighted_nodes(view.reference_onnx)
    asked_not_applied = 0
    checked = 0
    for rec in view.trials:
        if rec.state != "COMPLETE":
            continue
        pruned = rec.pruned
        assert set(pruned) == set(rec.plan["prune"])
        path = tmp_path / f"{rec.number}.onnx"
        view.download_artifact(rec.onnx_artifact, path)
        model = onnx.load(str(path))
        for layer, e in pruned.items():
            before, after = e["channels"]
            node = reference_nodes[layer][0].name  # the student's export keeps the teacher's node names
            assert _weight_out_channels(model, node) == after, (rec.number, layer)
            assert e["applied"] == pytest.approx(1 - after / before, abs=1e-6)
            checked += 1
            if e["requested"] > 0 and e["applied"] == 0:
                assert e["reason"], (rec.number, layer)  # never silence
                asked_not_applied += 1
            if e["requested"] == 0:
                assert after == before
            elif not e.get("reason"):  # applied as planned: floored to the profile's channel multiple (16)
                assert after == expected_channels(before, e["requested"], 16), (rec.number, layer)
    assert checked and asked_not_applied, "the digits study has layers too narrow to prune at multiple 16"


@pytest.mark.slow
def test_precision_records_what_runs_and_local_profiles_offer_only_kernels(view):
    profile = load_profile(REPO / "device_profiles" / "local-1core.yaml")
    ops = view.attrs["layers"]["quant_ops"]
    for rec in view.trials:
        if rec.state != "COMPLETE":
            continue
        precision = rec.precision
        assert set(precision) == set(ops)
        for layer, e in precision.items():
            assert e["requested"] in profile.bits(ops[layer])  # never 16, never 4 on a Conv/Gemm
            assert e["runs_as"] in ("fp32", "int8", "int4", "float-dequant", "unknown")
            assert e["differs"] == (e["runs_as"] != {32: "fp32", 8: "int8", 4: "int4"}[e["requested"]])
    int8 = next(r for r in view.trials if r.baseline == "teacher-int8")
    assert all(e["runs_as"] == "int8" for e in int8.precision.values())  # uniform int8 fuses everywhere


def test_per_op_precisions_restrict_each_layer():
    from search.study.sampling import SearchLayers

    profile = load_profile(REPO / "device_profiles" / "local-1core.yaml")
    layers = SearchLayers(quant_ops={"conv": ["Conv"], "fc": ["Gemm"], "mm": ["MatMul"], "mix": ["Conv", "MatMul"]})
    assert layers.unit_bits(["conv"], (32, 8, 4), profile) == (32, 8)
    assert layers.unit_bits(["fc"], (32, 8, 4), profile) == (32, 8)
    assert layers.unit_bits(["mm"], (32, 8, 4), profile) == (32, 8, 4)
    assert layers.unit_bits(["mm", "mix"], (32, 8, 4), profile) == (32, 8)
    assert profile.bits() == (32, 8, 4) and 16 not in profile.bits()


TASK_FILE = """
import dataclasses
from torch.utils.data import Dataset
from search.tasks import load_task

class HeldOut(Dataset):
    '''Any access is a failure: the held-out split must not be read before the final scoring.'''
    def __len__(self):
        raise RuntimeError("the test split was read")
    def __getitem__(self, i):
        raise RuntimeError("the test split was read")
    def __getattr__(self, name):
        raise RuntimeError(f"the test split was read ({{name}})")

def make_task():
    task = load_task("digits", results_dir={results!r}, progress=False)
    return dataclasses.replace(task, name="digits-guarded", test=HeldOut())
"""

SPACE = """name: teacher-only
distillation: {{budget: {{steps: 5}}, refine: {{steps: 5}}}}
pruning: {{ratios: [0.0, 0.5], granularity: block}}
quantization: {{bits: [32, 8], calibration: {{samples: 32}}}}
accuracy: {{max_drop: {drop}}}
"""


@pytest.mark.slow
def test_no_decision_reads_the_test_split(tmp_path, digits_task):
    """A task whose `test` raises on any access runs the whole study; only the final scoring touches it."""
    task = tmp_path / "guarded.py"
    task.write_text(textwrap.dedent(TASK_FILE.format(results=str(RESULTS))))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(drop=0.5))
    results = tmp_path / "results"
    r = run_cli("run", "--task", f"{task}:make_task", "--space", str(space), "--device",
                str(REPO / "device_profiles" / "local-1core.yaml"), "--trials", "4", "--study", "guarded",
                "--results", str(results), "--no-progress", "--train-on", "cpu")
    assert r.returncode == 0, r.stderr
    assert "not scored on the test split" in r.stderr and "the test split was read" in r.stderr
    v = load_study("guarded", results=results)
    assert len(v.front) and v.front.test_accuracy.isna().all() and v.front.accuracy.notna().all()
    assert (v.attrs.get(S_TEST_SCORES) or {}) == {}


def test_teacher_logits_follow_the_content_of_the_training_inputs(tmp_path, digits_task):
    from search.study.context import cached_teacher_logits

    x, y = digits_task.train.tensors
    flipped = dataclasses.replace(digits_task, train=TensorDataset(x.flip(-1), y))  # same count, other images
    a = cached_teacher_logits(digits_task, tmp_path, torch.device("cpu"))
    b = cached_teacher_logits(flipped, tmp_path, torch.device("cpu"))
    assert len(list(tmp_path.glob("logits-*.pt"))) == 2 and not torch.equal(a, b)
    with torch.no_grad():
        assert torch.allclose(b[:8], digits_task.teacher(x.flip(-1)[:8]), atol=1e-5)
    assert torch.equal(cached_teacher_logits(digits_task, tmp_path, torch.device("cpu")), a)  # reused


@pytest.mark.slow
def test_memory_limit_stop_is_a_complete_infeasible_trial(tmp_path):
    """A model stopped by the address-space limit is measured, not broken: COMPLETE, infeasible, memory kept."""
    from torch import nn

    from search.config import Budgets, Measure, SearchSpace
    from search.measure import get_backend
    from search.study.objective import Objective
    from search.study.record import DIRECTIONS, T_FEASIBLE, T_STOPPED
    from search.study.setup import build_context
    from search.tasks import Task

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(16, 2)).eval()
    data = TensorDataset(torch.rand(64, 1, 64, 64), torch.randint(0, 2, (64,)))
    task = Task(name="wide", teacher=teacher, train=data, val=data, input_shape=(1, 64, 64), num_classes=2)
    space = SearchSpace.model_validate({"pruning": {"ratios": (0.0,)}, "quantization": {"bits": (32,)},
                                        "distillation": {"budget": {"steps": 1}}})
    profile = load_profile(REPO / "device_profiles" / "local-1core.yaml")
    study = optuna.create_study(directions=list(DIRECTIONS), storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ctx = build_context(study, task, space, profile, tmp_path / "study", seed=0, train_on="cpu", task_spec="wide",
                        space_file="space", profile_file="profile")
    # The same model on a device with 1 MB to spare, probed at batch 4096: 64x64x16 floats a sample, ~1 GB.
    tight = profile.model_copy(update={"budgets": Budgets(memory_mb=1.0),
                                       "measure": Measure(warmup=1, repeats=5, memory_batch=4096)})
    ctx.profile, ctx.backend = tight, get_backend(tight)
    study.optimize(Objective(ctx, optuna.artifacts.FileSystemArtifactStore(str(tmp_path))), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs
    assert "memory limit" in t.user_attrs[T_STOPPED] and t.user_attrs[T_FEASIBLE] is False
    assert t.values[1] == math.inf and t.values[2] >= 512
    assert t.user_attrs["constraints"]["memory_mb"] > 0


@pytest.mark.slow
def test_front_score_test_fills_in_what_a_stopped_run_did_not_score(real_study, view, tmp_path):
    """A run stopped before its final step has no test scores: `front --score-test` adds the same ones."""
    from _inspect_fixtures import copy_study

    study = copy_study(real_study, tmp_path / "copy")
    copied = load_study(study.name, results=study.results)
    before = copied.attrs[S_TEST_SCORES]
    copied.study.set_user_attr(S_TEST_SCORES, {})
    assert load_study(study.name, results=study.results).front.test_accuracy.isna().all()
    r = run_cli("front", *cli_args(study), "--score-test", "--format", "csv")
    assert r.returncode == 0, r.stderr
    after = load_study(study.name, results=study.results).attrs[S_TEST_SCORES]
    assert after == before and "front points scored" in r.stderr
