"""Which layers can be pruned and how they couple: torch-pruning's dependency graph, read by name.

Coupled layers (a residual stream, expand -> depthwise, q/k/v of one attention) share one set of
channels, so they form one torch-pruning *group*; `prune_groups` lists the groups so a search can
sample one ratio each, `prunable_layers` the layers (search units are in `search.compress.blocks`). The
pruning itself is in `search.compress.pruning`.
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

WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _quiet_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    # torch-pruning warns about unwrapped parameters (positional embeddings) on every build: it
    # prunes their last dim, which is what we want for a token embedding.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


class ChannelGraph:
    """The dependency graph of one model copy, with module names and group bookkeeping."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        # torch-pruning traces the autograd graph: frozen parameters (a task's teacher is frozen)
        # would leave every layer untraced and silently unprunable. The copy trains anyway.
        for p in model.parameters():
            p.requires_grad_(True)
        self.model = model
        self.dg = _quiet_graph(model, example_input)
        self.names = {m: n for n, m in model.named_modules() if n}
        self.modules = {n: m for m, n in self.names.items()}
        self.order = {n: i for i, n in enumerate(self.modules)}
        self.weight_layers = [n for n, m in self.modules.items() if isinstance(m, WEIGHT_TYPES)]

    def out_group(self, name: str):
        m = self.modules[name]
        fn = self.dg.get_pruner_of_module(m).prune_out_channels
        return self.dg.get_pruning_group(m, fn, [0])

    def group_layers(self, group) -> list[str]:
        """Conv/Linear layers whose output channels this group removes, in model order."""
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

    def attention_groups(self) -> dict[str, tuple[int, list[str]]]:
        """Modules with an int `num_heads` whose child Linears are coupled q/k/v projections."""
        found = {}
        for name, m in self.modules.items():
            heads = getattr(m, "num_heads", None)
            if not isinstance(heads, int) or heads < 2 or isinstance(m, nn.MultiheadAttention):
                continue
            kids = [f"{name}.{n}" for n, c in m.named_children() if isinstance(c, nn.Linear)]
            best: list[str] = []
            for kid in kids:
                members = [k for k in self.group_layers(self.out_group(kid)) if k in kids]
                if len(members) > len(best):
                    best = members
            if len(best) >= 2 and all(self.modules[k].out_features % heads == 0 for k in best):
                found[name] = (heads, best)
        return found


def classify(g: ChannelGraph, never_prune: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    never = set(never_prune)
    ok, why = [], {}
    for name in g.weight_layers:
        m = g.modules[name]
        if name in never:
            why[name] = "listed in never_prune"
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
    """Conv/Linear module names whose output channels can be pruned (the classifier never).

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
