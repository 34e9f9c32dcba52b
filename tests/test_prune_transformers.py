"""Transformers as pruning students: MLP hidden units and whole attention heads prune, for hand-written
attention and for `nn.MultiheadAttention` (split into q/k/v/out Linears first), over images and token ids.

Tiny models (width 32, 4 heads, 2 blocks): every test runs in a few seconds on one thread.
"""

from __future__ import annotations

import inspect

import archs
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from _compress_fixtures import digits, tmp_dir, torch_threads
from torch import nn

from search.compress import export_onnx, layer_blocks, prunable_layers, prune, prune_groups
from search.compress.attention import SplitAttention, split_attention

DIM, HEADS, DEPTH, MLP = 32, 4, 2, 64
VOCAB, SEQ = 50, 8


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


class MhaBlock(nn.Module):
    """Pre-norm encoder block on torch's nn.MultiheadAttention; `pad` (batch, seq) True = padding."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first)
        self.norm2 = nn.LayerNorm(DIM)
        self.fc1 = nn.Linear(DIM, MLP)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(MLP, DIM)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        x = x + (a if self.batch_first else a.transpose(0, 1))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class MhaViT(nn.Module):
    """Patch embedding (Conv2d, or Linear on flattened patches), cls token, positional embedding."""

    def __init__(self, conv: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.embed = nn.Conv2d(1, DIM, 2, 2) if conv else nn.Linear(4, DIM)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, DIM) * 0.02)
        self.blocks = nn.Sequential(*[MhaBlock(batch_first) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, archs.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.conv:
            t = self.embed(x).flatten(2).transpose(1, 2)
        else:
            t = self.embed(x.reshape(b, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 16, 4))
        t = torch.cat([self.cls.expand(b, -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


class HandAttention(nn.Module):
    """Hand-written attention taking an additive (batch, 1, 1, seq) mask."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = HEADS
        self.head_dim = DIM // HEADS
        self.q, self.k, self.v, self.proj = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q, k, v = (f(x).reshape(shape).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5 + mask, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class BertBlock(MhaBlock):
    def __init__(self, hand: bool) -> None:
        super().__init__()
        if hand:
            self.attn = HandAttention()
        self.hand = hand

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        if not self.hand:
            return super().forward(x, pad)
        mask = torch.zeros(pad.shape, dtype=x.dtype).masked_fill(pad, float("-inf"))[:, None, None, :]
        x = x + self.attn(self.norm1(x), mask)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Bert(nn.Module):
    """Encoder over int64 token ids (0 = padding): token + position embeddings, padding mask computed
    from the ids, mean-pooled over real tokens (or the first token's state: `pool="cls"`)."""

    def __init__(self, hand: bool = False, pool: str = "mean") -> None:
        super().__init__()
        self.pool = pool
        self.tok = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.pos = nn.Embedding(SEQ, DIM)
        self.norm0 = nn.LayerNorm(DIM)
        self.blocks = nn.ModuleList([BertBlock(hand) for _ in range(DEPTH)])
        self.head = nn.Linear(DIM, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.norm0(self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))[None])
        for block in self.blocks:
            x = block(x, pad)
        if self.pool == "cls":
            return self.head(x[:, 0])
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1))


def token_ids(n: int, seed: int = 0) -> torch.Tensor:
    """Real-looking batches: random ids 1..VOCAB-1, each row padded with 0 after a random length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(2, SEQ + 1, (n,), generator=g)
    ids[torch.arange(SEQ)[None, :] >= lengths[:, None]] = 0
    return ids


def images(n: int) -> torch.Tensor:
    return torch.from_numpy(digits()["val_x"][:n].copy())


# name -> (model builder, example input that traces the graph, real-looking batch)
CASES = {
    "mha_vit": (lambda: MhaViT(conv=True), lambda: images(1), lambda: images(6)),
    "mha_vit_linear_seq_first": (lambda: MhaViT(conv=False, batch_first=False), lambda: images(1), lambda: images(6)),
    "tiny_vit": (lambda: archs.TinyViT(), lambda: images(1), lambda: images(6)),
    "bert_mha": (lambda: Bert(), lambda: token_ids(1, seed=3), lambda: token_ids(6)),
    "bert_hand_cls": (lambda: Bert(hand=True, pool="cls"), lambda: token_ids(1, seed=3), lambda: token_ids(6)),
}


def build(case: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    make, example, batch = CASES[case]
    torch.manual_seed(seed)
    return make().eval(), example(), batch()


def qkv_names(attn: str, model: nn.Module) -> tuple[str, str, str]:
    if isinstance(dict(model.named_modules())[attn], nn.MultiheadAttention):
        return f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"
    return f"{attn}.q", f"{attn}.k", f"{attn}.v"


def run_onnx(model: nn.Module, x: torch.Tensor, name: str) -> np.ndarray:
    """Export `model` and run the file in ONNX Runtime on `x`: through `export_onnx` when it takes the
    task's example batch (integer inputs), else through the dynamo exporter directly."""
    path = tmp_dir() / f"{name}.onnx"
    if "example" in inspect.signature(export_onnx).parameters:
        export_onnx(model, x, path)
    else:
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                    verbose=False, report=False)
        program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("case", ["mha_vit", "mha_vit_linear_seq_first", "bert_mha"])
