"""Token-level outputs (a language model's (N, T, V) logits): per-token distillation with unscored positions
masked, next-token top-1 per sequence, and a Task that declares them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search.compress.distillation import kd_loss, token_kd_loss
from search.metrics import IGNORE_INDEX, TOKEN_TOP1


def test_token_kd_is_kd_over_the_scored_positions_only():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    y = torch.randint(0, 7, (3, 5), generator=g)
    y[0, 3:] = IGNORE_INDEX  # padding
    y[2, :] = IGNORE_INDEX  # a sequence with nothing scored
    keep = y != IGNORE_INDEX
    want = kd_loss(s[keep], t[keep], y[keep], 2.0, 0.3)
    assert torch.allclose(token_kd_loss(s, t, y, 2.0, 0.3), want)
    s2 = s.clone()
    s2[~keep] = 100.0  # what the student says at an unscored position changes nothing
    assert torch.allclose(token_kd_loss(s2, t, y, 2.0, 0.3), want)
    empty = torch.full((2, 5), IGNORE_INDEX)
    z = token_kd_loss(s[:2].requires_grad_(), t[:2], empty, 2.0, 0.3)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_next_token_top1_is_per_sequence_over_scored_positions():
    logits = np.zeros((2, 3, 4), np.float32)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 3] = 1.0  # predicts 1, 2, 3
    logits[1, :, 0] = 1.0  # predicts 0 everywhere
    targets = np.array([[1, 0, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    assert TOKEN_TOP1(logits, targets).tolist() == [0.5, 1.0]


def test_a_token_task_defaults_to_next_token_top1_and_needs_a_vocabulary():
    from torch.utils.data import TensorDataset

    from search.tasks import Task

    data = TensorDataset(torch.ones(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long))
    task = Task(name="lm", teacher=torch.nn.Identity(), train=data, val=data, input_shape=(6,), num_classes=9,
                output_kind="tokens")
    assert task.metric is TOKEN_TOP1 and task.input_spec.dtype == "int64"
    with pytest.raises(ValueError, match="num_classes must be >= 2 for tokens"):
        Task(name="lm", teacher=torch.nn.Identity(), train=data, val=data, input_shape=(6,), num_classes=1,
             output_kind="tokens")
