"""Depth: removing whole residual blocks (`pruning.depth`, ratio 1.0 on a block), from the teacher to a trained,
measured trial on digits."""

from __future__ import annotations

import onnxruntime as ort
import optuna
import pytest
import torch
from _study_fixtures import TINY_SPACE, make_results, write_configs

from search.compress import droppable_blocks, export_onnx, layer_blocks, prune, prune_groups
from search.config import load_profile, load_space
from search.errors import UserError
from search.plan import Plan
from search.study.context import example_input
from search.study.record import DIRECTIONS, T_BUDGET, T_PLAN, T_PRECISION, T_PRUNED, T_TRAINED
from search.study.sampling import SearchLayers, sample_plan

DEPTH_SPACE = TINY_SPACE.replace("  granularity: block\n", "  granularity: block\n  depth: true\n", 1)


def _conv_count(path) -> int:
    import onnx

    return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)


def test_only_blocks_whose_output_has_their_inputs_shape_can_be_removed(digits_task):
    teacher, ex = digits_task.teacher, example_input(digits_task)
    blocks = layer_blocks(teacher, list(prune_groups(teacher, ex)))
    # digits: blocks.0 (16 -> 16, stride 1) and blocks.2 (24 -> 24) are residual; 1 downsamples, 3 widens.
    assert droppable_blocks(teacher, ex, blocks) == ["blocks.0", "blocks.2"]


def test_a_removed_block_is_the_identity_and_the_model_exports_smaller(digits_task, tmp_path):
    teacher, ex = digits_task.teacher, example_input(digits_task)
    whole = export_onnx(teacher, example_input(digits_task, 3), tmp_path / "teacher.onnx")
    pr = prune(teacher, ex, {"blocks.2": 1.0, "blocks.1.expand.conv": 0.5}, channel_multiple=8)
    assert pr.removed == ("blocks.2",) and isinstance(dict(pr.model.named_modules())["blocks.2"], torch.nn.Identity)
    assert pr.applied({"blocks.2": 1.0})["blocks.2"] == {"requested": 1.0, "applied": 1.0, "channels": [None, 0],
                                                          "removed": True}
    assert pr.macs_after < pr.macs_before and "blocks.2.expand.conv" not in pr.channels
    path = export_onnx(pr.model, example_input(digits_task, 3), tmp_path / "student.onnx")
    assert _conv_count(path) == _conv_count(whole) - 3  # expand, depthwise, project
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": ex.numpy()})[0]
    assert out.shape == (1, digits_task.num_classes)
    # A block that changes the shape cannot go: kept, with the reason.
    kept = prune(teacher, ex, {"blocks.1": 1.0}, channel_multiple=8)
    assert kept.removed == () and "cannot be removed whole" in kept.skipped["blocks.1"]


def test_the_space_offers_removal_only_per_block_and_the_plan_carries_it():
    with pytest.raises(UserError, match="depth: true removes whole blocks, so it needs granularity: block"):
        load_space_text(DEPTH_SPACE.replace("granularity: block", "granularity: layer"))
    space = load_space_text(DEPTH_SPACE)
    layers = SearchLayers(groups={"b.0.c": ["b.0.c"], "b.1.c": ["b.1.c"]}, blocks={"b.0": ["b.0.c"], "b.1": ["b.1.c"]},
                          quantizable=["b.0.c", "b.1.c"], quant_blocks={"b.0": ["b.0.c"], "b.1": ["b.1.c"]},
                          droppable=["b.1"])
    assert layers.unit_ratios("b.1", (0.0, 0.5), space) == (0.0, 0.5, 1.0)
    assert layers.unit_ratios("b.0", (0.0, 0.5), space) == (0.0, 0.5)  # not removable
    trial = optuna.trial.FixedTrial({"temperature": 2.0, "alpha": 0.5, "prune.b.0": 0.5, "prune.b.1": 1.0,
                                     "bits.b.0.c": 8, "bits.b.1.c": 8})
    plan = sample_plan(trial, space, layers, (32, 8), seed=0)
    assert dict(plan.prune) == {"b.0.c": 0.5, "b.1": 1.0} and dict(plan.bits) == {"b.0.c": 8}  # none for b.1's
    assert Plan.from_json(plan.to_json()) == plan


def load_space_text(text: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "space.yaml"
        p.write_text(text)
        return load_space(p)


@pytest.mark.slow  # one real trial: prune with a block removed, distil, export, quantize, measure, score
def test_a_trial_that_removes_a_block_is_trained_measured_and_recorded(tmp_path, digits_task):
    from search.study.objective import Objective
    from search.study.setup import build_context

    folder = make_results(tmp_path, digits_task)
    space_file, profile_file = write_configs(folder, DEPTH_SPACE)
    space, profile = load_space(space_file), load_profile(profile_file)
    st = optuna.create_study(directions=list(DIRECTIONS))
    ctx = build_context(st, digits_task, space, profile, folder / "s", seed=0, train_on="cpu", task_spec="digits",
                        space_file=str(space_file), profile_file=str(profile_file))
    assert ctx.layers.droppable == ["blocks.0", "blocks.2"]
    params = {"temperature": 2.0, "alpha": 0.5, **{f"prune.{u}": 0.0 for u in ctx.layers.blocks},
              **{f"bits.{u}": 32 for u in ctx.layers.quantizable}, "prune.blocks.2": 1.0}
    st.enqueue_trial(params, user_attrs={T_BUDGET: "explore"})
    store = optuna.artifacts.FileSystemArtifactStore(str((folder / "artifacts").resolve()))
    (folder / "artifacts").mkdir()
    st.optimize(Objective(ctx, store), n_trials=1, catch=())
    t = st.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs[T_TRAINED]
    assert t.user_attrs[T_PLAN]["prune"]["blocks.2"] == 1.0 and t.user_attrs[T_PRUNED]["blocks.2"]["removed"]
    assert not any(k.startswith("blocks.2.") for k in t.user_attrs[T_PRECISION])  # its layers are gone
    assert t.user_attrs["metrics"]["macs"] < ctx.teacher_metrics["macs"]  # three convs fewer (timing: benchmarks)
    assert t.values[0] > 0.5  # distilled, far above chance (10 classes)
