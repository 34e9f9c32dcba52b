"""`nn.MultiheadAttention` as separate q/k/v/out Linear layers, so whole attention heads can be pruned.

torch-pruning prunes an `nn.MultiheadAttention` only through its `embed_dim` (the residual stream), never
by heads, and the module cannot have q/k/v widths other than `embed_dim`. `split_attention` replaces
each one in a model (in place; a pruning student is a copy) by a `SplitAttention` that computes the same
function with four plain Linears and an int `num_heads`, the shape `search.compress.prune_graph` prunes
by whole heads. Names: the attention module keeps its name (`blocks.0.attn`, the unit a plan sees) and
gets the children `q_proj`, `k_proj`, `v_proj` (the rows of `in_proj_weight`/`in_proj_bias`, or of
`q/k/v_proj_weight` when kdim/vdim differ) and `out_proj` (the same name as in `nn.MultiheadAttention`).

The forward takes `nn.MultiheadAttention`'s arguments (batch_first or not, unbatched inputs, bool or
float `key_padding_mask` and `attn_mask`, `need_weights`, `average_attn_weights`, `is_causal`) and
returns the same `(output, weights or None)`; outputs agree to float rounding (the attention is
written out as matmul/softmax, which exports to plain ONNX ops). Not split (the reason is returned):
`add_bias_kv`, `add_zero_attn`, and a model that is itself one `nn.MultiheadAttention`. A per-head
(batch*heads, L, S) `attn_mask` works but ties the head count to the caller's mask: the module records
it (`per_head_mask`) and its heads are then not pruned. `count_attention_ops` makes torch-pruning's op
counter count a split module as it counts the original.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class SplitAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections; `nn.MultiheadAttention`'s forward."""

    # What nn.TransformerEncoder(Layer) reads to decide on its fused fast path: these send it down the
    # ordinary path, which calls this module's forward.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.per_head_mask = False  # set when a forward got a (batch*heads, L, S) attn_mask
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @property
    def embed_dim(self) -> int:
        """The width of the query input (the residual stream): pruning changes it."""
        return self.q_proj.in_features

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same function as `mha` (its weights copied, same device, dtype and train/eval mode)."""
        why = split_blocker(mha)
        if why:
            raise ValueError(f"cannot split this nn.MultiheadAttention: {why}")
        e, h = mha.embed_dim, mha.num_heads
        ref = mha.out_proj.weight
        new = cls(e, h, mha.kdim, mha.vdim, bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  batch_first=mha.batch_first).to(device=ref.device, dtype=ref.dtype)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        with torch.no_grad():
            for lin, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        grad = any(p.requires_grad for p in mha.parameters())
        for p in new.parameters():
            p.requires_grad_(grad)
        return new.train(mha.training)

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int,
              dtype: torch.dtype) -> torch.Tensor | None:
        """One additive mask broadcastable to the (b, heads, L, S) scores; bool True = not attended."""
        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:  # (b * heads, L, S): tied to the head count
                if not torch.compiler.is_compiling():  # export traces; the pruning trace records it
                    self.per_head_mask = True
                mask = mask.reshape(b, self.num_heads, mask.shape[-2], mask.shape[-1])
            elif mask.dim() != 2:
                raise RuntimeError(f"attn_mask's dimension {mask.dim()} is not supported")
        if key_padding_mask is not None:
            pad = additive(key_padding_mask).reshape(b, 1, 1, key_padding_mask.shape[-1])
            mask = pad if mask is None else mask + pad
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # as nn.MultiheadAttention: the hint needs the mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n, s = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(b, n, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(b, s, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(b, s, h, d).transpose(1, 2)
        scores = (q * math.sqrt(1.0 / float(d))) @ k.transpose(-2, -1)
        mask = self._mask(attn_mask, key_padding_mask, b, scores.dtype)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, h * d))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if not batched else weights


def count_attention_ops(module: SplitAttention, inputs: tuple, output) -> None:
    """torch-pruning's op-counter hook for `SplitAttention` (a module with a hook is counted whole, its
    children are not): the four projections (bias per token) plus query scaling, QK^T, softmax and AV, as
    torch-pruning counts `nn.MultiheadAttention`, so a split copy counts the same ops as the original."""
    query, key = inputs[0], inputs[1]
    if query.dim() == 2:
        b, qlen, klen = 1, query.shape[0], key.shape[0]
    elif module.batch_first:
        b, qlen, klen = query.shape[0], query.shape[1], key.shape[1]
    else:
        b, qlen, klen = query.shape[1], query.shape[0], key.shape[0]
    h, d = module.num_heads, module.head_dim
    ops = qlen * h * d + h * (2 * qlen * klen * d + qlen * klen)
    for lin, tokens in ((module.q_proj, qlen), (module.k_proj, klen), (module.v_proj, klen), (module.out_proj, qlen)):
        ops += tokens * lin.out_features * (lin.in_features + (lin.bias is not None))
    module.__flops__ += int(ops * b)


def split_blocker(mha: nn.MultiheadAttention) -> str | None:
    """Why `mha` is kept as it is (None: it can be split)."""
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv is not supported by the head-prunable replacement"
    if mha.add_zero_attn:
        return "add_zero_attn is not supported by the head-prunable replacement"
    return None


def split_attention(model: nn.Module) -> dict[str, str]:
    """Replace, in place, every `nn.MultiheadAttention` in `model` by an equivalent `SplitAttention`.

    Returns {name: reason} for those left as they are (their heads are not prunable); calling it again
    on the same model is harmless and returns the same reasons. An `nn.TransformerEncoder` over split
    layers has its nested-tensor fast path switched off (it reads the fused weights directly).
    """
    kept: dict[str, str] = {}
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.MultiheadAttention):
            continue
        why = split_blocker(m) or ("the model itself is one nn.MultiheadAttention" if not name else None)
        if why:
            kept[name] = why
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SplitAttention.from_mha(m))
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(isinstance(c, SplitAttention) for c in m.modules()):
            m.use_nested_tensor = False
    return kept


def split_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with its nn.MultiheadAttention modules split (the original is untouched):
    the architecture `prune` returns, e.g. to export a reference whose ONNX layer names (`...attn.q_proj`)
    match the pruned students'."""
    copied = copy.deepcopy(model)
    split_attention(copied)
    return copied