def test_split_attention_is_numerically_identical_and_exports(case):
    model, _, x = build(case)
    ref = logits(model, x)
    split = build(case)[0]
    assert split_attention(split) == {}
    mods = dict(split.named_modules())
    assert not any(isinstance(m, nn.MultiheadAttention) for m in mods.values())
    for b in range(DEPTH):  # the unit keeps its name; the projections are named children
        attn = mods[f"blocks.{b}.attn"]
        assert isinstance(attn, SplitAttention) and attn.num_heads == HEADS and attn.head_dim == DIM // HEADS
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert isinstance(mods[f"blocks.{b}.attn.{p}"], nn.Linear)
    np.testing.assert_allclose(logits(split, x), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(run_onnx(split, x, f"{case}-split"), ref, atol=1e-5, rtol=0)
    # prune's op count of the split student is torch-pruning's count of the original (MACs comparable)
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, x[:1])
    res = prune(model, x[:1], {})
    assert (res.macs_before, res.params_before) == (int(macs), int(params)) == (res.macs_after, res.params_after)


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_module_matches_every_mha_call(batch_first):
    """Masks (bool and float, key padding and attention), need_weights, per-head weights, kdim/vdim,
    no bias, unbatched inputs: the same outputs and weights as nn.MultiheadAttention."""
    torch.manual_seed(0)
    n, L, S = 3, 5, 7
    pad = torch.zeros(n, S, dtype=torch.bool)
    pad[:, -2:] = True
    causal = torch.triu(torch.ones(L, S, dtype=torch.bool), 3)
    calls = [{}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal, "key_padding_mask": pad},
             {"attn_mask": torch.randn(n * HEADS, L, S)}, {"key_padding_mask": pad.float() * -1e4},
             {"need_weights": False, "key_padding_mask": pad}, {"average_attn_weights": False}]
    for kw in ({}, {"kdim": 16, "vdim": 24}, {"bias": False}):
        mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first, **kw).eval()
        split = SplitAttention.from_mha(mha).eval()
        kd, vd = kw.get("kdim", DIM), kw.get("vdim", DIM)
        seq = (lambda t, c: torch.randn(n, t, c)) if batch_first else (lambda t, c: torch.randn(t, n, c))
        q, k, v = seq(L, DIM), seq(S, kd), seq(S, vd)
        for call in calls:
            with torch.no_grad():  # eval + no_grad: nn.MultiheadAttention's fused fast path where it applies
                want, got = mha(q, k, v, **call), split(q, k, v, **call)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
            if want[1] is None:
                assert got[1] is None
            else:
                torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first).eval()
    x = torch.randn(L, DIM)  # unbatched
    for want, got in zip(mha(x, x, x), SplitAttention.from_mha(mha)(x, x, x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["mha_vit", "tiny_vit", "bert_mha", "bert_hand_cls"])
def test_mlp_units_and_whole_heads_prune_and_export(case):
    model, example, x = build(case)
    before = sum(p.numel() for p in model.parameters())
    groups = prune_groups(model, example)
    attns = [f"blocks.{b}.attn" for b in range(DEPTH)]
    q0 = {a: qkv_names(a, model) for a in attns}
    for q, k, v in q0.values():  # one ratio per group: heads of one attention, each MLP, the stream
        assert groups[q] == [q, k, v], groups
    for b in range(DEPTH):
        assert groups[f"blocks.{b}.fc1"] == [f"blocks.{b}.fc1"]
    assert "head" not in prunable_layers(model, example)
    assert layer_blocks(model, list(groups))["blocks.0"] == [q0["blocks.0.attn"][0], "blocks.0.fc1"]

    ratios = {q[0]: 0.5 for q in q0.values()} | {f"blocks.{b}.fc1": 0.5 for b in range(DEPTH)} | {"head": 0.5}
    res = prune(model, example, ratios)
    mods = dict(res.model.named_modules())
    for a, (q, k, v) in q0.items():
        assert res.heads[a] == mods[a].num_heads == 2  # 4 heads at 50%: 2 stay
        for p in (q, k, v):
            assert tuple(mods[p].weight.shape) == (2 * DIM // HEADS, DIM)
        out = mods[a].out_proj if hasattr(mods[a], "out_proj") else mods[a].proj
        assert tuple(out.weight.shape) == (DIM, 2 * DIM // HEADS)
    for b in range(DEPTH):
        assert tuple(mods[f"blocks.{b}.fc1"].weight.shape) == (MLP // 2, DIM)
        assert tuple(mods[f"blocks.{b}.fc2"].weight.shape) == (DIM, MLP // 2)
    applied = res.applied(ratios)
    assert applied["blocks.0.fc1"]["channels"] == [MLP, MLP // 2]
    assert applied[q0["blocks.0.attn"][0]]["channels"] == [DIM, DIM // 2]
    assert "classifier" in applied["head"]["reason"]
    assert all("reason" in e for e in applied.values() if e["applied"] < e["requested"])
    assert res.params_after == sum(p.numel() for p in res.model.parameters()) < before == res.params_before
    assert sum(p.numel() for p in model.parameters()) == before  # the teacher is untouched

    y = logits(res.model, x)
    assert y.shape == (len(x), logits(model, x[:1]).shape[1]) and np.isfinite(y).all()
    np.testing.assert_allclose(run_onnx(res.model, x, f"{case}-pruned"), y, atol=1e-4, rtol=1e-4)


def _kill_half(model: nn.Module) -> None:
    """Zero heads 2-3 of every attention (their q/k/v rows and output columns) and half of every MLP's
    hidden units: removing exactly those leaves the function unchanged, so a pruner that removes the
    right rows and columns, and reshapes heads right, gives the same logits."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (SplitAttention, archs.Attention, HandAttention)):
                d = m.head_dim
                out = m.out_proj if hasattr(m, "out_proj") else m.proj
                for lin in [c for c in m.children() if c is not out]:
                    lin.weight[2 * d:] = 0
                    lin.bias[2 * d:] = 0
                out.weight[:, 2 * d:] = 0
            if name.endswith("fc1"):
                m.weight[MLP // 2:] = 0
                m.bias[MLP // 2:] = 0
            if name.endswith("fc2"):
                m.weight[:, MLP // 2:] = 0


@pytest.mark.parametrize("case", ["mha_vit", "tiny_vit", "bert_mha"])
def test_pruning_dead_heads_and_units_keeps_the_function(case):
    model, example, x = build(case)
    split_attention(model)  # so the heads to kill are addressable; prune splits the teacher's copy the same way
    _kill_half(model)
    ratios = {qkv_names(f"blocks.{b}.attn", build(case)[0])[0]: 0.5 for b in range(DEPTH)}
    ratios |= {f"blocks.{b}.fc1": 0.5 for b in range(DEPTH)}
    res = prune(model, example, ratios)
    assert res.heads == {f"blocks.{b}.attn": 2 for b in range(DEPTH)} and not res.skipped
    np.testing.assert_allclose(logits(res.model, x), logits(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["mha_vit", "mha_vit_linear_seq_first", "bert_mha"])
def test_residual_stream_width_prunes_everything_coupled_to_it(case):
    """The patch/token embedding's width is the residual stream: LayerNorms, positional and cls
    parameters, position embedding, every block's inputs and outputs shrink with it (or nothing does)."""
    model, example, x = build(case)
    stream = "tok" if case.startswith("bert") else "embed"
    groups = prune_groups(model, example)
    assert {f"blocks.{b}.{n}" for b in range(DEPTH) for n in ("attn.out_proj", "fc2")} <= set(groups[stream])
    res = prune(model, example, {stream: 0.5})
    assert res.applied({stream: 0.5})[stream]["channels"] == [DIM, DIM // 2] and not res.skipped
    mods = dict(res.model.named_modules())
    half = DIM // 2
    for name, m in mods.items():
        if isinstance(m, nn.LayerNorm):
            assert m.normalized_shape == (half,), name
        if isinstance(m, SplitAttention):  # inputs and output shrink, the heads stay whole
            assert m.embed_dim == half and m.num_heads == HEADS and m.q_proj.out_features == DIM
            assert (m.k_proj.in_features, m.v_proj.in_features, m.out_proj.out_features) == (half, half, half)
    for b in range(DEPTH):
        assert (mods[f"blocks.{b}.fc1"].in_features, mods[f"blocks.{b}.fc2"].out_features) == (half, half)
    assert mods["head"].in_features == half
    for p in ("cls", "pos"):
        if isinstance(getattr(res.model, p, None), nn.Parameter):
            assert getattr(res.model, p).shape[-1] == DIM // 2
    if stream == "tok":
        assert res.model.tok.weight.shape == (VOCAB, DIM // 2) and res.model.pos.weight.shape == (SEQ, DIM // 2)
    y = logits(res.model, x)
    np.testing.assert_allclose(run_onnx(res.model, x, f"{case}-stream"), y, atol=1e-4, rtol=1e-4)


class PerHeadMaskViT(MhaViT):
    """Passes a (batch*heads, L, S) attn_mask: its head count is baked into the mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = torch.cat([self.cls.expand(b, -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1) + self.pos
        mask = torch.zeros(b * HEADS, 17, 17)
        for blk in self.blocks:
            h = blk.norm1(t)
            t = t + blk.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            t = t + blk.fc2(blk.act(blk.fc1(blk.norm2(t))))
        return self.head(self.norm(t)[:, 0])


class FusedQKV(nn.Module):
    """timm-style attention: one Linear makes q, k and v."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = HEADS, DIM // HEADS
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, DIM))


def test_heads_that_cannot_be_pruned_are_skipped_with_a_reason():
    x = images(1)
    torch.manual_seed(0)
    per_head = PerHeadMaskViT().eval()
    assert "blocks.0.attn.q_proj" not in prunable_layers(per_head, x)
    ratios = {"blocks.0.attn.q_proj": 0.5, "blocks.0.attn.v_proj": 0.5, "blocks.0.fc1": 0.5}
    res = prune(per_head, x, ratios)
    applied = res.applied(ratios)
    for p in ("q_proj", "v_proj"):
        assert "per head" in applied[f"blocks.0.attn.{p}"]["reason"], applied
    assert res.heads == {} and applied["blocks.0.fc1"]["channels"] == [MLP, MLP // 2]  # the rest still prunes
    assert res.model(images(3)).shape == (3, archs.NUM_CLASSES)

    # one head: nothing to remove; add_bias_kv: nn.MultiheadAttention stays (pruned via embed_dim only)
    vit = MhaViT().eval()
    vit.blocks[0].attn = nn.MultiheadAttention(DIM, 1, batch_first=True)
    vit.blocks[1].attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True, add_bias_kv=True)
    ratios = {"blocks.0.attn.q_proj": 0.5, "blocks.1.attn.out_proj": 0.5, "blocks.1.attn.q_proj": 0.5,
              "blocks.1.fc1": 0.5, "embed": 0.5}
    res = prune(vit, x, ratios)
    applied = res.applied(ratios)
    assert "1 attention head" in applied["blocks.0.attn.q_proj"]["reason"]
    assert "add_bias_kv" in applied["blocks.1.attn.out_proj"]["reason"]
    assert "no Conv/Linear module" in applied["blocks.1.attn.q_proj"]["reason"]
    assert applied["blocks.1.fc1"]["channels"] == [MLP, MLP // 2] and applied["embed"]["channels"] == [DIM, DIM // 2]
    assert all("reason" in e for e in applied.values() if e["applied"] < e["requested"])
    assert res.model(images(3)).shape == (3, archs.NUM_CLASSES)

    # fused q/k/v: no search dimension that can never prune; the MLP and the stream still prune
    fused = archs.TinyViT().eval()
    for blk in fused.blocks:
        blk.attn = FusedQKV()
    assert set(prune_groups(fused, x)) == {"embed", "blocks.0.fc1", "blocks.1.fc1"}
    ratios = {"blocks.0.attn.qkv": 0.5, "blocks.0.fc1": 0.5}
    applied = prune(fused, x, ratios).applied(ratios)
    assert "fused" in applied["blocks.0.attn.qkv"]["reason"] and applied["blocks.0.fc1"]["applied"] == 0.5


def test_prune_under_no_grad_still_traces():
    model, example, _ = build("bert_mha")
    with torch.no_grad():
        res = prune(model, example, {"blocks.0.attn.q_proj": 0.5})
    assert res.heads["blocks.0.attn"] == 2 and not res.skipped
