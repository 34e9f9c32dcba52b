"""Which layers can be pruned and how they couple: torch-pruning's dependency graph, read by name.

Coupled layers (a residual stream, expand -> depthwise, q/k/v of one attention) share one set of
channels, so they form one torch-pruning *group*; `prune_groups` lists the groups so a search can
sample one ratio each, `prunable_layers` the layers (search units are in `search.compress.blocks`). The
pruning itself is in `search.compress.pruning`.

The graph is built on a copy whose `nn.MultiheadAttention` modules are split into q/k/v/out Linears
(`search.compress.attention`), so their groups are named `<attn>.q_proj` (heads: q/k/v together) and their
`out_proj` joins the residual stream's group.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterable
from contextlib import redirect_stdout

import torch
import torch_pruning as tp
from torch import nn

from search.compress.attention import split_attention
from search.tasks.inputs import traceable

# Layers whose output channels a ratio names: Conv/Linear, and Embedding (its width is a token model's
# residual stream, as a ViT's patch embedding is).
WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


def _quiet_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    # torch-pruning warns about unwrapped parameters (positional embeddings) on every build: it
    # prunes their last dim, which is what we want for a token embedding.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=traceable(example_input))


class ChannelGraph:
    """The dependency graph of one model copy, with module names and group bookkeeping."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        # torch-pruning traces the autograd graph: frozen parameters (a task's teacher is frozen)
        # would leave every layer untraced and silently unprunable. The copy trains anyway.
        for p in model.parameters():
            p.requires_grad_(True)
        # nn.MultiheadAttention -> q/k/v/out Linears with `num_heads`, so heads prune like hand-written
        # attention; those that stay (unsupported options) are pruned only through their embed_dim.
        self.kept_mha = split_attention(model)
        self.model = model
        with torch.enable_grad():  # the tracer needs autograd, even when the caller is under no_grad
            self.dg = _quiet_graph(model, example_input)
        self.names = {m: n for n, m in model.named_modules() if n}
        self.modules = {n: m for m, n in self.names.items()}
        self.order = {n: i for i, n in enumerate(self.modules)}
        self.weight_layers = [n for n, m in self.modules.items() if isinstance(m, WEIGHT_TYPES)]
        self._attention: dict[str, tuple[int, list[str], str | None]] | None = None
        self._fused_qkv: dict[str, str] = {}  # Linear inside an attention without separate q/k/v -> reason

    def out_group(self, name: str):
        m = self.modules[name]
        fn = self.dg.get_pruner_of_module(m).prune_out_channels
        return self.dg.get_pruning_group(m, fn, [0])

    def group_layers(self, group) -> list[str]:
        """Conv/Linear/Embedding layers whose output channels this group removes, in model order."""
        out = {self.names[d.target.module] for d, _ in group
               if self.dg.is_out_channel_pruning_fn(d.handler) and d.target.module in self.names
               and isinstance(d.target.module, WEIGHT_TYPES)}
        return sorted(out, key=self.order.__getitem__)

    def reaches_output(self, group) -> bool:
        """True when these channels are the model's output channels (the classifier's classes)."""
        for dep, _ in group:
            node = dep.target
            if not node.outputs and self.dg.is_out_channel_pruning_fn(dep.handler):
                return True
        return False

    def attention_modules(self) -> dict[str, tuple[int, list[str], str | None]]:
        """Modules with an int `num_heads` whose child Linears include coupled q/k/v projections:
        {module: (heads, [q, k, v], why its heads cannot be pruned, or None)}."""
        if self._attention is not None:
            return self._attention
        found: dict[str, tuple[int, list[str], str | None]] = {}
        for name, m in self.modules.items():
            heads = getattr(m, "num_heads", None)
            if not isinstance(heads, int) or isinstance(heads, bool) or isinstance(m, nn.MultiheadAttention):
                continue
            kids = [f"{name}.{n}" for n, c in m.named_children() if isinstance(c, nn.Linear)]
            best: list[str] = []
            inner: list[str] = []  # children whose channels stay inside the module (not the residual stream)
            for kid in kids:
                try:
                    group = self.group_layers(self.out_group(kid))
                except Exception:  # untraced child: classify gives its reason
                    continue
                members = [k for k in group if k in kids]
                if len(members) == len(group):
                    inner.append(kid)
                if len(members) > len(best):
                    best = members
            if len(best) < 2:
                # One projection makes q, k and v (timm's fused `qkv`): its rows interleave q/k/v and
                # heads; torch-pruning declines it, so a ratio on it would be a dead search dimension.
                for kid in inner:
                    self._fused_qkv[kid] = (f"projection inside attention {name} (num_heads={heads}) with q, k and v "
                                        "fused in one Linear: its heads are not pruned")
                continue
            why = None
            if heads < 2:
                why = f"{heads} attention head: at least one head stays and head widths are not pruned"
            elif any(self.modules[k].out_features % heads for k in best):
                why = f"q/k/v widths are not multiples of num_heads={heads}"
            elif getattr(m, "per_head_mask", False):
                why = "its attn_mask is per head (batch*heads, L, S), so the head count must stay"
            found[name] = (heads, best, why)
        self._attention = found
        return found

    def fused_projections(self) -> dict[str, str]:
        """{Linear: reason} for projections inside an attention module that has no separate q/k/v."""
        self.attention_modules()
        return dict(self._fused_qkv)

    def attention_groups(self) -> dict[str, tuple[int, list[str]]]:
        """Attention modules whose whole heads can be pruned: {module: (heads, [q, k, v])}."""
        return {a: (h, qkv) for a, (h, qkv, why) in self.attention_modules().items() if why is None}


