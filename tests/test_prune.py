"""Structured pruning on three architectures: exact channel counts, a new model, ONNX parity."""

from __future__ import annotations

import archs
import numpy as np
import pytest
import torch
from _compress_fixtures import example_input, ort_logits, tmp_dir, torch_threads
from torch import nn

from search.compress import (
    expected_channels,
    export_onnx,
    layer_blocks,
    prunable_layers,
    prune,
    prune_groups,
)

MULTIPLE = 8
RATIOS = (0.5, 0.25, 0.6, 0.3)  # cycled over layers so neighbours get different ratios
CLASSIFIER = {"mobilenet": "classifier", "resnet": "fc", "vit": "head"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


def _keep(c: int, r: float, m: int) -> int:
    """torch-pruning's round_to: keep int(C*(1-r)) floored to a multiple of m; a floor of zero
    keeps one multiple (torch-pruning would leave the group whole instead)."""
    k = int(c * (1 - r) + 1e-9)
    k -= k % m
    return min(c, max(m, k))


def _width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def test_expected_channels_matches_round_to_semantics():
    assert expected_channels(64, 0.5, 8) == 32
    assert expected_channels(72, 0.5, 8) == 32  # int(36) floored to 32
    assert expected_channels(48, 0.3, 8) == 32  # int(33.6) = 33 -> 32
    assert expected_channels(32, 0.7, 16) == 16  # torch-pruning: 9 -> 0 -> group left whole
    assert expected_channels(12, 0.5, 8) == 8
    assert expected_channels(8, 0.5, 8) == 8  # nothing to remove
    assert expected_channels(10, 0.35, 1) == 6
    assert expected_channels(100, 0.29) == 71  # not 70: 100 * 0.71 is 70.99999999999999 in floats
    for c in (8, 16, 24, 48, 72, 96):
        for r in (0.1, 0.25, 0.5, 0.6, 0.9):
            assert expected_channels(c, r, MULTIPLE) == _keep(c, r, MULTIPLE)


@pytest.mark.parametrize("arch", ["mobilenet", "resnet", "vit"])
def test_prune_channels_parity_and_original_untouched(arch):
    torch.manual_seed(0)
    model = archs.build(arch)
    x = example_input()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref_out = model(x)
    widths = {n: _width(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    layers = prunable_layers(model, x)
    assert CLASSIFIER[arch] not in layers
    groups = prune_groups(model, x)
    ratios = {n: RATIOS[i % len(RATIOS)] for i, n in enumerate(layers)}
    res = prune(model, x, ratios, channel_multiple=MULTIPLE)

    # The original is untouched: same weights, same outputs, same widths.
    assert res.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), ref_out)
    assert {n: _width(m) for n, m in model.named_modules() if n in widths} == widths

    mods = dict(res.model.named_modules())
    assert _width(mods[CLASSIFIER[arch]]) == archs.NUM_CLASSES
    heads = {n: m.num_heads for n, m in model.named_modules() if isinstance(m, archs.Attention)}
    for decider, members in groups.items():
        r = ratios[decider]
        if decider.endswith((".q", ".k", ".v")):  # whole attention heads go, not channels
            attn = decider.rsplit(".", 1)[0]
            h = heads[attn]
            kept = max(1, int(h * (1 - r)))
            assert mods[attn].num_heads == res.heads[attn] == kept
            expect = kept * (widths[decider] // h)
        else:
            expect = _keep(widths[decider], r, MULTIPLE)
        for layer in members:  # coupled layers share the decider's width
            assert res.channels[layer] == _width(mods[layer]) == expect, (layer, r)
            if layer != decider:
                assert res.coupled[layer] == decider
    assert any(res.channels[n] < widths[n] for n in layers)
    assert res.macs_after < res.macs_before and res.params_after < res.params_before
    assert res.params_after == sum(p.numel() for p in res.model.parameters())

    # The smaller model runs on a batch, exports, and ONNX Runtime agrees with it.
    xb = torch.rand(5, *archs.INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = res.model.eval()(xb).numpy()
    path = export_onnx(res.model, archs.INPUT_SHAPE, tmp_dir() / f"{arch}-pruned.onnx")
    np.testing.assert_allclose(ort_logits(path, xb.numpy()), expected, atol=1e-4, rtol=1e-4)


def test_unprunable_layers_are_skipped_with_a_reason():
    model = archs.build("mobilenet")
    x = example_input()
    res = prune(model, x, {"classifier": 0.5, "stem.conv": 0.5, "blocks.0.expand.conv": 0.5,
                           "nope.conv": 0.5, "head.conv": 0.5},
                channel_multiple=16, never_prune=["head.conv"])
    assert "classifier" in res.skipped["classifier"]
    assert "nothing to remove" in res.skipped["stem.conv"]  # 16 channels, multiple 16
    assert "no Conv/Linear module" in res.skipped["nope.conv"]
    assert "never_prune" in res.skipped["head.conv"]
    assert (res.channels["classifier"], res.channels["stem.conv"], res.channels["head.conv"]) == (10, 16, 64)
    assert res.channels["blocks.0.expand.conv"] == 16  # 48 * 0.5 = 24 -> 16; still pruned
    assert "head.conv" not in prunable_layers(model, x, never_prune=["head.conv"])


@pytest.mark.parametrize("importance", ["l1", "lamp", "taylor"])
def test_importance_criteria_prune_to_the_same_widths(importance):
    model = archs.build("resnet")
    x = example_input()
    calib = (torch.rand(16, *archs.INPUT_SHAPE), torch.randint(0, 10, (16,)))
    ratios = {"stem.conv": 0.5, "layers.1.fuse.conv": 0.5, "layers.2.conv1.conv": 0.5}
    ref = prune(model, x, ratios, importance="l2")
    res = prune(model, x, ratios, importance=importance,
                calibration=calib if importance == "taylor" else None)
    assert res.channels == ref.channels and not res.skipped
    assert all(p.grad is None for p in res.model.parameters())  # Taylor's gradients are cleared
    assert res.model(torch.rand(2, *archs.INPUT_SHAPE)).shape == (2, 10)
    with pytest.raises(ValueError, match="importance"):
        prune(model, x, ratios, importance="random")  # type: ignore[arg-type]


def test_layer_blocks_groups_by_top_level_block():
    model = archs.build("mobilenet")
    blocks = layer_blocks(model, prunable_layers(model, example_input()))
    assert blocks["stem"] == ["stem.conv"]
    assert blocks["blocks.2"] == ["blocks.2.expand.conv", "blocks.2.dw.conv", "blocks.2.project.conv"]
    assert blocks["head"] == ["head.conv"]
    assert list(blocks) == ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]
    vit = archs.build("vit")
    assert layer_blocks(vit, ["embed", "blocks.1.attn.q", "blocks.1.fc1"]) == {
        "embed": ["embed"], "blocks.1": ["blocks.1.attn.q", "blocks.1.fc1"]}


def test_torch_pruning_failures_become_skips_not_crashes(monkeypatch):
    import torch_pruning as tp

    model = archs.build("mobilenet")
    x = example_input()
    ratios = {"blocks.1.expand.conv": 0.5, "head.conv": 0.5}

    def broken_step(self, interactive=False):
        raise RuntimeError("boom")

    monkeypatch.setattr(tp.pruner.MetaPruner, "step", broken_step)
    res = prune(model, x, ratios)
    assert set(res.skipped) == set(ratios)
    assert "torch-pruning failed: RuntimeError: boom" in res.skipped["head.conv"]
    assert res.channels["head.conv"] == 64 and res.params_after == res.params_before
    assert res.model(x).shape == (1, 10)

    def broken_trace(self, *args, **kwargs):
        raise RuntimeError("untraceable")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken_trace)
    res = prune(model, x, ratios)
    assert "cannot trace the model" in res.skipped["blocks.1.expand.conv"] and res.channels["head.conv"] == 64
    with pytest.warns(UserWarning, match="cannot trace"):
        assert prunable_layers(model, x) == []


def test_layer_blocks_find_the_repeated_units_under_a_preprocessing_wrapper():
    """A wrapped model (normalisation baked in front) has one top-level child: the units must still be
    its residual blocks, not one block for the whole network."""
    from search.tasks.models import FASHION_RESNET_SPEC

    wrapped = nn.Sequential(archs.Normalize(), FASHION_RESNET_SPEC.build())
    layers = [n for n, m in wrapped.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    blocks = layer_blocks(wrapped, layers)
    assert list(blocks) == ["1.stem"] + [f"1.stages.{s}.{b}" for s in range(4) for b in range(2)] + ["1.fc"]
    assert blocks["1.stages.1.0"] == ["1.stages.1.0.conv1", "1.stages.1.0.conv2", "1.stages.1.0.shortcut.0"]
    # the same model unwrapped gives the same units, without the prefix
    bare = FASHION_RESNET_SPEC.build()
    assert [f"1.{k}" for k in layer_blocks(bare, [n[2:] for n in layers])] == list(blocks)


class HandAttention(nn.Module):
    """Hand-written attention whose head count is `self.h` (not `num_heads`): pruning the q/k/v projection breaks
    its reshape, while its MLP units prune fine."""

    def __init__(self, d: int = 32, h: int = 4) -> None:
        super().__init__()
        self.h = h
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2, self.head = nn.Linear(d, 64), nn.Linear(64, d), nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


def test_a_group_torch_pruning_cannot_prune_is_skipped_and_the_others_are_pruned():
    torch.manual_seed(0)
    model, x = HandAttention().eval(), torch.rand(1, 6, 32)
    res = prune(model, x, {"qkv": 0.5, "fc1": 0.5})
    assert res.channels["fc1"] == 32 and res.model.fc1.out_features == 32  # the MLP units stay searched
    assert res.skipped["qkv"].startswith("torch-pruning failed: RuntimeError")
    assert "fc1" not in res.skipped and res.params_after < res.params_before
    assert res.model(x).shape == (1, 2)
