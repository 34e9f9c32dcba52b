"""A trial's second export (the trained weights in the structure's kept export) equals a fresh export."""

from __future__ import annotations

import torch
from torch import nn

from search.compress import Reexport, check_export, export_onnx
from search.measure.cache import structure_key


def _net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def _train(model: nn.Module) -> None:
    """A few steps that move the weights and BatchNorm's running statistics (which the export folds)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        loss = model(torch.randn(16, 1, 12, 12)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_the_trained_weights_written_into_the_kept_export_are_a_fresh_export_byte_for_byte(tmp_path):
    model, reuse = _net(), Reexport()
    structure = export_onnx(model, (1, 12, 12), fast=False, path=tmp_path / "structure.onnx", reuse=reuse)
    assert reuse.program is not None and reuse.reused == 0
    # A plain export byte for byte, node names included (pruning records name the teacher's nodes).
    plain = export_onnx(model, (1, 12, 12), fast=False, path=tmp_path / "plain.onnx")
    assert structure.read_bytes() == plain.read_bytes() and structure_key(structure) == structure_key(plain)
    _train(model)
    final = export_onnx(model, (1, 12, 12), fast=False, path=tmp_path / "final.onnx", reuse=reuse)
    assert reuse.reused == 1 and reuse.program is None  # used once
    fresh = export_onnx(model, (1, 12, 12), fast=False, path=tmp_path / "fresh.onnx")
    assert final.read_bytes() == fresh.read_bytes() != structure.read_bytes()
    check_export(model, final, (1, 12, 12))


def test_a_kept_export_of_another_structure_is_not_used(tmp_path):
    reuse = Reexport()
    export_onnx(_net(8), (1, 12, 12), fast=False, path=tmp_path / "a.onnx", reuse=reuse)
    other = _net(6)  # other shapes: its weights cannot go into the kept graph
    out = export_onnx(other, (1, 12, 12), fast=False, path=tmp_path / "b.onnx", reuse=reuse)
    assert reuse.reused == 0
    check_export(other, out, (1, 12, 12))  # a fresh export, correct
