"""Integer (token id) inputs through the measurement feed, export and the agent's parameters: the feed is the
task's own sample, never random values (random ids index past a small embedding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from search.compress import export_onnx
from search.measure import agent, runner
from search.tasks.arrays import feed_sample

VOCAB, LENGTH = 5, 6  # ids 0..4: the runner's fallback ids (0..9) would index past the embedding


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(VOCAB, 8), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [4, 4, 1, 0, 0, 0], [2, 2, 2, 2, 2, 2]])
    dataset = torch.utils.data.TensorDataset(ids, torch.tensor([0, 1, 2]))
    path = export_onnx(Bag().eval(), ids, tmp_path_factory.mktemp("tok") / "bag.onnx")  # checks ORT == torch
    return path, dataset


def test_export_takes_the_tasks_integer_examples(token_model):
    import onnxruntime as ort

    path, _ = token_model
    inp = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert inp.type == "tensor(int64)" and inp.shape[1] == LENGTH


def test_measurement_feeds_the_tasks_sample(token_model):
    path, dataset = token_model
    sample = feed_sample(dataset)
    assert sample is not None and sample.startswith(f"int64:{LENGTH}:")
    assert np.array_equal(runner.decode_sample(sample), dataset.tensors[0][0].numpy())
    quick = {"warmup": 2, "repeats": 5, "timeout_s": 60}
    record = runner.measure(str(path), sample=sample, **quick)
    assert record["latency"]["runs"] % 5 == 0  # rounds of 5 timed runs each (until they agree)
    with pytest.raises(runner.RoundError, match="indices|out of bounds|idx"):
        runner.measure(str(path), **quick)  # without it: ids up to 9 on a 5-word vocabulary
    wrong = runner.encode_sample(np.zeros(LENGTH, dtype=np.float32))
    with pytest.raises(runner.RoundError, match="takes int64"):
        runner.measure(str(path), sample=wrong, **quick)


@pytest.mark.parametrize(("sample", "why"), [
    ("int64:6:AAAA", "holds 3 bytes"),
    ("complex:2:AAAA", "numeric dtype"),
    ("int64:2:not base64!", "dtype:AxB:base64"),
    ("float32:1:" + "A" * (runner.SAMPLE_MAX_CHARS + 1), "at most"),
])
def test_agent_refuses_malformed_samples(sample, why):
    from urllib.parse import urlencode

    with pytest.raises(ValueError, match=why):
        agent.parse_params(urlencode({"sample": sample}))
    ok = agent.parse_params(urlencode({"sample": runner.encode_sample(np.arange(4, dtype=np.int64))}))
    assert ok["sample"].startswith("int64:4:")
