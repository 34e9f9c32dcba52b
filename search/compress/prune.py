"""Structured (channel) pruning with torch-pruning: dependency aware, physically smaller models.

Coupled layers (a residual stream, expand -> depthwise, q/k/v of one attention) share one set of
channels, so they form one torch-pruning *group* and get one width. The ratio of the group's first
layer in model order that the caller names decides it; the others are reported in
`PruneResult.coupled` (`prune_groups` lists the groups, so a search can sample one ratio each).
Channel counts are floored to a multiple of `channel_multiple` (fast kernels want round widths)
but never below one multiple; see `expected_channels`. For the q/k/v projections of an attention
module with an int `num_heads`, the ratio removes whole heads (`expected_heads`) and the module's
`num_heads` is updated to match.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Iterable, Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

Importance = Literal["l1", "l2", "taylor", "lamp"]
WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: dict[str, int]  # out channels after pruning, every Conv/Linear layer
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it kept its width
    coupled: dict[str, str] = field(default_factory=dict)  # layer -> layer whose ratio set its width
    heads: dict[str, int] = field(default_factory=dict)  # attention module -> num_heads after
    channels_before: dict[str, int] = field(default_factory=dict)  # out channels before, every Conv/Linear

    def applied(self, ratios: Mapping[str, float]) -> dict[str, dict]:
        """What was asked and what was removed, per layer named in `ratios`: {layer: {requested, applied,
        channels: [before, after], reason}}. `applied` is the share of output channels actually removed;
        `reason` is set whenever a requested ratio removed nothing or less than asked."""
        out = {}
        for layer, r in ratios.items():
            before, after = self.channels_before.get(layer), self.channels.get(layer)
            applied = 1.0 - after / before if before and after is not None else 0.0
            entry = {"requested": float(r), "applied": round(applied, 6), "channels": [before, after]}
            why = self.skipped.get(layer) or (f"coupled with {self.coupled[layer]}" if layer in self.coupled else None)
            if why and r > 0:
                entry["reason"] = why
            out[layer] = entry
        return out


def expected_channels(channels: int, ratio: float, multiple: int = 1) -> int:
    """Output channels that `prune` leaves for a group of `channels` at `ratio`.

    As torch-pruning's round_to: keep int(C * (1 - ratio)) floored to a multiple; unlike it, a floor
    of zero keeps one multiple (torch-pruning would silently leave such a group whole).
    """
    keep = int(channels * (1.0 - ratio) + 1e-9)  # 100 * 0.71 is 70.99999999999999
    if multiple > 1:
        keep = max(multiple, keep - keep % multiple)
    return min(channels, max(1, keep))


def expected_heads(num_heads: int, ratio: float) -> int:
    """Heads kept in an attention group: int(H * (1 - ratio)), at least one."""
    return max(1, min(num_heads, int(num_heads * (1.0 - ratio) + 1e-9)))


def _quiet_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    # torch-pruning warns about unwrapped parameters (positional embeddings) on every build: it
    # prunes their last dim, which is what we want for a token embedding.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


class _Graph:
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


def _classify(g: _Graph, never_prune: Iterable[str]) -> tuple[list[str], dict[str, str]]:
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
        g = _Graph(copy.deepcopy(model), example_input)
    except Exception as exc:
        warnings.warn(f"torch-pruning cannot trace the model, nothing will be pruned: {exc}", stacklevel=2)
        return []
    return _classify(g, never_prune)[0]


def prune_groups(model: nn.Module, example_input: torch.Tensor,
                 never_prune: Iterable[str] = ()) -> dict[str, list[str]]:
    """Prunable layers grouped by shared channels: {deciding layer: [all coupled layers]}.

    A search that samples one ratio per key has no dead parameters (the other members' ratios
    would be ignored anyway).
    """
    g = _Graph(copy.deepcopy(model), example_input)
    ok = _classify(g, never_prune)[0]
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name in ok:
        if name in seen:
            continue
        members = [n for n in g.group_layers(g.out_group(name)) if n in ok] or [name]
        seen.update(members)
        groups[members[0]] = members
    return groups


def layer_blocks(model: nn.Module, layers: Iterable[str]) -> dict[str, list[str]]:
    """Group layers by top-level block: `blocks.2.dw.conv` -> `blocks.2`, `stem.conv` -> `stem`.

    An indexed container (Sequential/ModuleList) contributes its index when the indexed child is a
    sub-network, so each block of a stage is its own unit; a plain child is its own block.
    """
    modules = dict(model.named_modules())
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        parts = layer.split(".")
        key = parts[0]
        indexed = isinstance(modules.get(parts[0]), (nn.Sequential, nn.ModuleList))
        if len(parts) > 2 and parts[1].isdigit() and indexed:
            child = modules.get(f"{parts[0]}.{parts[1]}")
            if child is not None and any(True for _ in child.children()):
                key = f"{parts[0]}.{parts[1]}"
        blocks.setdefault(key, []).append(layer)
    return blocks


def _importance(kind: Importance):
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"importance must be l1, l2, taylor or lamp, got {kind!r}")


def _count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad(), redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: Mapping[str, float],
    channel_multiple: int = 8,
    importance: Importance = "l2",
    never_prune: Iterable[str] = (),
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PruneResult:
    """A NEW, physically smaller copy of `model` with each named layer's group pruned by its ratio.

    `calibration` (inputs, labels) feeds the gradient Taylor importance needs; without it the
    example input and the model's own predictions stand in. Layers that cannot be pruned are
    listed in `skipped` with the reason; nothing here raises for a single bad layer.
    """
    scorer = _importance(importance)  # a bad name is the caller's error, not a skipped layer
    student = copy.deepcopy(model).eval()
    macs_before, params_before = _count(student, example_input)
    before = {n: _width(m) for n, m in student.named_modules() if isinstance(m, WEIGHT_TYPES)}
    try:
        g = _Graph(student, example_input)
    except Exception as exc:  # the whole model defeats torch-pruning's tracer: prune nothing
        reason = f"torch-pruning cannot trace the model: {type(exc).__name__}: {exc}"[:300]
        skipped = {n: reason for n, r in ratios.items() if r > 0}
        return PruneResult(student, macs_before, macs_before, params_before, params_before, dict(before), skipped,
                           channels_before=before)
    ok, why = _classify(g, never_prune)
    attention = g.attention_groups()
    head_of = {q: a for a, (_, qkv) in attention.items() for q in qkv}
    skipped: dict[str, str] = {}
    coupled: dict[str, str] = {}
    ratio_dict: dict[nn.Module, float] = {}
    planned: dict[nn.Module, int] = {}  # decider -> out channels it should end with
    head_ratio: dict[nn.Module, float] = {}
    num_heads: dict[nn.Module, int] = {}
    for h, qkv in attention.values():
        for q in qkv:
            num_heads[g.modules[q]] = h

    done: set[str] = set()
    for name in sorted(ratios, key=lambda n: g.order.get(n, math.inf)):
        r = float(ratios[name])
        if name in done:
            continue
        if name not in g.modules or not isinstance(g.modules[name], WEIGHT_TYPES):
            skipped[name] = "no Conv/Linear module of this name"
            continue
        if name not in ok:
            skipped[name] = why.get(name, "not prunable")
            continue
        members = [n for n in g.group_layers(g.out_group(name)) if n in ok] or [name]
        # The first member the caller names decides (that is `name`: names are in model order).
        decider = name
        done.update(members)
        for n in members:
            if n != decider and n in ratios:
                coupled[n] = decider
        if r <= 0.0:
            continue
        m = g.modules[decider]
        if decider in head_of:
            h = attention[head_of[decider]][0]
            keep = expected_heads(h, r)
            if keep == h:
                skipped[decider] = f"ratio {r:g} removes no whole head of {h}"
                continue
            # torch-pruning removes ceil(ratio * H) heads; aim between integers to get exactly H - keep.
            for q in attention[head_of[decider]][1]:  # torch-pruning reads it from any of q/k/v
                head_ratio[g.modules[q]] = (h - keep - 0.5) / h
            c = g.dg.get_out_channels(m)
            ratio_dict[m] = 1.0 - (keep * c // h + 0.5) / c
            planned[m] = keep * c // h
            continue
        c = g.dg.get_out_channels(m)
        keep = expected_channels(c, r, channel_multiple)
        if keep >= c:
            skipped[decider] = (f"{c} channels at ratio {r:g} with channel_multiple {channel_multiple} "
                                f"leave nothing to remove")
            continue
        # Aim half a channel above `keep` so torch-pruning's int() lands exactly on it.
        ratio_dict[m] = 1.0 - (keep + 0.5) / c
        planned[m] = keep

    if ratio_dict:
        # Everything _classify rejected keeps its output channels (its inputs may still shrink).
        ignored = [g.modules[n] for n in g.weight_layers if n not in ok]
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                pruner = tp.pruner.MetaPruner(
                    student, example_input, importance=scorer, pruning_ratio=0.0,
                    pruning_ratio_dict=ratio_dict, ignored_layers=ignored, round_to=None,
                    num_heads=dict(num_heads), prune_num_heads=bool(head_ratio), prune_head_dims=False,
                    head_pruning_ratio_dict=head_ratio or None,
                )
                if importance == "taylor":
                    _taylor_gradients(student, example_input, calibration)
                pruner.step()
                student.zero_grad(set_to_none=True)
                for a, (_, qkv) in attention.items():  # the module's own head count drives its reshape
                    g.modules[a].num_heads = pruner.num_heads[g.modules[qkv[0]]]
                with torch.no_grad():
                    student(example_input)  # a pruned model that no longer runs is no result
        except Exception as exc:
            # A failure inside torch-pruning leaves the copy half-pruned: return an untouched copy.
            student = copy.deepcopy(model).eval()
            for n in (g.names[m] for m in ratio_dict):
                skipped[n] = f"torch-pruning failed: {type(exc).__name__}: {exc}"[:300]
            ratio_dict, planned = {}, {}
    macs_after, params_after = _count(student, example_input)
    mods = dict(student.named_modules())
    channels = {n: _width(mods[n]) for n in g.weight_layers}
    for m, target in planned.items():  # torch-pruning can decline a group without saying so
        n = g.names[m]
        if n not in skipped and channels.get(n) != target:
            skipped[n] = f"torch-pruning left {channels.get(n)} output channels (planned {target})"
    for n, r in ratios.items():  # a requested ratio that removed nothing always carries a reason
        if r > 0 and n not in skipped and n not in coupled and channels.get(n) == before.get(n):
            skipped[n] = "torch-pruning removed no output channel"
    heads = {a: int(mods[a].num_heads) for a in attention}
    return PruneResult(student, macs_before, macs_after, params_before, params_after, channels,
                       skipped, coupled, heads, channels_before=before)


def _width(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)


def _taylor_gradients(model: nn.Module, example_input: torch.Tensor,
                      calibration: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    model.zero_grad(set_to_none=True)
    if calibration is None:
        x = example_input
        with torch.no_grad():
            y = model(x).argmax(dim=-1)
    else:
        x, y = calibration
    nn.functional.cross_entropy(model(x), y).backward()
