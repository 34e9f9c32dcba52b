"""Models with several inputs: a BERT-style encoder taking the ids and an attention mask, the way such models
ship, searched end to end through the CLI (tests/zoo.py:make_bert2), and the Task contract for such samples."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _study_fixtures import (
    AGREEING_MEASURE,
    TRANSFORMER_PRECISIONS,
    cli_study,
    export_fastest,
    profile_text,
    space_text,
)
from torch import nn
from torch.utils.data import TensorDataset

from search.tasks import InputSpec, Task

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

ZOO = Path(__file__).resolve().parent / "zoo.py"


class Pair(nn.Module):
    """Two inputs: a float vector and int64 ids whose embedding is added to it."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.emb(ids).mean(1))


class TupleSamples:
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.ids = torch.rand(n, 4, generator=g), torch.randint(0, 10, (n, 5), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return (self.x[i], self.ids[i]), i % 3


def test_samples_with_several_inputs_get_one_named_spec_each():
    from search.tasks.arrays import dataset_arrays, example_batch

    data = TupleSamples(32)
    task = Task(name="pair", teacher=Pair(), train=data, val=data, input_shape=((4,), (5,)), num_classes=3,
                input_spec=(InputSpec(name="features"), InputSpec(name="ids")))
    assert task.input_names == ("features", "ids") and task.input_shapes == ((4,), (5,))
    first, second = task.input_specs
    assert (first.dtype, first.value_range) == ("float32", (0.0, 1.0))  # read from each input's own data
    assert second.dtype == "int64" and 0 <= second.value_range[0] <= second.value_range[1] <= 9
    x, y = dataset_arrays(task.val)
    assert list(x) == ["features", "ids"] and x["ids"].dtype == np.int64 and x["features"].shape == (32, 4)
    assert y.tolist()[:4] == [0, 1, 2, 0]
    ex = example_batch(task.val, 3)
    assert ex["features"].dtype == torch.float32 and ex["ids"].shape == (3, 5)
    # names left out: input_0, input_1
    assert Task(name="p", teacher=Pair(), train=data, val=data, input_shape=((4,), (5,)),
                num_classes=3).input_names == ("input_0", "input_1")
    with pytest.raises(ValueError, match="one InputSpec per input"):
        Task(name="p", teacher=Pair(), train=data, val=data, input_shape=((4,), (5,)), num_classes=3,
             input_spec=(InputSpec(name="a"), InputSpec(name="b"), InputSpec(name="c")))
    with pytest.raises(ValueError, match="one shape per input"):
        Task(name="p", teacher=Pair(), train=data, val=data, input_shape=(4,), num_classes=3)
    single = TensorDataset(torch.rand(8, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="2 InputSpecs, but a training sample holds one input"):
        Task(name="p", teacher=nn.Linear(4, 3), train=single, val=single, input_shape=(4,), num_classes=3,
             input_spec=(InputSpec(name="a"), InputSpec(name="b")))


def test_a_two_input_file_exports_scores_and_is_measured_with_both_inputs(tmp_path: Path):
    """Export names each input, ONNX Runtime scores with both, and the runner feeds the task's sample for
    each input (the mask changes the outputs, so a feed that dropped it would not match)."""
    from search.compress import export_onnx
    from search.measure.accuracy import onnx_outputs
    from search.measure.runner import measure
    from search.tasks.arrays import dataset_arrays, example_batch, feed_sample
    from search.tasks.inputs import InputsDataset

    ids = torch.randint(3, 20, (16, 6))
    ids[:, 4:] = 0
    data = InputsDataset(zoo.two_inputs(ids), torch.zeros(16, dtype=torch.long))
    model = zoo.TwoInputBert().eval()
    path = export_onnx(model, example_batch(data, 3), tmp_path / "two.onnx")
    import onnx

    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input_ids", "attention_mask"]
    x, _ = dataset_arrays(data)
    with torch.no_grad():
        want = model(ids, (ids != 0).long()).numpy()
        unmasked = model(ids, torch.ones_like(ids)).numpy()
    assert np.abs(want - unmasked).max() > 1e-3  # the mask matters
    np.testing.assert_allclose(onnx_outputs(path, x), want, atol=1e-4)
    sample = feed_sample(data)
    assert sample.count(";") == 1  # one encoded sample per input
    m = measure(str(path), str(path), warmup=2, repeats=5, rounds=1, max_rounds=1, sample=sample)
    assert m["error"] is None and m["latency"]["p50_ms"] > 0, m


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert2")
    r = cli_study(folder, f"{ZOO}:make_bert2", "two",
                  space_text("two", budget="{steps: 30, max_samples: 512}", refine="{steps: 30}", max_drop=0.5),
                  profile_text(20.0, 1000.0, 50.0, measure=AGREEING_MEASURE, precisions=TRANSFORMER_PRECISIONS), 4)
    return folder, r


def test_a_two_input_model_is_searched_pruned_and_exported_with_both_inputs(study, tmp_path: Path):
    import search

    folder, r = study
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    view = search.load_study("two", results=folder / "results")
    assert all(t.state == "COMPLETE" for t in view.trials), [(t.number, t.fail_reason) for t in view.trials]
    assert view.teacher["accuracy"] > 0.9, view.teacher
    assert any(e["applied"] > 0 for t in view.trials for e in t.pruned.values())  # pruned through both inputs
    recorded = view.attrs["input"]["inputs"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in recorded] == [
        ("input_ids", "int64", [zoo.SEQ_LEN]), ("attention_mask", "int64", [zoo.SEQ_LEN])]
    manifest = export_fastest("two", folder / "results", tmp_path / "deploy")
    assert [(i["name"], i["dtype"], i["value_range"]) for i in manifest["inputs"]] == [
        ("input_ids", "int64", [0, zoo.VOCAB - 1]), ("attention_mask", "int64", [0, 1])]
    assert manifest["input"] == manifest["inputs"][0]