def classify(g: ChannelGraph, never_prune: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    never = set(never_prune)
    ok, why = [], {}
    blocked = {q: f"q/k/v projection of attention {a}, whose heads cannot be pruned: {reason}"
               for a, (_, qkv, reason) in g.attention_modules().items() if reason for q in qkv}
    blocked.update(g.fused_projections())
    for mha, reason in g.kept_mha.items():
        for n, _ in g.modules[mha].named_children() if mha else ():
            blocked[f"{mha}.{n}"] = (f"projection of nn.MultiheadAttention {mha}, which is pruned only through its "
                                     f"embed_dim (heads stay: {reason})")
    for name in g.weight_layers:
        m = g.modules[name]
        if name in never:
            why[name] = "listed in never_prune"
            continue
        if name in blocked:
            why[name] = blocked[name]
            continue
        try:
            group = g.out_group(name)
        except Exception as exc:  # torch-pruning cannot follow this layer's outputs
            why[name] = f"torch-pruning cannot trace its output channels ({type(exc).__name__}: {exc})"
            continue
        if g.reaches_output(group):
            why[name] = "its output channels are the model's outputs (classifier)"
        elif g.dg.get_out_channels(m) in (None, 1):
            why[name] = "a single output channel cannot be pruned"
        elif any(n in never for n in g.group_layers(group)):
            blocker = next(n for n in g.group_layers(group) if n in never)
            why[name] = f"coupled with {blocker}, which is listed in never_prune"
        else:
            ok.append(name)
    return ok, why


def prunable_layers(model: nn.Module, example_input: torch.Tensor,
                    never_prune: Iterable[str] = ()) -> list[str]:
    """Conv/Linear/Embedding module names whose output channels can be pruned (the classifier never).

    A model torch-pruning cannot trace has none (with a warning): the search can still quantize it.
    """
    try:
        g = ChannelGraph(copy.deepcopy(model), example_input)
    except Exception as exc:
        warnings.warn(f"torch-pruning cannot trace the model, nothing will be pruned: {exc}", stacklevel=2)
        return []
    return classify(g, never_prune)[0]


def prune_groups(model: nn.Module, example_input: torch.Tensor,
                 never_prune: Iterable[str] = ()) -> dict[str, list[str]]:
    """Prunable layers grouped by shared channels: {deciding layer: [all coupled layers]}.

    A search that samples one ratio per key has no dead parameters (the other members' ratios
    would be ignored anyway).
    """
    g = ChannelGraph(copy.deepcopy(model), example_input)
    ok = classify(g, never_prune)[0]
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name in ok:
        if name in seen:
            continue
        members = [n for n in g.group_layers(g.out_group(name)) if n in ok] or [name]
        seen.update(members)
        groups[members[0]] = members
    return groups
