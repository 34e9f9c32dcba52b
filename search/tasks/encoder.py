"""A BERT-style text classifier over int64 token ids, the real-text built-in's teacher.

Post-LN layers (x = LN(x + attention(x)); x = LN(x + FFN(x))) with `nn.MultiheadAttention`, which the
students split into q/k/v/out Linears so whole heads prune. The padding mask is computed from the ids inside
the graph (id 0), so the exported model takes the ids alone; with `mask_input` it takes the ids and an
attention mask (1 = a real token, 0 = padding) as two inputs, the way such models ship.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class EncoderSpec:
    vocab: int
    max_len: int
    dim: int
    heads: int
    ff: int
    depth: int
    num_classes: int
    mask_input: bool = False  # a second input, the attention mask, instead of padding read from the ids

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.mask_input:  # part of the teacher cache key: keys from before the field stay valid
            d.pop("mask_input")
        return d | {"arch": "encoder"}

    def build(self) -> nn.Module:
        return TextEncoder(self)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, ff)
        self.output = nn.Linear(ff, dim)
        self.output_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, x, x, key_padding_mask=pad, need_weights=False)[0])
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class TextEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab, spec.dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(spec.max_len, spec.dim)
        self.embeddings_norm = nn.LayerNorm(spec.dim)
        self.layers = nn.ModuleList([EncoderLayer(spec.dim, spec.heads, spec.ff) for _ in range(spec.depth)])
        self.pooler = nn.Linear(spec.dim, spec.dim)
        self.classifier = nn.Linear(spec.dim, spec.num_classes)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pad = ids == 0 if attention_mask is None else attention_mask == 0
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.embeddings_norm(self.word_embeddings(ids) + self.position_embeddings(pos))
        for layer in self.layers:
            x = layer(x, pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # mean over the real tokens
        return self.classifier(torch.tanh(self.pooler(pooled)))


WORDNET_SPEC = EncoderSpec(vocab=8192, max_len=32, dim=128, heads=4, ff=512, depth=4, num_classes=10)
