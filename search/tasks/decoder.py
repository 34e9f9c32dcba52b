"""A GPT-style causal language model over int64 token ids, the `wordnet-lm` built-in's teacher.

Pre-LN blocks (x += attention(LN(x)) under a causal mask; x += MLP(LN(x))) with `nn.MultiheadAttention`, which
the students split into q/k/v/out Linears so whole heads prune; the MLP's hidden units and the residual width
prune too. (N, T) ids -> (N, T, V) next-token logits. Padding sits after the text, so a causal model needs no
padding mask: no real position attends to it, and its positions are not scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DecoderSpec:
    vocab: int
    max_len: int
    dim: int
    heads: int
    ff: int
    depth: int

    output_kind = "tokens"  # class attribute: what train_teacher and the Task read

    @property
    def num_classes(self) -> int:  # a language model's classes are its vocabulary
        return self.vocab

    def to_dict(self) -> dict:
        return asdict(self) | {"arch": "decoder"}  # part of the teacher cache key

    def build(self) -> nn.Module:
        return CausalLM(self.vocab, self.dim, self.heads, self.ff, self.depth, self.max_len)


class CausalLayer(nn.Module):
    """GPT's pre-LN block: x += attn(LN(x)) under a causal mask; x += MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, ff)
        self.down = nn.Linear(ff, dim)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class CausalLM(nn.Module):
    """A causal language model: (N, T) ids -> (N, T, V) next-token logits, T <= max_len."""

    def __init__(self, vocab: int, dim: int, heads: int, ff: int, depth: int, max_len: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList([CausalLayer(dim, heads, ff) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)  # True: may not attend
        x = self.embeddings(ids) + self.positions(torch.arange(t, device=ids.device)).unsqueeze(0)
        for layer in self.layers:
            x = layer(x, causal)
        return self.lm_head(self.norm(x))


# A vocabulary of 4,096 words keeps the output layer (dim x V per position) from dwarfing the blocks.
WORDNET_LM_SPEC = DecoderSpec(vocab=4096, max_len=32, dim=128, heads=4, ff=512, depth=4)
